//! One downloader per blob across processes (replicas sharing a cache volume): an exclusive
//! `flock` on `<cache>/.locks/models--owner--name/<etag>.lock`, the same lock file and kind
//! `huggingface_hub` takes, so Python tools and clipserve never write one blob at once.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;

use super::error::HubError;

/// Holds the lock until dropped (closing the file releases it, also when the process dies).
#[derive(Debug)]
pub(crate) struct BlobLock {
    _file: File,
}

/// Takes the lock on `path`, waiting (off the async runtime) while another process holds it.
pub(crate) async fn exclusive(path: &Path, file: &str) -> Result<BlobLock, HubError> {
    let parent = path.parent().expect("a lock file has a parent folder");
    std::fs::create_dir_all(parent).map_err(HubError::io(parent))?;
    let handle = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(HubError::io(path))?;
    match handle.try_lock() {
        Ok(()) => return Ok(BlobLock { _file: handle }),
        Err(TryLockError::WouldBlock) => {
            tracing::info!(file, lock = %path.display(), "another process is downloading this file; waiting for it");
        }
        Err(TryLockError::Error(e)) => return Err(HubError::io(path)(e)),
    }
    let owned = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        handle.lock().map_err(HubError::io(&owned))?;
        Ok(BlobLock { _file: handle })
    })
    .await
    .expect("the lock task does not panic")
}
