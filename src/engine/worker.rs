//! The app's engine thread: one thread owns the backend and every loaded model; the UI talks to
//! it through channels only.
//!
//! ```text
//!   UI thread ── Job ──▶ engine thread (run_on(choice) → loop { recv job; catch_unwind(handle) })
//!             ◀─ Event ─┘   + request_repaint() after every event
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
//!
//! A panic while handling a job is caught, reported as an [`Event::Error`], and the engine is
//! restarted: the backend is set up again and the generation model that was loaded is loaded
//! again. Nothing the user made is lost, because results live in the App, not here.
//! If the requested backend cannot start, the engine says why and falls back to the CPU; a GPU
//! backend that panics before any of its jobs succeeded, or with the same failure twice, is
//! left for the CPU too ([`crate::engine::restart`] decides, [`Event::BackendFallback`] says why).

pub mod api;
pub mod projection;
pub mod samples;
pub mod text;

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use burn::tensor::{backend::Backend, Tensor};
use image::RgbImage;

use self::api::{GenerateFailure, GenerateOutput, Generator, GeneratorInfo};
use self::projection::{Fitter, Projection};
use self::text::{TextEvent, TextGenerator, TextOutput, TextRequest};
use super::backend::{run_on, BackendChoice, BackendInfo, BackendTask};
use crate::engine::restart::{Decision, RestartPolicy};
use crate::model::precision::{Precision, PrecisionChoice};
use crate::model::placed::PlacedAe;
use crate::model::tiling;
use crate::model::{Dcae, DcaeConfig};

/// A model's two files, with the name shown in the UI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFilesRef {
    pub name: String,
    pub config: PathBuf,
    pub weights: PathBuf,
}

/// What a generation model is made of on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GeneratorSource {
    /// A class-conditional model: one config and one checkpoint.
    Class(ModelFilesRef),
    /// A SANA / Sprint pipeline folder (diffusers layout), named for the UI.
    Text { name: String, root: PathBuf },
}

impl GeneratorSource {
    pub fn name(&self) -> &str {
        match self {
            GeneratorSource::Class(f) => &f.name,
            GeneratorSource::Text { name, .. } => name,
        }
    }
}

/// A cancel flag shared by the UI (which sets it) and the job (which polls it).
pub type CancelToken = Arc<AtomicBool>;

pub fn cancel_token() -> CancelToken {
    Arc::new(AtomicBool::new(false))
}

#[derive(Debug, Clone)]
pub struct GenerateJob {
    pub id: u64,
    /// One class id per image of the batch; `num_classes` means unconditional. Empty for a
    /// text-to-image job.
    pub labels: Vec<usize>,
    /// The prompt and size of a text-to-image job.
    pub text: Option<TextRequest>,
    /// Image-to-image: start from this picture instead of pure noise.
    pub init: Option<InitImage>,
    pub cfg_scale: f32,
    pub steps: usize,
    pub seed: u64,
    /// A class model's sampler, one of [`api::GeneratorInfo::samplers`]; `None`: its default.
    pub sampler: Option<String>,
    /// Send every step's x0 estimate (as raw latents) for the projected preview.
    pub preview_latents: bool,
    /// Decode x0 with the full DC-AE every `decode_every` steps (0 = never).
    pub decode_every: usize,
    pub cancel: CancelToken,
}

/// The source of an image-to-image run (SDEdit): encoded with the model's own DC-AE, noised to
/// `strength` on the model's schedule, then denoised with the job's class or prompt.
#[derive(Debug, Clone)]
pub struct InitImage {
    pub image: Arc<RgbImage>,
    /// In (0, 1]: 1 keeps nothing of the source's content, small values little of the prompt's.
    pub strength: f32,
}

/// `img` as a `[1, 3, h, w]` tensor in [−1, 1], scaled and centre-cropped to `w × h`.
fn image_tensor<B: Backend>(img: &RgbImage, w: usize, h: usize, device: &B::Device) -> Result<Tensor<B, 4>, String> {
    let fitted = crate::imaging::cover_crop(img, w as u32, h as u32);
    let (data, shape) = api::to_nchw(std::slice::from_ref(&fitted))?;
    Ok(crate::model::host::upload::<B, 4>(data, shape, device))
}

#[derive(Debug, Clone)]
pub struct ReconstructJob {
    pub id: u64,
    pub image: Arc<RgbImage>,
    /// `None`: keep the image's size (centre-cropped to a multiple of the largest factor).
    pub size: Option<u32>,
    pub models: Vec<ModelFilesRef>,
    /// Multiplier for the difference heatmap (autoencoder errors are a few levels of 255).
    pub heatmap_gain: f32,
    pub cancel: CancelToken,
}

#[derive(Debug, Clone)]
pub enum Job {
    LoadGenerator(GeneratorSource),
    Generate(GenerateJob),
    Reconstruct(ReconstructJob),
    /// Drop every loaded autoencoder (the generator stays).
    UnloadAutoencoders,
    /// Forget the fitted preview projection and delete the cached ones: the next generation
    /// with live previews fits it again.
    ClearProjections,
    /// Panics inside the engine, to exercise the recovery path (tests, debug menu).
    #[doc(hidden)]
    DebugPanic,
    /// Makes the next preview projection fit fail, to exercise the non-fatal path (tests).
    #[doc(hidden)]
    DebugFailNextPreview,
}

/// A batch of latents on the CPU, `[B, C, H, W]` row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct LatentBatch {
    pub data: Vec<f32>,
    pub shape: [usize; 4],
}

impl LatentBatch {
    pub fn image(&self, i: usize) -> &[f32] {
        let n = self.shape[1] * self.shape[2] * self.shape[3];
        &self.data[i * n..(i + 1) * n]
    }
}

