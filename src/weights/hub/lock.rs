//! Blob locks shared with `huggingface_hub`.

use std::fs::{self, File, OpenOptions};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::*;

/// An exclusive lock on a blob, released when dropped. The same lock file and kind of lock
/// (`flock` on Unix) as `huggingface_hub`'s, so neither tool writes a blob the other is writing.
pub(super) struct BlobLock {
    pub(super) _file: File,
}

impl BlobLock {
    /// Waits for the lock, checking `cancel` between tries.
    pub(super) fn acquire(path: &Path, file: &str, cancel: &AtomicBool) -> Result<Self, HubError> {
        create_parent(path)?;
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io_at(path))?;
        loop {
            match lock_file.try_lock() {
                Ok(()) => return Ok(Self { _file: lock_file }),
                Err(fs::TryLockError::WouldBlock) => {
                    check_cancel(cancel, file)?;
                    std::thread::sleep(Duration::from_millis(200));
                }
                // A file system without locks: proceed unlocked rather than not at all.
                Err(fs::TryLockError::Error(_)) => return Ok(Self { _file: lock_file }),
            }
        }
    }
}
