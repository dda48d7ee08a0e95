//! Downloads, owned by the app rather than by an engine: an engine restart or a backend switch
//! replaces the engine thread, and a download reporting to the engine's channel would be cut
//! off mid-way (its row saying "downloading" forever). This service has its own channel, lives
//! as long as the app, and runs each repo on its own thread (network work never blocks
//! sampling).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::JoinHandle;

use super::worker::{panic_message, CancelToken, Event, Waker};
use crate::weights::hub::{self, DownloadProgress, HubOptions};

pub struct Downloads {
    tx: Sender<Event>,
    events: Receiver<Event>,
    wake: Waker,
    threads: Vec<JoinHandle<()>>,
}

impl Downloads {
    /// `wake` is called after every event (the UI's `request_repaint`).
    pub fn new(wake: Waker) -> Self {
        let (tx, events) = channel();
        Self { tx, events, wake, threads: Vec::new() }
    }

    /// Fetches `repo` into the Hugging Face cache (every file of a pipeline); reports [`Event::DownloadProgress`] and one
    /// [`Event::DownloadFinished`].
    pub fn start(&mut self, repo: String, options: HubOptions, cancel: CancelToken, damaged: Option<std::path::PathBuf>) {
        let (tx, wake) = (self.tx.clone(), self.wake.clone());
        let failed = (repo.clone(), self.tx.clone());
        let spawned = std::thread::Builder::new().name(format!("download {repo}")).spawn(move || {
            if let Some(path) = damaged {
                if let Err(e) = remove_from_cache(&path, &options.cache_dir) {
                    let _ = tx.send(Event::DownloadFinished { repo, result: Err(e), cancelled: false });
                    wake();
                    return;
                }
            }
            download(repo, options, cancel, tx, wake)
        });
        match spawned {
            Ok(h) => self.threads.push(h),
            Err(e) => {
                let (repo, tx) = failed;
                let _ = tx.send(Event::DownloadFinished { repo, result: Err(format!("could not start a download: {e}")), cancelled: false });
                (self.wake)();
            }
        }
        self.threads.retain(|h| !h.is_finished());
    }

    /// Every event that has arrived, without blocking.
    pub fn poll(&self) -> Vec<Event> {
        self.events.try_iter().collect()
    }

    /// Downloads whose thread is still running.
    pub fn running(&self) -> usize {
        self.threads.iter().filter(|h| !h.is_finished()).count()
    }
}

/// Deletes a damaged file of the cache (the snapshot's link and the blob it points to), never
/// anything outside `cache_dir`.
fn remove_from_cache(path: &std::path::Path, cache_dir: &std::path::Path) -> Result<(), String> {
    let cache = cache_dir.canonicalize().map_err(|e| format!("cannot read the cache folder {}: {e}", cache_dir.display()))?;
    let inside = |p: &std::path::Path| p.canonicalize().map(|c| c.starts_with(&cache)).unwrap_or(false);
    let parent_inside = path.parent().is_some_and(inside);
    if !parent_inside {
        return Err(format!("{} is not in the Hugging Face cache; delete or replace it yourself", path.display()));
    }
    let blob = std::fs::canonicalize(path).ok().filter(|b| b.starts_with(&cache) && b != path);
    for p in [Some(path.to_path_buf()), blob].into_iter().flatten() {
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // A folder (a pipeline component): its files are fetched again where missing.
            Err(_) if p.is_dir() => {}
            Err(e) => return Err(format!("cannot delete the damaged {}: {e}", p.display())),
        }
    }
    Ok(())
}

fn download(repo: String, options: HubOptions, cancel: CancelToken, tx: Sender<Event>, wake: Waker) {
    let send = |e: Event| {
        // The app may be closing; nothing to do then.
        let _ = tx.send(e);
        wake();
    };
    let mut progress = |p: DownloadProgress| {
        send(Event::DownloadProgress { repo: repo.clone(), file: p.file, bytes_done: p.bytes_done, bytes_total: p.bytes_total });
    };
    // A SANA pipeline is many files (every component's config and shards), fetched at one commit.
    let pipeline = matches!(crate::model::registry::find(&repo).map(|p| p.spec), Some(crate::model::registry::Spec::TextToImage(_)));
    let result = catch_unwind(AssertUnwindSafe(|| {
        if pipeline {
            crate::model::sana::layout::fetch_pipeline(&repo, &options, None, &mut progress, &cancel).map(|_| ()).map_err(|e| e.to_string())
        } else {
            hub::download_model(&repo, &options, &mut progress, &cancel).map(|_| ()).map_err(|e| e.to_string())
        }
    }));
    let cancelled = cancel.load(Ordering::Relaxed);
    let result = match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(p) => Err(format!("the download crashed: {}", panic_message(p.as_ref()))),
    };
    send(Event::DownloadFinished { repo, result, cancelled });
}
