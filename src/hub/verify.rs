//! Checks a downloaded file against what the hub announced: its size, and its content hash
//! when the ETag is one (sha256 for LFS files, the git blob sha1 for the others).

use std::fs::File;
use std::io::Read;
use std::path::Path;

use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::cache::FileRecord;
use super::error::HubError;

/// Files above this size get a log line while they are hashed (it takes a few seconds).
const ANNOUNCE_HASHING_ABOVE: u64 = 100_000_000;

/// Whether `path` holds exactly the content `expected` describes. Blocking: reads the file.
pub(crate) fn verify(path: &Path, file: &str, expected: &FileRecord) -> Result<(), HubError> {
    let integrity = |what: String| HubError::Integrity {
        file: file.to_string(),
        what,
    };
    let size = std::fs::metadata(path).map_err(HubError::io(path))?.len();
    if size != expected.size {
        return Err(integrity(format!("size {} (got {size})", expected.size)));
    }
    let is_hex = expected.etag.bytes().all(|b| b.is_ascii_hexdigit());
    let actual = match (expected.etag.len(), is_hex) {
        (64, true) => {
            if size > ANNOUNCE_HASHING_ABOVE {
                tracing::info!(file, "checking the sha256 of the download");
            }
            hash_file::<Sha256>(path, None)?
        }
        // Git names a blob by the sha1 of a `blob <size>\0` header and the content.
        (40, true) => hash_file::<Sha1>(path, Some(format!("blob {size}\0").as_bytes()))?,
        _ => {
            tracing::debug!(file, etag = %expected.etag, "the ETag is not a content hash; size checked only");
            return Ok(());
        }
    };
    if actual.eq_ignore_ascii_case(&expected.etag) {
        Ok(())
    } else {
        Err(integrity(format!("hash {} (got {actual})", expected.etag)))
    }
}

fn hash_file<D: Digest>(path: &Path, prefix: Option<&[u8]>) -> Result<String, HubError> {
    let mut hasher = D::new();
    if let Some(prefix) = prefix {
        hasher.update(prefix);
    }
    let mut file = File::open(path).map_err(HubError::io(path))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(HubError::io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(content: &[u8], etag: &str) -> Result<(), HubError> {
        let dir = std::env::temp_dir().join(format!("clipserve-verify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(etag);
        std::fs::write(&path, content).unwrap();
        let record = FileRecord {
            etag: etag.into(),
            size: content.len() as u64,
        };
        let result = verify(&path, "f", &record);
        std::fs::remove_file(path).unwrap();
        result
    }

    #[test]
    fn git_blob_ids_and_sha256_etags_are_checked_against_the_content() {
        // `printf 'hello\n' | git hash-object --stdin` and `sha256sum`.
        assert!(check(b"hello\n", "ce013625030ba8dba906f756967f9e9ca394464a").is_ok());
        let sha = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
        assert!(check(b"hello\n", sha).is_ok());
        assert!(check(b"hellO\n", sha).is_err());
        assert!(check(b"hellO\n", "ce013625030ba8dba906f756967f9e9ca394464a").is_err());
    }
}
