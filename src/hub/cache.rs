//! One repository's folder in the Hugging Face cache: where blobs, refs and snapshots live, how
//! a snapshot is checked without the network, and how files are linked into it.
//!
//! Files only ever appear under their final name by an atomic rename (blobs, refs, the size
//! record, the snapshot's links), so a crash leaves at worst a `.incomplete` blob that a later
//! download resumes, never a file a later start would trust.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::HubError;
use super::RepoId;

/// The repository's folder in the cache, and the cache's lock folder for it.
#[derive(Debug, Clone)]
pub(crate) struct RepoCache {
    /// `<cache>/models--owner--name`.
    pub root: PathBuf,
    /// `<cache>/.locks/models--owner--name`, shared with `huggingface_hub`'s file locks.
    locks: PathBuf,
}

/// A file as the hub described it: its content id and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileRecord {
    /// The normalized ETag: sha256 for LFS files, the git blob sha1 otherwise.
    pub etag: String,
    /// Size in bytes.
    pub size: u64,
}

/// What clipserve records beside a snapshot it completed (the hub layout has no sizes).
#[derive(Debug, Default, Serialize, Deserialize)]
struct SnapshotRecord {
    files: BTreeMap<String, FileRecord>,
    absent: Vec<String>,
}

/// Whether `s` is a full commit hash (then it needs no ref to resolve).
pub(crate) fn is_commit(s: &str) -> bool {
    s.len() == 40
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl RepoCache {
    /// The cache folder of `repo` under `cache_dir`.
    pub fn new(cache_dir: &Path, repo: &RepoId) -> RepoCache {
        let folder = repo.cache_folder();
        RepoCache {
            root: cache_dir.join(&folder),
            locks: cache_dir.join(".locks").join(folder),
        }
    }

    /// The model folder of a commit.
    pub fn snapshot(&self, commit: &str) -> PathBuf {
        self.root.join("snapshots").join(commit)
    }

    /// Where the content with this ETag is stored once complete.
    pub fn blob(&self, etag: &str) -> PathBuf {
        self.root.join("blobs").join(etag)
    }

    /// Where the content with this ETag is written while it downloads.
    pub fn incomplete(&self, etag: &str) -> PathBuf {
        self.root.join("blobs").join(format!("{etag}.incomplete"))
    }

    /// The lock file that serializes downloads of one blob across processes.
    pub fn lock_file(&self, etag: &str) -> PathBuf {
        self.locks.join(format!("{etag}.lock"))
    }

    /// Whether the blob is stored with the expected size.
    pub fn has_blob(&self, record: &FileRecord) -> bool {
        fs::metadata(self.blob(&record.etag)).is_ok_and(|m| m.is_file() && m.len() == record.size)
    }

    fn record_path(&self, commit: &str) -> PathBuf {
        self.root.join(".clipserve").join(format!("{commit}.json"))
    }

    /// The commit `revision` resolves to in the cache, if known.
    fn commit_of(&self, revision: &str) -> Result<String, String> {
        if is_commit(revision) {
            return Ok(revision.to_string());
        }
        let path = self.root.join("refs").join(revision);
        let commit = fs::read_to_string(&path)
            .map_err(|_| format!("no cached ref for revision `{revision}`"))?;
        let commit = commit.trim();
        if is_commit(commit) {
            Ok(commit.to_string())
        } else {
            Err(format!("{} does not hold a commit hash", path.display()))
        }
    }

    /// The snapshot folder of `revision` if every file is there (and, for snapshots clipserve
    /// completed, has the size recorded then); otherwise why not. Reads only local files.
    pub fn complete_snapshot(&self, revision: &str, required: &[&str]) -> Result<PathBuf, String> {
        let commit = self.commit_of(revision)?;
        let dir = self.snapshot(&commit);
        let record: SnapshotRecord = match fs::read(self.record_path(&commit)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: {e}", self.record_path(&commit).display()))?,
            // A snapshot written by another tool (huggingface_hub): trust what it holds.
            Err(_) => SnapshotRecord::default(),
        };
        for file in required {
            if !record.files.contains_key(*file) && !dir.join(file).is_file() {
                return Err(format!("`{file}` is missing from snapshot {commit}"));
            }
        }
        for (file, expected) in &record.files {
            match fs::metadata(dir.join(file)) {
                Ok(m) if m.is_file() && m.len() == expected.size => {}
                Ok(m) => {
                    return Err(format!(
                        "cached `{file}` has {} bytes, the hub announced {}",
                        m.len(),
                        expected.size
                    ))
                }
                Err(_) => return Err(format!("`{file}` is missing from snapshot {commit}")),
            }
        }
        Ok(dir)
    }

    /// Makes `snapshot/<file>` point at the blob: a relative symlink as `huggingface_hub`
    /// writes it, or a hard link when `hard` (tract refuses ONNX external data whose
    /// canonical path leaves the graph's folder, which a symlink into blobs/ does).
    pub fn link(&self, commit: &str, file: &str, etag: &str, hard: bool) -> Result<(), HubError> {
        let dst = self.snapshot(commit).join(file);
        let parent = dst.parent().expect("a snapshot file has a parent folder");
        fs::create_dir_all(parent).map_err(HubError::io(parent))?;
        let tmp = parent.join(format!(".{etag}.{}.tmp", std::process::id()));
        let _ = fs::remove_file(&tmp);
        let blob = self.blob(etag);
        if hard {
            fs::hard_link(&blob, &tmp)
                .or_else(|_| fs::copy(&blob, &tmp).map(|_| ()))
                .map_err(HubError::io(&tmp))?;
        } else {
            let up = "../".repeat(Path::new(file).components().count() + 1);
            symlink(&format!("{up}blobs/{etag}"), &blob, &tmp)?;
        }
        fs::rename(&tmp, &dst).map_err(HubError::io(&dst))
    }

    /// Replaces symlinks of ONNX external data in a snapshot another tool wrote by hard links
    /// (see [`RepoCache::link`]).
    pub fn harden_links(&self, dir: &Path, files: &[&str]) -> Result<(), HubError> {
        for file in files {
            let path = dir.join(file);
            let is_link = fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
            if is_link {
                let target = fs::canonicalize(&path).map_err(HubError::io(&path))?;
                let tmp = path.with_extension("clipserve-tmp");
                let _ = fs::remove_file(&tmp);
                fs::hard_link(&target, &tmp)
                    .or_else(|_| fs::copy(&target, &tmp).map(|_| ()))
                    .map_err(HubError::io(&tmp))?;
                fs::rename(&tmp, &path).map_err(HubError::io(&path))?;
            }
        }
        Ok(())
    }

    /// Records the files of a completed snapshot (sizes for later offline checks) and the
    /// optional files the hub does not have (also as `.no_exist/` markers, as Python does).
    pub fn finish(
        &self,
        commit: &str,
        files: &BTreeMap<String, FileRecord>,
        absent: &[String],
    ) -> Result<(), HubError> {
        for file in absent {
            let marker = self.root.join(".no_exist").join(commit).join(file);
            let parent = marker.parent().expect("a marker has a parent folder");
            fs::create_dir_all(parent).map_err(HubError::io(parent))?;
            fs::write(&marker, b"").map_err(HubError::io(&marker))?;
        }
        let record = SnapshotRecord {
            files: files.clone(),
            absent: absent.to_vec(),
        };
        let json = serde_json::to_vec_pretty(&record).expect("the record serializes");
        write_atomic(&self.record_path(commit), &json)
    }

    /// Points `refs/<revision>` at `commit` (nothing to do when the revision is the commit).
    pub fn write_ref(&self, revision: &str, commit: &str) -> Result<(), HubError> {
        if revision == commit {
            return Ok(());
        }
        write_atomic(&self.root.join("refs").join(revision), commit.as_bytes())
    }
}

/// Writes `bytes` to a temporary file beside `path`, then renames it into place.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), HubError> {
    let parent = path.parent().expect("a cache file has a parent folder");
    fs::create_dir_all(parent).map_err(HubError::io(parent))?;
    let name = path
        .file_name()
        .expect("a cache file has a name")
        .to_string_lossy();
    let tmp = parent.join(format!(".{name}.{}.tmp", std::process::id()));
    fs::write(&tmp, bytes).map_err(HubError::io(&tmp))?;
    fs::rename(&tmp, path).map_err(HubError::io(path))
}

#[cfg(unix)]
fn symlink(target: &str, _blob: &Path, link: &Path) -> Result<(), HubError> {
    std::os::unix::fs::symlink(target, link).map_err(HubError::io(link))
}

/// Without symlinks, the snapshot gets a copy (as `huggingface_hub` does on such systems).
#[cfg(not(unix))]
fn symlink(_target: &str, blob: &Path, link: &Path) -> Result<(), HubError> {
    fs::copy(blob, link).map(|_| ()).map_err(HubError::io(link))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_full_lowercase_hex_hashes_are_commits() {
        assert!(is_commit("0123456789abcdef0123456789abcdef01234567"));
        assert!(!is_commit("main"));
        assert!(!is_commit("0123456789ABCDEF0123456789abcdef01234567"));
        assert!(!is_commit("0123456789abcdef"));
    }
}
