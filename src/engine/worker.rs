//! The app's engine thread: one thread owns the backend and every loaded model; the front
//! ends (the app, the CLI's benchmarks, tests) talk to it through channels only, in the
//! [`protocol`]'s jobs and events. Split by job:
//!
//! - this file, the **handle** ([`Worker`]): spawn, send, poll, restart on another backend;
//! - [`supervisor`]: runs engines, ends a job that panicked with `Crashed`, restarts, falls
//!   back to the CPU;
//! - [`engine`]: the engine proper (load, generate through [`generation::GenerationModel`],
//!   reconstruct, the preview projection);
//! - [`faults`]: what tests arm to exercise the recovery paths (outside the protocol).
//!
//! ```text
//!   UI thread ── Job{id} ──▶ engine thread (supervise → run_on(choice) → loop { recv; catch_unwind(handle) })
//!             ◀─ Event{id} … Ended{id} ─┘   + request_repaint() after every event
//!   UI thread ── start ──▶ engine::downloads (a thread per repo, its own channel: downloads
//!                           outlive engine restarts and backend switches)
//! ```
//!
//! A backend switch ([`Worker::restart`]) retires the old engine and starts the new engine
//! thread, which first waits for the old one to end: the old models are freed before the new
//! backend loads anything, so two generators are never in memory at once. The old engine
//! finishes the job it is running and hands every job still queued to the new one, which runs
//! them on the new backend. Both engines send to the same event channel, so nothing the old
//! one finished is dropped on the way.

pub mod api;
pub mod engine;
pub mod faults;
pub mod generation;
pub mod projection;
pub mod protocol;
pub mod samples;
pub mod supervisor;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use burn::tensor::{backend::Backend, Tensor};
use image::RgbImage;

pub use self::engine::{fit_projection, FIT_STOPPED};
pub use self::faults::{Faults, PanicAt};
pub use self::protocol::*;
pub(crate) use self::supervisor::panic_message;
use super::backend::BackendChoice;

/// Wakes the UI after each event (egui's `Context::request_repaint`).
pub type Waker = Arc<dyn Fn() + Send + Sync>;

#[derive(Clone)]
struct Sink {
    tx: Sender<Event>,
    wake: Waker,
    taps: Arc<Mutex<Taps>>,
}

/// Second readers of the event stream: the local API running inside the app follows its own
/// jobs ([`WorkerHandle::send_tapped`]) and the events that name no job, while the UI goes on
/// reading everything from the one channel.
#[derive(Default)]
struct Taps {
    jobs: HashMap<JobId, Sender<Event>>,
    all: Vec<Sender<Event>>,
}

impl Sink {
    fn send(&self, e: Event) {
        if let Ok(mut taps) = self.taps.lock() {
            match e.job() {
                Some(id) => {
                    if let Some(tx) = taps.jobs.get(&id) {
                        let _ = tx.send(e.clone());
                    }
                    if matches!(e, Event::Ended { .. }) {
                        taps.jobs.remove(&id);
                    }
                }
                None if !taps.all.is_empty() => taps.all.retain(|tx| tx.send(e.clone()).is_ok()),
                None => {}
            }
        }
        // The UI may be gone (closing); nothing to do then.
        let _ = self.tx.send(e);
        (self.wake)();
    }
}

/// Settings fixed for the life of a worker.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub backend: BackendChoice,
    /// Where fitted preview projections are cached (None: fit every time, keep in memory).
    pub cache_dir: Option<PathBuf>,
    /// Side of the sample crops used to fit a projection is `fit_latent_side × factor`.
    pub fit_latent_side: usize,
    /// Where the text models' text encoder runs (Settings; the CLI's `--text-encoder-device`).
    pub text_encoder: crate::engine::backend::Placement,
    /// Where the generation models' autoencoder runs (Settings; the CLI's `--vae-device`).
    pub autoencoder: crate::engine::backend::Placement,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            backend: BackendChoice::Auto,
            cache_dir: default_cache_dir(),
            fit_latent_side: 8,
            text_encoder: Default::default(),
            autoencoder: Default::default(),
        }
    }
}

/// `<user cache>/dcae-studio` (e.g. ~/.cache/dcae-studio on Linux).
pub fn default_cache_dir() -> Option<PathBuf> {
    dirs::cache_dir().map(|d| d.join("dcae-studio"))
}

/// The UI's handle on the engine thread.
pub struct Worker {
    /// Shared with the [`WorkerHandle`]s, which keep working across [`Self::restart`].
    jobs: Arc<Mutex<Sender<Job>>>,
    /// The job ids' counter, shared with the supervisor (which queues reloads of its own).
    ids: Arc<AtomicU64>,
    faults: Arc<Faults>,
    events: Receiver<Event>,
    sink: Sink,
    /// The engine thread; it returns the jobs it was handed or had queued when retired.
    engine: Option<JoinHandle<Vec<Job>>>,
    /// Set to retire the current engine ([`Self::restart`]).
    retire: Arc<AtomicBool>,
    pub config: WorkerConfig,
}

impl Worker {
    /// Starts the engine thread. `wake` is called after every event (pass
    /// `move || ctx.request_repaint()`).
    pub fn spawn(config: WorkerConfig, wake: Waker) -> Self {
        let (tx, events) = channel::<Event>();
        let sink = Sink { tx, wake, taps: Arc::default() };
        let (jobs, _) = channel::<Job>();
        let mut worker = Self {
            jobs: Arc::new(Mutex::new(jobs)),
            ids: Arc::new(AtomicU64::new(0)),
            faults: Arc::new(Faults::default()),
            events,
            sink,
            engine: None,
            retire: Arc::new(AtomicBool::new(false)),
            config: config.clone(),
        };
        worker.start_engine(config, None);
        worker
    }