#[derive(Debug, Clone)]
pub struct ReconResult {
    pub model: String,
    pub recon: RgbImage,
    pub heatmap: RgbImage,
    /// `[C, h, w]`.
    pub latent_shape: [usize; 3],
    /// Pixel values per latent value: 3·H·W / (C·h·w).
    pub compression: f64,
    pub encode_secs: f64,
    pub decode_secs: f64,
    pub psnr: f64,
    pub ssim: f64,
}

#[derive(Debug, Clone)]
pub enum Event {
    BackendReady(BackendInfo),
    /// The requested backend could not start; the engine continues on the CPU.
    BackendFallback { requested: BackendChoice, reason: String },
    /// What the engine is doing right now (loading, fitting…); empty when idle.
    Status(String),
    GeneratorLoaded { info: GeneratorInfo, secs: f64 },
    GeneratorFailed { name: String, message: String, kind: api::FailureKind },
    /// [`Job::ClearProjections`] is done: the cached projections are gone (or why not).
    ProjectionsCleared { result: Result<(), String> },
    /// The preview projection of the loaded generator (fitted now or read from the cache).
    ProjectionReady { model: String, projection: Projection, fit_secs: Option<f64> },
    Progress { job: u64, step: usize, total: usize, sec_per_step: f64, elapsed: f64 },
    /// A phase outside the sampling steps (text encoding, decoding), with its own progress.
    Phase { job: u64, label: String, done: usize, total: usize },
    PreviewLatent { job: u64, step: usize, total: usize, latents: LatentBatch },
    PreviewDecoded { job: u64, step: usize, images: Vec<RgbImage>, secs: f64 },
    Generated { job: u64, images: Vec<RgbImage>, nfe: usize, network_calls: usize, sampling_secs: f64, decode_secs: f64, sampler: String },
    Cancelled { job: u64 },
    /// The prepared (cropped) original every reconstruction of the job is compared against.
    ReconstructInput { job: u64, original: RgbImage },
    Reconstructed { job: u64, result: ReconResult },
    ReconstructFinished { job: u64 },
    DownloadProgress { repo: String, file: String, bytes_done: u64, bytes_total: u64 },
    DownloadFinished { repo: String, result: Result<(), String>, cancelled: bool },
    /// Something failed that ends the job (`job`) or concerns no job at all.
    Error { job: Option<u64>, message: String },
    /// Something went wrong that the job survives (a step preview, the projection cache): the
    /// UI says so and keeps the run going, so its finished image is not lost.
    Warning { job: Option<u64>, message: String },
    /// An engine thread ended (app closing, or replaced by [`Worker::restart`]); everything it
    /// held is freed.
    EngineStopped,
    /// The engine recovered from a panic; loaded models are being reloaded.
    Restarted { reason: String },
    /// Device memory held by the backend's allocator (GPU backends only): in use, reserved.
    DeviceMemory { in_use: u64, reserved: u64 },
}

/// Wakes the UI after each event (egui's `Context::request_repaint`).
pub type Waker = Arc<dyn Fn() + Send + Sync>;

#[derive(Clone)]
struct Sink {
    tx: Sender<Event>,
    wake: Waker,
}

impl Sink {
    fn send(&self, e: Event) {
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
    jobs: Sender<Job>,
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
        let sink = Sink { tx, wake };
        let (jobs, _) = channel::<Job>();
        let mut worker = Self { jobs, events, sink, engine: None, retire: Arc::new(AtomicBool::new(false)), config: config.clone() };
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
        self.jobs = jobs;
        let retire = Arc::new(AtomicBool::new(false));
        self.retire = retire.clone();
        let sink = self.sink.clone();
        let spawned = std::thread::Builder::new().name("dcae-engine".into()).spawn(move || {
            let carried = match previous {
                Some(previous) => {
                    sink.send(Event::Status("Waiting for the previous engine to stop…".into()));
                    previous.join().unwrap_or_default()
                }
                None => Vec::new(),
            };
            let left = supervise(config, job_rx, sink.clone(), carried.into(), &retire);
            sink.send(Event::EngineStopped);
            left
        });
        match spawned {
            Ok(h) => self.engine = Some(h),
            Err(e) => self.sink.send(Event::Error { job: None, message: format!("could not start the engine thread: {e}") }),
        }
    }

    pub fn send(&mut self, job: Job) {
        if self.jobs.send(job).is_err() {
            self.sink.send(Event::Error {
                job: None,
                message: "the engine thread has stopped; restart the app (your images are kept until you close it)".into(),
            });
        }
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
        self.jobs = dead;
        self.engine.take();
    }
}

// ---------------------------------------------------------------------------------------------
// Supervision
// ---------------------------------------------------------------------------------------------

enum Exit {
    /// The job channel closed: the app is gone.
    Disconnected,
    /// The worker retired this engine (a backend switch): the jobs not run yet go to the next.
    Retired,
    /// A job panicked; start over. `on_cpu`: the engine that panicked ran on the CPU.
    Panicked { reason: String, on_cpu: bool },
}

pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Runs engines on `config`'s backend until the job channel closes or the worker retires this
/// one; returns the jobs not run yet (`queue`, then what is still in the channel) when retired.
fn supervise(config: WorkerConfig, jobs: Receiver<Job>, sink: Sink, mut queue: VecDeque<Job>, retire: &AtomicBool) -> Vec<Job> {
    let mut choice = config.backend;
    // The generator to reload after a restart.
    let loaded: Arc<Mutex<Option<GeneratorSource>>> = Arc::new(Mutex::new(None));
    let mut policy = RestartPolicy::new(choice == BackendChoice::Cpu);
    let leftovers = |queue: &mut VecDeque<Job>| -> Vec<Job> {
        let mut left: Vec<Job> = queue.drain(..).chain(jobs.try_iter()).collect();
        // The handed-over jobs were queued for the model this engine had loaded: it goes first
        // (the next engine skips a load of the model it already has).
        if !left.is_empty() && !matches!(left.first(), Some(Job::LoadGenerator(_))) {
            if let Some(g) = loaded.lock().ok().and_then(|g| g.clone()) {
                left.insert(0, Job::LoadGenerator(g));
            }
        }
        left
    };
    loop {
        let succeeded = Arc::new(AtomicBool::new(false));
        let task = EngineTask { jobs: &jobs, sink: sink.clone(), config: &config, loaded: loaded.clone(), queue: &mut queue, retire, succeeded: succeeded.clone() };
        let outcome = catch_unwind(AssertUnwindSafe(|| run_on(choice, task)));
        if succeeded.load(Ordering::Relaxed) {
            policy.succeeded();
        }
        if retire.load(Ordering::SeqCst) {
            return leftovers(&mut queue);
        }
        match outcome {
            Ok(Ok(Exit::Disconnected)) => return Vec::new(),
            Ok(Ok(Exit::Retired)) => return leftovers(&mut queue),
            Ok(Ok(Exit::Panicked { reason, on_cpu })) => {
                // `auto` may have resolved to the CPU: the policy follows what really ran.
                if on_cpu && choice != BackendChoice::Cpu {
                    choice = BackendChoice::Cpu;
                    policy.moved_to_cpu();
                }
                match policy.panicked(&reason) {
                    Decision::Restart => sink.send(Event::Restarted { reason }),
                    Decision::FallBackToCpu(why) => {
                        sink.send(Event::BackendFallback { requested: choice, reason: why });
                        choice = BackendChoice::Cpu;
                        policy.moved_to_cpu();
                    }
                    Decision::GiveUp(why) => {
                        sink.send(Event::Error { job: None, message: why });
                        return Vec::new();
                    }
                }
                // The model that was loaded comes back first, then the jobs still waiting.
                if let Some(g) = loaded.lock().ok().and_then(|g| g.clone()) {
                    queue.push_front(Job::LoadGenerator(g));
                }
            }
            Ok(Err(e)) => {
                if choice == BackendChoice::Cpu {
                    sink.send(Event::Error { job: None, message: format!("no backend could start: {e}") });
                    return Vec::new();
                }
                sink.send(Event::BackendFallback { requested: choice, reason: e.to_string() });
                choice = BackendChoice::Cpu;
                policy.moved_to_cpu();
            }
            Err(p) => {
                // A panic outside any job: while setting up the backend.
                let reason = panic_message(p.as_ref());
                if choice == BackendChoice::Cpu {
                    sink.send(Event::Error { job: None, message: format!("the CPU backend failed to start: {reason}") });
                    return Vec::new();
                }
                sink.send(Event::BackendFallback { requested: choice, reason: format!("it crashed while starting: {reason}") });
                choice = BackendChoice::Cpu;
                policy.moved_to_cpu();
            }
        }
    }
}

struct EngineTask<'a> {
    jobs: &'a Receiver<Job>,
    sink: Sink,
    config: &'a WorkerConfig,
    loaded: Arc<Mutex<Option<GeneratorSource>>>,
    /// Jobs to run before the channel's: a reload after a restart, jobs handed over.
    queue: &'a mut VecDeque<Job>,
    retire: &'a AtomicBool,
    /// Set once a job that uses the device finishes without a panic ([`RestartPolicy`]).
    succeeded: Arc<AtomicBool>,
}

impl BackendTask for EngineTask<'_> {
    type Output = Exit;

    fn run<B: Backend>(self, device: B::Device, info: BackendInfo) -> Exit {
        let backend_kind = info.kind;
        self.sink.send(Event::BackendReady(info));
        let mut engine = Engine::<B> {
            device,
            backend_kind,
            sink: self.sink.clone(),
            config: self.config.clone(),
            generator: None,
            projection: None,
            autoencoders: HashMap::new(),
            loaded: self.loaded.clone(),
            fail_next_preview: false,
        };
        let mut last_memory: Option<(u64, u64)> = None;
        loop {
            if self.retire.load(Ordering::SeqCst) {
                return Exit::Retired;
            }
            // Memory is read between jobs (the allocator is idle then) and sent when it changed.
            if let Some(m) = crate::engine::backend::gpu_memory::<B>(&engine.device) {
                if last_memory != Some(m) {
                    last_memory = Some(m);
                    self.sink.send(Event::DeviceMemory { in_use: m.0, reserved: m.1 });
                }
            }
            let job = match self.queue.pop_front() {
                Some(j) => j,
                None => match self.jobs.recv_timeout(Duration::from_millis(100)) {
                    Ok(j) => j,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return Exit::Disconnected,
                },
            };
            let what = job_name(&job);
            let id = job_id(&job);
            let uses_device = matches!(job, Job::LoadGenerator(_) | Job::Generate(_) | Job::Reconstruct(_));
            match catch_unwind(AssertUnwindSafe(|| engine.handle(job))) {
                Ok(()) => {
                    if uses_device {
                        self.succeeded.store(true, Ordering::Relaxed);
                    }
                }
                Err(p) => {
                    let reason = panic_message(p.as_ref());
                    self.sink.send(Event::Status(String::new()));
                    self.sink.send(Event::Error {
                        job: id,
                        message: format!(
                            "internal error while {what}: {reason}. The engine is restarting; your images and history are kept."
                        ),
                    });
                    return Exit::Panicked { reason: format!("{what}: {reason}"), on_cpu: backend_kind == "cpu" };
                }
            }
        }
    }
}

