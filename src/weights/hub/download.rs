//! Downloading one file into the cache: cancellable, resumable (HTTP `Range`), checked against
//! the SHA-256 the hub publishes, and reported as throttled progress.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::lock::BlobLock;
use super::*;

/// Downloads `file` at `commit` into the cache (unless its blob is already there, e.g. shared
/// with another commit) and links it into the snapshot. Returns the snapshot path.
pub(super) fn download_file(
    remote: &Remote,
    cache: &RepoCache,
    commit: &str,
    file: &str,
    progress: &mut dyn FnMut(DownloadProgress),
    cancel: &AtomicBool,
) -> Result<PathBuf, HubError> {
    download_file_at(remote, cache, commit, file, progress, cancel).map(|(path, _)| path)
}

/// [`download_file`] at any revision (a branch too); returns the snapshot path and the commit
/// the hub said the file belongs to.
pub(super) fn download_file_at(
    remote: &Remote,
    cache: &RepoCache,
    revision: &str,
    file: &str,
    progress: &mut dyn FnMut(DownloadProgress),
    cancel: &AtomicBool,
) -> Result<(PathBuf, String), HubError> {
    let context = remote.context(revision, file);
    let metadata = remote.metadata(&context)?;
    let blob = cache.blob_path(&metadata.etag);
    if !blob.is_file() {
        let _lock = BlobLock::acquire(&cache.lock_path(&metadata.etag), file, cancel)?;
        // Another process may have finished it while we waited for the lock.
        if !blob.is_file() {
            let download = BlobDownload {
                remote,
                context: &context,
                partial: cache.incomplete_path(&metadata.etag),
                size: metadata.size,
            };
            download.run(progress, cancel)?;
            if let Some(expected) = &metadata.sha256 {
                verify_sha256(&download.partial, expected, file)?;
            }
            fs::rename(&download.partial, &blob).map_err(io_at(&blob))?;
        }
    }
    let path = cache.link_into_snapshot(&metadata.commit, file, &blob)?;
    Ok((path, metadata.commit))
}

/// Checks a finished download against the SHA-256 the hub published for it. A mismatch deletes
/// the file (resuming a corrupt file could never succeed) and says so.
pub(super) fn verify_sha256(path: &Path, expected: &str, file: &str) -> Result<(), HubError> {
    let actual = sha256_file(path).map_err(io_at(path))?;
    if actual.eq_ignore_ascii_case(expected) {
        return Ok(());
    }
    let _ = fs::remove_file(path);
    Err(HubError::Corrupt {
        file: file.to_string(),
        expected: expected.to_ascii_lowercase(),
        actual,
    })
}

/// The SHA-256 of a file, read in 1 MiB pieces.
pub(super) fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = sha256::Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buffer[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(hasher.hex())
}

/// The SHA-256 of `bytes` as 64 lowercase hex digits (what the hub uses as an LFS file's etag).
pub fn sha256_hex(bytes: &[u8]) -> String {
    let mut hasher = sha256::Sha256::new();
    hasher.update(bytes);
    hasher.hex()
}

/// One attempt at completing `partial` (a `blobs/<etag>.incomplete` file).
pub(super) struct BlobDownload<'a> {
    pub(super) remote: &'a Remote<'a>,
    pub(super) context: &'a Context<'a>,
    pub(super) partial: PathBuf,
    pub(super) size: Option<u64>,
}

