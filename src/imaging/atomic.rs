//! Writing files so that nothing is half-written and nothing earlier is lost: the bytes go to a
//! temporary file beside the target (same folder, so the final step is a rename on one file
//! system), are flushed to disk, and only then take the target's name.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// What to do when the target already exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existing {
    /// Replace it (the user picked this very path, or it is a cache entry).
    Replace,
    /// Fail with [`io::ErrorKind::AlreadyExists`]; the existing file is untouched.
    Keep,
}

/// A temporary name beside `path` that no other writer (thread or process) uses.
fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(".{}-{n}.partial", std::process::id()));
    path.with_file_name(name)
}

/// Writes `bytes` to `path` atomically (see the module docs).
pub fn write_atomic(path: &Path, bytes: &[u8], existing: Existing) -> io::Result<()> {
    if path.file_name().is_none() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a file path", path.display())));
    }
    let tmp = temp_path(path);
    let result = (|| {
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        match existing {
            Existing::Replace => std::fs::rename(&tmp, path),
            // A hard link fails if the target exists, atomically; the temporary name then goes.
            Existing::Keep => match std::fs::hard_link(&tmp, path) {
                Ok(()) => std::fs::remove_file(&tmp),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
                // File systems without hard links (FAT, some network shares): check, then rename.
                Err(_) if path.symlink_metadata().is_ok() => {
                    Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} already exists", path.display())))
                }
                Err(_) => std::fs::rename(&tmp, path),
            },
        }
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