fn job_name(job: &Job) -> &'static str {
    match job {
        Job::LoadGenerator(_) => "loading the generation model",
        Job::Generate(_) => "generating",
        Job::Reconstruct(_) => "reconstructing",
        Job::UnloadAutoencoders => "unloading models",
        Job::ClearProjections => "clearing the preview projections",
        Job::DebugPanic => "running the crash test",
        Job::DebugFailNextPreview => "arming a preview failure",
    }
}

fn job_id(job: &Job) -> Option<u64> {
    match job {
        Job::Generate(g) => Some(g.id),
        Job::Reconstruct(r) => Some(r.id),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// The engine proper (generic over the backend)
// ---------------------------------------------------------------------------------------------

enum GenModel<B: Backend> {
    Class(Generator<B>),
    Text(Box<TextGenerator<B>>),
}

impl<B: Backend> GenModel<B> {
    fn info(&self) -> &GeneratorInfo {
        match self {
            GenModel::Class(g) => g.info(),
            GenModel::Text(t) => t.info(),
        }
    }
}

struct LoadedGenerator<B: Backend> {
    model: GenModel<B>,
    files: GeneratorSource,
}

impl<B: Backend> LoadedGenerator<B> {
    /// What the projection cache is keyed on: the model's name and its autoencoder's weights.
    fn cache_identity(&self) -> (String, PathBuf) {
        match &self.files {
            GeneratorSource::Class(f) => (f.name.clone(), f.weights.clone()),
            GeneratorSource::Text { name, root } => (name.clone(), root.join("vae")),
        }
    }
}

struct Engine<B: Backend> {
    device: B::Device,
    /// `cpu`, `wgpu` or `cuda`.
    backend_kind: &'static str,
    sink: Sink,
    config: WorkerConfig,
    generator: Option<LoadedGenerator<B>>,
    projection: Option<Projection>,
    /// Autoencoders for reconstruction, by weights path, with the order they were last used.
    autoencoders: HashMap<PathBuf, (DcaeConfig, Dcae<B>, u64)>,
    loaded: Arc<Mutex<Option<GeneratorSource>>>,
    /// Set by [`Job::DebugFailNextPreview`].
    fail_next_preview: bool,
}

/// How many reconstruction autoencoders stay loaded (an f128c512 alone is several GB).
const MAX_AUTOENCODERS: usize = 3;

fn tensor_to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>, String> {
    Ok(crate::model::host::read_back(t)?)
}

fn images_from_nchw(data: &[f32], shape: [usize; 4]) -> Result<Vec<RgbImage>, String> {
    let [b, c, h, w] = shape;
    if c != 3 {
        return Err(format!("the decoder returned {c} channels, not 3"));
    }
    (0..b).map(|i| api::to_rgb8(&data[i * 3 * h * w..(i + 1) * 3 * h * w], h, w)).collect()
}

/// Decodes a batch of sampled latents one image at a time: the decoder's activations grow with
/// the batch (a batch of 16 at 512² is an out-of-memory on an 8 GB card), one image's do not.
fn decode_images<B: Backend>(model: &Generator<B>, latent: Tensor<B, 4>) -> Result<Vec<RgbImage>, String> {
    let batch = latent.dims()[0];
    let mut images = Vec::with_capacity(batch);
    for i in 0..batch {
        let img = model.decode(latent.clone().narrow(0, i, 1))?;
        let shape: [usize; 4] = img.dims();
        images.extend(tensor_to_vec(img).and_then(|d| images_from_nchw(&d, shape))?);
    }
    Ok(images)
}

impl<B: Backend> Engine<B> {
    fn status(&self, s: impl Into<String>) {
        self.sink.send(Event::Status(s.into()));
    }

    fn error(&self, job: Option<u64>, message: impl Into<String>) {
        self.sink.send(Event::Error { job, message: message.into() });
    }

    /// A failure the job survives (see [`Event::Warning`]).
    fn warn(&self, job: Option<u64>, message: impl Into<String>) {
        self.sink.send(Event::Warning { job, message: message.into() });
    }

    fn handle(&mut self, job: Job) {
        match job {
            Job::LoadGenerator(files) => self.load_generator(files),
            Job::Generate(g) => {
                let id = g.id;
                self.generate(g);
                self.status("");
                let _ = id;
            }
            Job::Reconstruct(r) => {
                let id = r.id;
                self.reconstruct(r);
                self.status("");
                self.sink.send(Event::ReconstructFinished { job: id });
            }
            Job::UnloadAutoencoders => self.autoencoders.clear(),
            Job::ClearProjections => self.clear_projections(),
            Job::DebugPanic => panic!("crash test requested from the debug menu"),
            Job::DebugFailNextPreview => self.fail_next_preview = true,
        }
    }

    fn load_generator(&mut self, files: GeneratorSource) {
        if self.generator.as_ref().is_some_and(|g| g.files == files) {
            if let Some(g) = &self.generator {
                self.sink.send(Event::GeneratorLoaded { info: g.model.info().clone(), secs: 0.0 });
            }
            return;
        }
        self.status(format!("Loading {}…", files.name()));
        // Free the old model first: two UViT-H checkpoints need not fit at once.
        self.generator = None;
        self.projection = None;
        let t0 = Instant::now();
        let loaded = match &files {
            GeneratorSource::Class(f) => Generator::<B>::load_placed(&f.name, &f.config, &f.weights, &self.device, self.config.autoencoder).map(GenModel::Class),
            GeneratorSource::Text { name, root } => {
                TextGenerator::<B>::load(name, root, &self.device, self.config.text_encoder, self.config.autoencoder).map(|t| GenModel::Text(Box::new(t)))
            }
        };
        match loaded {
            Ok(model) => {
                let info = model.info().clone();
                if let Ok(mut l) = self.loaded.lock() {
                    *l = Some(files.clone());
                }
                self.generator = Some(LoadedGenerator { model, files });
                self.sink.send(Event::GeneratorLoaded { info, secs: t0.elapsed().as_secs_f64() });
                // A cached projection is shown at once; fitting waits for the first generation.
                if let Some(p) = self.cached_projection() {
                    self.projection = Some(p.clone());
                    self.sink.send(Event::ProjectionReady { model: self.generator_name(), projection: p, fit_secs: None });
                }
            }
            Err(api::LoadFailure { message, kind }) => {
                if let Ok(mut l) = self.loaded.lock() {
                    *l = None;
                }
                self.sink.send(Event::GeneratorFailed { name: files.name().to_string(), message, kind });
            }
        }
        self.status("");
    }

    fn clear_projections(&mut self) {
        self.projection = None;
        let result = match &self.config.cache_dir {
            Some(dir) => {
                let folder = projection::cache_folder(dir);
                match std::fs::remove_dir_all(&folder) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(format!("cannot clear {}: {e}", folder.display())),
                }
            }
            None => Ok(()),
        };
        self.sink.send(Event::ProjectionsCleared { result });
    }

    fn generator_name(&self) -> String {
        self.generator.as_ref().map(|g| g.files.name().to_string()).unwrap_or_default()
    }

    fn projection_cache_path(&self) -> Option<PathBuf> {
        let g = self.generator.as_ref()?;
        let dir = self.config.cache_dir.as_ref()?;
        let (name, weights) = g.cache_identity();
        Some(projection::cache_path(dir, &projection::cache_key(&name, &weights)))
    }

    fn cached_projection(&self) -> Option<Projection> {
        let g = self.generator.as_ref()?;
        projection::load_cached(&self.projection_cache_path()?, g.model.info().latent_channels)
    }

    /// Fits the generator's latent→RGB projection from the bundled samples (first use only).
    fn ensure_projection(&mut self, cancel: &AtomicBool) -> Result<(), String> {
        if std::mem::take(&mut self.fail_next_preview) {
            return Err("the projection fit failed (injected for a test)".into());
        }
        if self.projection.is_some() {
            return Ok(());
        }
        if let Some(p) = self.cached_projection() {
            self.projection = Some(p.clone());
            self.sink.send(Event::ProjectionReady { model: self.generator_name(), projection: p, fit_secs: None });
            return Ok(());
        }
        let Some(g) = &mut self.generator else { return Err("no generation model is loaded".into()) };
        let name = g.files.name().to_string();
        let info = g.model.info().clone();
        let t0 = Instant::now();
        let (ae, cfg) = match &mut g.model {
            GenModel::Class(m) => {
                let (ae, cfg) = m.autoencoder();
                (ae.clone(), cfg.clone())
            }
            GenModel::Text(t) => t.autoencoder()?,
        };
        // On the CPU an f64c128 encode of a 512 px crop takes about a minute: fit on the four
        // photos only there, and on their mirror images too where encodes are cheap.
        let mirrored = self.backend_kind != "cpu";
        let sink = self.sink.clone();
        let model_name = name.clone();
        let mut on_crop = |i: usize, n: usize| {
            sink.send(Event::Status(format!(
                "Fitting the preview projection for {model_name} (first use only): encoding sample {}/{n}…",
                i + 1
            )));
            !cancel.load(Ordering::Relaxed)
        };
        // Fitted where the autoencoder is: its projection is a small host-side matrix either way.
        let side = self.config.fit_latent_side;
        let p = match &ae {
            PlacedAe::Here(ae) => fit_projection(ae, &cfg, info.scaling_factor, side, mirrored, &mut on_crop, &self.device)?,
            PlacedAe::Cpu(ae) => fit_projection(ae, &cfg, info.scaling_factor, side, mirrored, &mut on_crop, &Default::default())?,
        };
        let secs = t0.elapsed().as_secs_f64();
        if let Some(path) = self.projection_cache_path() {
            if let Err(e) = projection::store_cached(&path, &p) {
                self.warn(None, format!("could not cache the preview projection in {}: {e}", path.display()));
            }
        }
        self.projection = Some(p.clone());
        self.sink.send(Event::ProjectionReady { model: name, projection: p, fit_secs: Some(secs) });
        Ok(())
    }

    fn generate(&mut self, job: GenerateJob) {
        let id = job.id;
        let Some(g) = &self.generator else {
            self.error(Some(id), "no generation model is loaded — see the Models tab");
            return;
        };
        let is_text = matches!(g.model, GenModel::Text(_));
        let batch = job.text.as_ref().map_or(job.labels.len(), |t| t.batch);
        if batch == 0 || job.steps == 0 {
            self.error(Some(id), "nothing to generate (batch size or steps is 0)");
            return;
        }
        if is_text != job.text.is_some() {
            let what = if is_text { "a prompt" } else { "a class" };
            self.error(Some(id), format!("the loaded model takes {what}; the job was made for another model (load it again)"));
            return;
        }
        if job.preview_latents {
            if let Err(e) = self.ensure_projection(&job.cancel) {
                if job.cancel.load(Ordering::Relaxed) {
                    self.sink.send(Event::Cancelled { job: id });
                    return;
                }
                // Previews are a convenience: say why they are missing and go on.
                self.warn(Some(id), format!("step previews are off for this run: {e}"));
            }
        }
        if job.cancel.load(Ordering::Relaxed) {
            self.sink.send(Event::Cancelled { job: id });
            return;
        }
        if is_text {
            self.generate_text(job);
        } else {
            self.generate_class(job);
        }
    }

    /// A sampling run's end: a failed preview is a warning; a cancel or a failure is told and
    /// gives `None`.
    fn settle<T>(&self, id: u64, result: Result<T, GenerateFailure>, callback_err: Option<String>) -> Option<T> {
        if let Some(e) = callback_err {
            self.warn(Some(id), format!("a step preview failed: {e}"));
        }
        match result {
            Ok(r) => Some(r),
            Err(GenerateFailure::Cancelled) => {
                self.sink.send(Event::Cancelled { job: id });
                None
            }
            Err(GenerateFailure::Failed(e)) => {
                self.error(Some(id), format!("generation failed: {e}"));
                None
            }
        }
    }

    fn generate_class(&mut self, job: GenerateJob) {
        let id = job.id;
        let Some(LoadedGenerator { model: GenModel::Class(model), files }) = &self.generator else { return };
        self.status(format!("Generating with {}…", files.name()));
        let init = match &job.init {
            Some(src) => {
                self.sink.send(Event::Phase { job: id, label: "Encoding the source image…".into(), done: 0, total: 1 });
                let side = model.info().image_size();
                match image_tensor::<B>(&src.image, side, side, &self.device) {
                    Ok(x) => match model.encode(x) {
                        Ok(z) => Some((Tensor::cat(vec![z; job.labels.len()], 0), src.strength)),
                        Err(e) => {
                            self.error(Some(id), format!("the source image cannot be encoded: {e}"));
                            return;
                        }
                    },
                    Err(e) => {
                        self.error(Some(id), format!("the source image cannot be used: {e}"));
                        return;
                    }
                }
            }
            None => None,
        };
        if job.cancel.load(Ordering::Relaxed) {
            self.sink.send(Event::Cancelled { job: id });
            return;
        }
        let sink = self.sink.clone();
        let start = Instant::now();
        let mut last = Instant::now();
        let mut sampling = 0.0f64;
        let mut callback_err: Option<String> = None;
        let mut on_step = |step: usize, total: usize, x0: Tensor<B, 4>| {
            let now = Instant::now();
            sampling += (now - last).as_secs_f64();
            if job.preview_latents {
                let shape: [usize; 4] = x0.dims();
                match tensor_to_vec(x0.clone()) {
                    Ok(data) => sink.send(Event::PreviewLatent { job: id, step, total, latents: LatentBatch { data, shape } }),
                    Err(e) => callback_err = Some(e),
                }
            }
            if job.decode_every > 0 && step % job.decode_every == 0 && step < total {
                let t = Instant::now();
                match decode_images(model, x0) {
                    Ok(images) => sink.send(Event::PreviewDecoded { job: id, step, images, secs: t.elapsed().as_secs_f64() }),
                    Err(e) => callback_err = Some(e),
                }
            }
            sink.send(Event::Progress {
                job: id,
                step,
                total,
                sec_per_step: sampling / step as f64,
                elapsed: start.elapsed().as_secs_f64(),
            });
            last = Instant::now();
        };
        let result = model.generate(&job.labels, job.cfg_scale, job.steps, job.seed, job.sampler.as_deref(), init, &mut on_step, &job.cancel);
        let Some(GenerateOutput { latent, nfe, network_calls }) = self.settle(id, result, callback_err) else { return };
        let sampling_secs = start.elapsed().as_secs_f64();
        self.status("Decoding the final image…");
        let t = Instant::now();
        match decode_images(model, latent) {
            Ok(images) => self.sink.send(Event::Generated {
                job: id,
                images,
                nfe,
                network_calls,
                sampling_secs,
                decode_secs: t.elapsed().as_secs_f64(),
                sampler: job
                    .sampler
                    .as_deref()
                    .and_then(|s| model.info().samplers.iter().find(|(n, _)| n == s).map(|(_, l)| l.clone()))
                    .unwrap_or_else(|| model.info().sampler.clone()),
            }),
            Err(e) => self.error(Some(id), format!("decoding the final image failed: {e}")),
        }
    }

    fn generate_text(&mut self, job: GenerateJob) {
        let id = job.id;
        let Some(req) = job.text.clone() else { return };
        // The decoder for the full-decode previews: a handle on the pipeline's own weights.
        let preview_ae = match (&mut self.generator, job.decode_every > 0) {
            (Some(LoadedGenerator { model: GenModel::Text(t), .. }), true) => match t.autoencoder() {
                Ok(ae) => Some(ae),
                Err(e) => {
                    self.error(Some(id), format!("the autoencoder could not be loaded: {e}"));
                    return;
                }
            },
            _ => None,
        };
        let sink = self.sink.clone();
        let Some(LoadedGenerator { model: GenModel::Text(model), files }) = &mut self.generator else { return };
        sink.send(Event::Status(format!("Generating with {}…", files.name())));
        let scaling = model.info().scaling_factor;
        let start = Instant::now();
        let mut sampling = 0.0f64;
        let mut last = Instant::now();
        let mut decode_started: Option<Instant> = None;
        let mut callback_err: Option<String> = None;
        let mut on_event = |e: TextEvent<B>| match e {
            TextEvent::Phase { label, done, total } => {
                if label.starts_with("Decoding") && decode_started.is_none() {
                    decode_started = Some(Instant::now());
                }
                sink.send(Event::Status(label.clone()));
                sink.send(Event::Phase { job: id, label, done, total });
                // Steps are timed from the end of the phase before them.
                last = Instant::now();
            }
            TextEvent::Step { step, total, x0 } => {
                if step == 1 {
                    sink.send(Event::Status("Sampling…".into()));
                }
                sampling += last.elapsed().as_secs_f64();
                if job.preview_latents {
                    let shape: [usize; 4] = x0.dims();
                    match tensor_to_vec(x0.clone()) {
                        Ok(data) => sink.send(Event::PreviewLatent { job: id, step, total, latents: LatentBatch { data, shape } }),
                        Err(e) => callback_err = Some(e),
                    }
                }
                if let Some((ae, pcfg)) = preview_ae.as_ref().filter(|_| job.decode_every > 0 && step % job.decode_every == 0 && step < total) {
                    let t = Instant::now();
                    match TextGenerator::decode_preview(ae, pcfg, scaling, x0) {
                        Ok(images) => sink.send(Event::PreviewDecoded { job: id, step, images, secs: t.elapsed().as_secs_f64() }),
                        Err(e) => callback_err = Some(e),
                    }
                }
                sink.send(Event::Progress { job: id, step, total, sec_per_step: sampling / step as f64, elapsed: start.elapsed().as_secs_f64() });
                last = Instant::now();
            }
        };
        let init = job.init.as_ref().map(|i| (i.image.as_ref(), i.strength));
        let result = model.generate(&req, job.cfg_scale, job.steps, job.seed, init, &mut on_event, &job.cancel);
        let Some(TextOutput { images, steps, network_calls, dropped_tokens, sampler, .. }) = self.settle(id, result, callback_err) else { return };
        if dropped_tokens > 0 {
            self.warn(
                Some(id),
                format!("the prompt is longer than the model reads: its last {dropped_tokens} tokens were dropped (shorten it, or turn the instruction off)"),
            );
        }
        let decode_secs = decode_started.map_or(0.0, |t| t.elapsed().as_secs_f64());
        self.sink.send(Event::Generated {
            job: id,
            images,
            nfe: steps,
            network_calls,
            sampling_secs: start.elapsed().as_secs_f64() - decode_secs,
            decode_secs,
            sampler,
        });
    }

    fn autoencoder(&mut self, files: &ModelFilesRef) -> Result<(), String> {
        let tick = self.autoencoders.values().map(|v| v.2).max().unwrap_or(0) + 1;
        if let Some(entry) = self.autoencoders.get_mut(&files.weights) {
            entry.2 = tick;
            return Ok(());
        }
        while self.autoencoders.len() >= MAX_AUTOENCODERS {
            let oldest = self.autoencoders.iter().min_by_key(|(_, v)| v.2).map(|(k, _)| k.clone());
            match oldest {
                Some(k) => self.autoencoders.remove(&k),
                None => break,
            };
        }
        self.status(format!("Loading {}…", files.name));
        let (mut cfg, ae) = api::load_autoencoder::<B>(&files.name, &files.config, &files.weights, &self.device)?;
        // f16 on a GPU that has it (half the memory of a full-size photo's activations).
        let ae = ae.with_precision(PrecisionChoice::Auto.resolve::<B>(&self.device).unwrap_or(Precision::F32));
        if cfg.name.is_empty() {
            cfg.name = files.name.clone();
        }
        self.autoencoders.insert(files.weights.clone(), (cfg, ae, tick));
        Ok(())
    }

    fn reconstruct(&mut self, job: ReconstructJob) {
        let id = job.id;
        // The configs first (cheap), so the image is cropped once for the largest factor and
        // every model is compared on the same pixels.
        let mut factor = 1usize;
        for m in &job.models {
            match api::autoencoder_config(&m.config, &m.name) {
                Ok(cfg) => factor = factor.max(cfg.factor()),
                Err(e) => {
                    self.error(Some(id), format!("{}: {e}", m.name));
                    return;
                }
            }
        }
        let original = match api::prepare((*job.image).clone(), factor, job.size) {
            Ok(img) => img,
            Err(e) => {
                self.error(Some(id), format!("cannot prepare the image: {e}"));
                return;
            }
        };
        self.sink.send(Event::ReconstructInput { job: id, original: original.clone() });
        let (data, shape) = match api::to_nchw(std::slice::from_ref(&original)) {
            Ok(v) => v,
            Err(e) => {
                self.error(Some(id), e);
                return;
            }
        };
        // One upload for every model of the job.
        let x = crate::model::host::upload::<B, 4>(data, shape, &self.device);
        for m in &job.models {
            if job.cancel.load(Ordering::Relaxed) {
                self.sink.send(Event::Cancelled { job: id });
                return;
            }
            if let Err(e) = self.autoencoder(m) {
                self.error(Some(id), format!("{}: {e}", m.name));
                continue;
            }
            let Some((cfg, ae, _)) = self.autoencoders.get(&m.weights) else { continue };
            self.status(format!("Reconstructing with {}…", m.name));
            // A full-size photo goes through in tiles when an untiled run would not fit; the
            // status line counts them, and Cancel stops between two.
            let budget = crate::engine::memory::autoencoder_budget_on::<B>(&self.device);
            let sink = &self.sink;
            let cancel = &job.cancel;
            let name = &m.name;
            let report = |what: &str, done: usize, total: usize| {
                if total > 1 {
                    sink.send(Event::Status(format!("Reconstructing with {name}: {what} tile {}/{total}…", (done + 1).min(total))));
                }
                !cancel.load(Ordering::Relaxed)
            };
            let reruns_before = ae.f32_reruns();
            let t0 = Instant::now();
            let encode_fit = budget.map(|b| tiling::fit_checked(cfg, b.weight_bytes(ae), tiling::Stage::Encode, b.bytes, b.cap(ae), [1, shape[2], shape[3]], "this device"));
            let z = match encode_fit {
                // Refused before any work: even the smallest tile would be over the device's
                // largest tensor.
                Some(Err(e)) => Err(tiling::TileConfigError::TooLarge(e)),
                Some(Ok(tiling::Fit::Tiled(t))) => tiling::tiled_encode(ae, cfg.factor(), x.clone(), &t, &mut |d, n| report("encoding", d, n)),
                _ => Ok(Some(ae.encode(x.clone()))),
            };
            let z = match z {
                Ok(Some(z)) => z,
                Ok(None) => {
                    self.sink.send(Event::Cancelled { job: id });
                    return;
                }
                Err(e) => {
                    self.error(Some(id), format!("{}: {e}", m.name));
                    continue;
                }
            };
            let _ = B::sync(&self.device);
            let encode_secs = t0.elapsed().as_secs_f64();
            let zdims: [usize; 4] = z.dims();
            let t1 = Instant::now();
            let y = match tiling::decode_within(ae, cfg, z, budget, &mut |d, n| report("decoding", d, n)) {
                Ok(Some(y)) => y,
                Ok(None) => {
                    self.sink.send(Event::Cancelled { job: id });
                    return;
                }
                Err(e) => {
                    self.error(Some(id), format!("{}: {e}", m.name));
                    continue;
                }
            };
            let ydims: [usize; 4] = y.dims();
            let y = tensor_to_vec(y);
            let decode_secs = t1.elapsed().as_secs_f64();
            let reruns = ae.f32_reruns() - reruns_before;
            if reruns > 0 {
                self.sink.send(Event::Status(format!("{}: {reruns} call(s) overflowed f16 and were run again in f32", m.name)));
            }
            let recon = match y.and_then(|d| images_from_nchw(&d, ydims)) {
                Ok(mut v) if !v.is_empty() => v.remove(0),
                Ok(_) => continue,
                Err(e) => {
                    self.error(Some(id), format!("{}: {e}", m.name));
                    continue;
                }
            };
            let metrics = api::psnr(&original, &recon)
                .and_then(|p| api::ssim(&original, &recon).map(|s| (p, s)))
                .and_then(|(p, s)| api::diff_heatmap(&original, &recon, job.heatmap_gain).map(|h| (p, s, h)));
            let (psnr, ssim, heatmap) = match metrics {
                Ok(v) => v,
                Err(e) => {
                    self.error(Some(id), format!("{}: metrics failed: {e}", m.name));
                    continue;
                }
            };
            let [_, c, h, w] = zdims;
            let compression = (3 * shape[2] * shape[3]) as f64 / (c * h * w).max(1) as f64;
            self.sink.send(Event::Reconstructed {
                job: id,
                result: ReconResult {
                    model: m.name.clone(),
                    recon,
                    heatmap,
                    latent_shape: [c, h, w],
                    compression,
                    encode_secs,
                    decode_secs,
                    psnr,
                    ssim,
                },
            });
        }
    }
}

/// The error [`fit_projection`] returns when `on_crop` stopped it.
pub const FIT_STOPPED: &str = "stopped";

/// Fits the latent→RGB preview projection of `ae` on the bundled samples (and their mirror
/// images): each is centre-cropped to `latent_side × factor` pixels, encoded, scaled like the
/// sampler's latents, and paired with its own box-filtered pixels.
///
/// `mirrored` doubles the data (and the cost) with the mirror images; `on_crop(i, n)` hears
/// about each encode before it starts and stops the fit by returning false.
pub fn fit_projection<B: Backend>(
    ae: &Dcae<B>,
    cfg: &DcaeConfig,
    scaling_factor: f32,
    latent_side: usize,
    mirrored: bool,
    on_crop: &mut dyn FnMut(usize, usize) -> bool,
    device: &B::Device,
) -> Result<Projection, String> {
    let factor = cfg.factor();
    let side = (latent_side.max(2) * factor) as u32;
    let c = cfg.latent_channels;
    let mut fitter = Fitter::new(c);
    let mut crops = 0;
    let flips: &[bool] = if mirrored { &[false, true] } else { &[false] };
    let total = samples::SAMPLES.len() * flips.len();
    for (_, _, bytes) in samples::SAMPLES {
        let img = samples::decode(bytes)?;
        let img = api::prepare(img, factor, Some(side))?;
        for &flip in flips {
            if !on_crop(crops, total) {
                return Err(FIT_STOPPED.to_string());
            }
            let img = if flip { image::imageops::flip_horizontal(&img) } else { img.clone() };
            let (data, shape) = api::to_nchw(std::slice::from_ref(&img))?;
            let z = ae.encode(crate::model::host::upload::<B, 4>(data, shape, device)) * scaling_factor;
            let [_, zc, zh, zw] = z.dims();
            if zc != c {
                return Err(format!("the encoder gave {zc} channels, the config says {c}"));
            }
            let latent = tensor_to_vec(z)?;
            let (target, th, tw) = projection::box_downsample(&img, factor);
            if (th, tw) != (zh, zw) {
                return Err(format!("latent {zh}×{zw} does not match the image grid {th}×{tw}"));
            }
            fitter.add(&latent, &target, zh, zw);
            crops += 1;
        }
    }
    let note = format!(
        "least squares on {} latent pixels ({crops} crops of {side}×{side} px from {} bundled photos)",
        fitter.samples(),
        samples::SAMPLES.len()
    );
    fitter.solve(1e-3, note).ok_or_else(|| "the projection fit was singular".to_string())
}

/// Reads a folder's config.json to tell a generation model from an autoencoder.
pub fn is_generator_folder(dir: &Path) -> bool {
    api::config_is_generator(&dir.join("config.json"))
}