impl BlobDownload<'_> {
    /// Appends the missing bytes to the partial file, resuming from its current length.
    pub(super) fn run(
        &self,
        progress: &mut dyn FnMut(DownloadProgress),
        cancel: &AtomicBool,
    ) -> Result<(), HubError> {
        let mut start = self.partial_len();
        if self.size.is_some_and(|size| start > size) {
            start = 0; // Longer than the blob can be: not ours to resume.
        }
        let mut reporter = Reporter::new(progress, self.context.file, self.size.unwrap_or(0));
        reporter.done = start;
        if Some(start) == self.size {
            reporter.send();
            return Ok(()); // Complete already; an earlier run stopped just before the rename.
        }

        let (response, start) = self.open_from(start)?;
        let start = self.accepted_start(&response, start)?;
        reporter.done = start;
        let range_total = total_from_content_range(&response);
        if let Some(total) = range_total {
            reporter.total = total;
        }
        reporter.send();

        // The file ends at the smallest size anyone announced. A body without Content-Length
        // ends only when the server closes the connection, so without this bound a broken or
        // hostile server (or mirror) could fill the disk.
        let body_end = content_length(&response).map(|len| start.saturating_add(len));
        let end = [self.size, range_total, body_end].into_iter().flatten().min();
        if let (Some(body_end), Some(end)) = (body_end, end) {
            if body_end > end {
                // Refused before writing: an earlier attempt's bytes stay for a resume.
                return Err(self.too_long(end));
            }
        }

        let mut out = self.open_partial(start)?;
        let copied = copy_cancellable(response.into_reader(), &mut out, &mut reporter, cancel, end);
        out.flush().map_err(io_at(&self.partial))?;
        drop(out);
        reporter.send();
        if let Err(CopyError::TooLong(_)) = &copied {
            self.discard_from(start);
        }
        copied.map_err(|err| self.copy_error(err, &reporter))?;
        self.check_complete(reporter.done)
    }

    /// Drops what the answer that started at `start` wrote: a server that sends more than it
    /// announced may have sent anything. An earlier attempt's bytes stay for a resume. A file
    /// that cannot be cut back is deleted, since left at the announced length it would pass
    /// for complete on the next attempt.
    pub(super) fn discard_from(&self, start: u64) {
        let cut = start > 0
            && OpenOptions::new()
                .write(true)
                .open(&self.partial)
                .and_then(|file| file.set_len(start))
                .is_ok();
        if !cut {
            let _ = fs::remove_file(&self.partial);
        }
    }

    pub(super) fn too_long(&self, announced: u64) -> HubError {
        HubError::TooLong {
            file: self.context.file.to_string(),
            announced,
        }
    }

    /// Opens the download at `start`. A server that cannot serve that range (416: the partial
    /// file does not match what it has) gets asked for the whole file instead.
    pub(super) fn open_from(&self, start: u64) -> Result<(ureq::Response, u64), HubError> {
        match self.remote.open(self.context, start) {
            Err(HubError::Http { status: 416, .. }) if start > 0 => {
                Ok((self.remote.open(self.context, 0)?, 0))
            }
            other => Ok((other?, start)),
        }
    }

    pub(super) fn partial_len(&self) -> u64 {
        fs::metadata(&self.partial)
            .map(|meta| meta.len())
            .unwrap_or(0)
    }

    /// Where the server's answer starts: `start` for a 206 that agrees, 0 for a plain 200 (the
    /// server ignored the range, so the partial file is rewritten).
    pub(super) fn accepted_start(&self, response: &ureq::Response, start: u64) -> Result<u64, HubError> {
        match response.status() {
            200 => Ok(0),
            206 => match content_range_start(response) {
                Some(first) if first == start => Ok(start),
                _ => Err(HubError::BadResponse {
                    url: self.context.url(),
                    detail: format!(
                        "asked for bytes from {start} but got Content-Range {:?}",
                        response.header("content-range")
                    ),
                }),
            },
            status => Err(HubError::Http {
                url: self.context.url(),
                status,
                detail: String::new(),
            }),
        }
    }

    /// The partial file opened for writing at `start` (truncated there, so a 200 answer
    /// overwrites instead of appending).
    pub(super) fn open_partial(&self, start: u64) -> Result<File, HubError> {
        create_parent(&self.partial)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.partial)
            .map_err(io_at(&self.partial))?;
        file.set_len(start).map_err(io_at(&self.partial))?;
        Ok(file)
    }

    pub(super) fn copy_error(&self, err: CopyError, reporter: &Reporter) -> HubError {
        match err {
            CopyError::Cancelled => HubError::Cancelled {
                file: self.context.file.to_string(),
                bytes_done: reporter.done,
                bytes_total: reporter.total,
            },
            CopyError::Read(err) => HubError::Interrupted {
                file: self.context.file.to_string(),
                detail: err.to_string(),
            },
            CopyError::Write(source) => HubError::Io {
                path: self.partial.clone(),
                source,
            },
            CopyError::TooLong(announced) => self.too_long(announced),
        }
    }

    /// A short file means the connection ended early without an error; keep it for a resume.
    /// A long one cannot come out of the bounded copy, but must never pass for complete.
    pub(super) fn check_complete(&self, done: u64) -> Result<(), HubError> {
        match self.size {
            Some(size) if done < size => Err(HubError::Interrupted {
                file: self.context.file.to_string(),
                detail: format!("got {done} of {size} bytes"),
            }),
            Some(size) if done > size => {
                let _ = fs::remove_file(&self.partial);
                Err(self.too_long(size))
            }
            _ => Ok(()),
        }
    }
}