    /// Replaces the engine with one on `config` (another backend, say). The old engine is
    /// retired: it ends after its current job (cancel that job first) and hands the jobs still
    /// queued to the new engine, which runs them on `config`'s backend. The new engine thread
    /// waits for the old one to end before it sets up the backend, so the old models are freed
    /// before new ones load. Events keep arriving on the same channel.
    pub fn restart(&mut self, config: WorkerConfig) {
        self.retire.store(true, Ordering::SeqCst);
        let previous = self.engine.take();
        self.config = config.clone();
        self.start_engine(config, previous);
    }

    fn start_engine(&mut self, config: WorkerConfig, previous: Option<JoinHandle<Vec<Job>>>) {
        let (jobs, job_rx) = channel::<Job>();
        // The old engine keeps its own channel (and what is queued in it) until it is retired.
        *self.jobs.lock().unwrap_or_else(|p| p.into_inner()) = jobs;
        let retire = Arc::new(AtomicBool::new(false));
        self.retire = retire.clone();
        let sink = self.sink.clone();
        let shared = supervisor::Shared { sink: sink.clone(), retire, ids: self.ids.clone(), faults: self.faults.clone() };
        let spawned = std::thread::Builder::new().name("dcae-engine".into()).spawn(move || {
            let carried = match previous {
                Some(previous) => {
                    sink.send(Event::Status("Waiting for the previous engine to stop…".into()));
                    previous.join().unwrap_or_default()
                }
                None => Vec::new(),
            };
            let left = supervisor::supervise(config, job_rx, shared, VecDeque::from(carried));
            sink.send(Event::EngineStopped);
            left
        });
        match spawned {
            Ok(h) => self.engine = Some(h),
            Err(e) => self.sink.send(Event::Error { message: format!("could not start the engine thread: {e}") }),
        }
    }

    /// A fresh job id.
    pub fn next_id(&self) -> JobId {
        self.ids.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Queues `job`. Its end always comes back as an [`Event::Ended`], also when the engine has
    /// stopped for good (then at once, as a failure).
    pub fn send(&mut self, job: Job) {
        send_job(&self.jobs, &self.sink, job);
    }

    /// A handle that queues jobs on this worker from another thread and reads their events
    /// (the local API inside the app); it follows [`Self::restart`].
    pub fn handle(&self) -> WorkerHandle {
        WorkerHandle { jobs: self.jobs.clone(), ids: self.ids.clone(), sink: self.sink.clone() }
    }

    /// The faults tests arm on this worker's engines ([`faults`]).
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Every event that has arrived, without blocking.
    pub fn poll(&self) -> Vec<Event> {
        self.events.try_iter().collect()
    }

    /// Waits up to `timeout` for the next event (tests and the CLI-less benchmarks).
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        self.events.recv_timeout(timeout).ok()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the job channel ends the engine loop after its current job; the thread is not
        // joined so that closing the window never waits for a long decode.
        let (dead, _) = channel();
        *self.jobs.lock().unwrap_or_else(|p| p.into_inner()) = dead;
        self.engine.take();
    }
}

fn send_job(jobs: &Mutex<Sender<Job>>, sink: &Sink, job: Job) {
    let sent = jobs.lock().unwrap_or_else(|p| p.into_inner()).send(job);
    if let Err(e) = sent {
        let message = "the engine has stopped; restart the app (your images are kept until you close it)".to_string();
        sink.send(Event::Ended { job: e.0.id(), end: JobEnd::Failed(JobError::other(message)) });
    }
}

/// Queues jobs on a [`Worker`] owned elsewhere (the app's) and follows them on a channel of its
/// own: their events, and the events that name no job. The owner still sees every event.
#[derive(Clone)]
pub struct WorkerHandle {
    jobs: Arc<Mutex<Sender<Job>>>,
    ids: Arc<AtomicU64>,
    sink: Sink,
}

impl WorkerHandle {
    pub fn next_id(&self) -> JobId {
        self.ids.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Queues `job`; its events up to its end also go to `events`.
    pub fn send_tapped(&self, job: Job, events: Sender<Event>) {
        if let Ok(mut taps) = self.sink.taps.lock() {
            taps.jobs.insert(job.id(), events);
        }
        send_job(&self.jobs, &self.sink, job);
    }

    /// Every event that names no job (projection, restart, backend) also goes to `events`,
    /// until its receiver is dropped.
    pub fn listen(&self, events: Sender<Event>) {
        if let Ok(mut taps) = self.sink.taps.lock() {
            taps.all.push(events);
        }
    }
}

/// `img` as a `[1, 3, h, w]` tensor in [−1, 1], scaled and centre-cropped to `w × h`.
pub(crate) fn image_tensor<B: Backend>(img: &RgbImage, w: usize, h: usize, device: &B::Device) -> Result<Tensor<B, 4>, String> {
    let fitted = crate::imaging::cover_crop(img, w as u32, h as u32);
    let (data, shape) = api::to_nchw(std::slice::from_ref(&fitted))?;
    Ok(crate::model::host::upload::<B, 4>(data, shape, device))
}

/// Reads a folder's config.json to tell a generation model from an autoencoder.
pub fn is_generator_folder(dir: &Path) -> bool {
    api::config_is_generator(&dir.join("config.json"))
}