/// `Content-Range: bytes 100-199/200` → 100.
pub(super) fn content_range_start(response: &ureq::Response) -> Option<u64> {
    let value = response.header("content-range")?;
    let range = value.trim().strip_prefix("bytes")?.trim();
    range.split('-').next()?.trim().parse().ok()
}

/// The body's length, when the answer gives one.
pub(super) fn content_length(response: &ureq::Response) -> Option<u64> {
    response.header("content-length")?.trim().parse().ok()
}

/// `Content-Range: bytes 100-199/200` → 200.
pub(super) fn total_from_content_range(response: &ureq::Response) -> Option<u64> {
    let value = response.header("content-range")?;
    value.rsplit('/').next()?.trim().parse().ok()
}

pub(super) enum CopyError {
    Cancelled,
    Read(io::Error),
    Write(io::Error),
    /// The body went on past the announced size (which it carries).
    TooLong(u64),
}

/// Copies until the end of the body, checking `cancel` before every read. With `end` (the
/// file's announced size; `reporter.done` is where the body starts) nothing past it is
/// written: once there, a 1-byte read tells a body that stops from one that runs on.
pub(super) fn copy_cancellable(
    mut from: impl Read,
    to: &mut File,
    reporter: &mut Reporter,
    cancel: &AtomicBool,
    end: Option<u64>,
) -> Result<(), CopyError> {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(CopyError::Cancelled);
        }
        let room = match end {
            Some(end) => end.saturating_sub(reporter.done).min(buffer.len() as u64) as usize,
            None => buffer.len(),
        };
        let read = match from.read(&mut buffer[..room.max(1)]) {
            Ok(0) => return Ok(()),
            Ok(read) => read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(CopyError::Read(err)),
        };
        if read > room {
            // Only at the end: without one, `room` is the whole buffer.
            return Err(CopyError::TooLong(end.unwrap_or(reporter.done)));
        }
        to.write_all(&buffer[..read]).map_err(CopyError::Write)?;
        reporter.advance(read as u64);
    }
}

/// Turns byte counts into throttled [`DownloadProgress`] events. Also hf-hub's progress sink,
/// so config and weights downloads report the same way.
pub(super) struct Reporter<'a> {
    pub(super) sink: &'a mut dyn FnMut(DownloadProgress),
    pub(super) file: String,
    pub(super) done: u64,
    pub(super) total: u64,
    pub(super) sent_bytes: u64,
    pub(super) sent_at: Option<Instant>,
}

impl<'a> Reporter<'a> {
    pub(super) fn new(sink: &'a mut dyn FnMut(DownloadProgress), file: &str, total: u64) -> Self {
        Self {
            sink,
            file: file.to_string(),
            done: 0,
            total,
            sent_bytes: 0,
            sent_at: None,
        }
    }

    pub(super) fn advance(&mut self, bytes: u64) {
        self.done += bytes;
        let due = self.sent_at.is_none_or(|at| at.elapsed() >= PROGRESS_EVERY)
            || self.done - self.sent_bytes >= PROGRESS_EVERY_BYTES;
        if due {
            self.send();
        }
    }

    pub(super) fn send(&mut self) {
        self.sent_bytes = self.done;
        self.sent_at = Some(Instant::now());
        (self.sink)(DownloadProgress {
            file: self.file.clone(),
            bytes_done: self.done,
            bytes_total: self.total,
        });
    }
}
