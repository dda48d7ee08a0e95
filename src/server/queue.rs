//! The API's queue: requests wait here in arrival order and one dispatcher thread runs them, one
//! after the other, through the engine's [`Worker`] (one engine, one job queue). A request is a
//! [`Task`]; it ends exactly once, with its reply sent to the handler thread that waits for it
//! (finished, cancelled, or failed with an [`ApiError`]).
//!
//! Why a queue of its own in front of the worker's: a request is several engine jobs (a model
//! load when it names another model, then one generation per prompt and iteration), and each
//! must start only once the one before it has ended well: a generation sent behind a load that
//! fails would run on whatever is loaded. Waiting here also gives each request a position, and
//! cancelling one that waits costs nothing.
//!
//! Contact points: `super::routes` queues [`Work`] and reads [`Live`]; the dispatcher
//! ([`Dispatcher::run`]) is the only code that sends jobs or reads events.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use image::RgbImage;

use crate::engine::catalog::{Catalog, ModelKind};
use crate::engine::worker::api::{GeneratorInfo, ImageParams};
use crate::engine::worker::projection::Projection;
use crate::engine::worker::{
    cancel_token, CancelToken, Conditioning, Event, GenerateJob, GeneratorSource, InitImage, Job, JobEnd, JobId, ReconResult, ReconstructJob, Worker, WorkerHandle,
};
use crate::model::sana::adapter::TextRequest;

/// Requests that may wait at once; more is a 503 (the client retries later).
pub const MAX_WAITING: usize = 256;
/// Finished task ids remembered for `/internal/progress` ("completed").
const REMEMBER_FINISHED: usize = 256;

/// A failure the client gets as an HTTP status and a JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    /// A short machine-readable word (`"not_found"`, `"invalid_request"`, …).
    pub error: &'static str,
    /// What is wrong and what to do, for people.
    pub detail: String,
}

impl ApiError {
    pub fn new(status: u16, error: &'static str, detail: impl Into<String>) -> Self {
        Self { status, error, detail: detail.into() }
    }

    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(422, "invalid_request", detail)
    }

    fn cancelled() -> Self {
        Self::new(409, "cancelled", "the request was cancelled before it finished")
    }
}

/// One generation's conditioning as the request gave it; the dispatcher turns it into the
/// loaded model's terms (a class model reads the prompt as an ImageNet class).
#[derive(Debug, Clone)]
pub struct GenerateSpec {
    /// The model's catalog label or key; `None`: the current `sd_model_checkpoint`.
    pub model: Option<String>,
    /// One entry per prompt; each is run `n_iter` times.
    pub prompts: Vec<String>,
    pub negative_prompt: String,
    pub steps: Option<usize>,
    pub cfg_scale: Option<f32>,
    /// `None`: a random seed.
    pub seed: Option<u64>,
    pub sampler_name: Option<String>,
    pub batch_size: usize,
    pub n_iter: usize,
    pub width: usize,
    pub height: usize,
    pub init: Option<InitImage>,
}

#[derive(Debug, Clone)]
pub struct ReconstructSpec {
    pub image: Arc<RgbImage>,
    /// Catalog labels or keys of autoencoders (a text pipeline's name means its DC-AE).
    pub models: Vec<String>,
    pub size: Option<u32>,
}

#[derive(Debug, Clone)]
pub enum Work {
    Generate(GenerateSpec),
    Reconstruct(ReconstructSpec),
    /// `POST /sdapi/v1/options` with `sd_model_checkpoint`: load it, then make it the default.
    SetModel(String),
}

impl Work {
    fn label(&self) -> &'static str {
        match self {
            Work::Generate(g) if g.init.is_some() => "img2img",
            Work::Generate(_) => "txt2img",
            Work::Reconstruct(_) => "reconstruct",
            Work::SetModel(_) => "load model",
        }
    }
}

/// One generated image with what made it.
#[derive(Debug, Clone)]
pub struct Made {
    pub image: RgbImage,
    pub params: ImageParams,
    pub prompt: String,
    pub seed: u64,
}

#[derive(Debug, Clone)]
pub enum Reply {
    Images {
        images: Vec<Made>,
        model: String,
        sampler: String,
        steps: usize,
        cfg_scale: f32,
        /// Interrupted (`/interrupt`): what was finished before is returned.
        interrupted: bool,
        /// Things the client should know (a sampler it asked for that the model lacks, …).
        notes: Vec<String>,
        seconds: f64,
    },
    Reconstructed { original: RgbImage, results: Vec<ReconResult>, warnings: Vec<String> },
    ModelSet { name: String },
}

pub struct Task {
    pub id: String,
    pub work: Work,
    cancel: CancelToken,
    reply: mpsc::Sender<Result<Reply, ApiError>>,
    enqueued: Instant,
}

/// What `/progress` shows of the running task.
#[derive(Debug, Clone)]
pub struct Running {
    pub id: String,
    pub kind: &'static str,
    pub started: Instant,
    /// The engine job running now, and its cancel flag (`/interrupt`, `/skip`).
    job_cancel: Option<CancelToken>,
    task_cancel: CancelToken,
    pub job_no: usize,
    pub job_count: usize,
    pub step: usize,
    pub steps: usize,
    pub sec_per_step: f64,
    pub preview: Option<Arc<RgbImage>>,
    /// Increases with every new preview (`/internal/progress`'s `id_live_preview`).
    pub preview_id: u64,
    pub interrupted: bool,
    pub skipped: bool,
    pub textinfo: String,
}

impl Running {
    /// Done share of the whole task in [0, 1].
    pub fn progress(&self) -> f64 {
        let per = if self.steps > 0 { self.step as f64 / self.steps as f64 } else { 0.0 };
        ((self.job_no as f64 + per) / self.job_count.max(1) as f64).clamp(0.0, 1.0)
    }

    /// Seconds left, from the time per step so far.
    pub fn eta(&self) -> f64 {
        let p = self.progress();
        if p <= 0.0 {
            return 0.0;
        }
        let elapsed = self.started.elapsed().as_secs_f64();
        (elapsed / p - elapsed).max(0.0)
    }
}

/// The API's settings that `/options` reads and writes.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The default model's catalog label.
    pub sd_model_checkpoint: Option<String>,
    pub live_previews_enable: bool,
}

#[derive(Default)]
struct State {
    waiting: VecDeque<Task>,
    running: Option<Running>,
    /// Where the running task's one reply goes.
    reply: Option<mpsc::Sender<Result<Reply, ApiError>>>,
    finished: VecDeque<String>,
    options: Options,
    /// The model the engine holds (its catalog label) and what it said of itself.
    loaded: Option<(String, GeneratorInfo)>,
    next: u64,
    stopping: Option<Instant>,
    /// The engine jobs the dispatcher sent last, so the app can tell them from its own.
    sent: VecDeque<JobId>,
    /// Tasks accepted, finished, cancelled, failed (the load test counts them).
    pub counts: Counts,
}

/// How the accepted tasks ended so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub accepted: u64,
    pub finished: u64,
    pub cancelled: u64,
    pub failed: u64,
}

/// What a task looks like from outside: waiting at a position, running, or finished.
#[derive(Debug, Clone, PartialEq)]
pub enum Where {
    Waiting { position: usize },
    Running,
    Finished,
    Unknown,
}

pub struct Queue {
    state: Mutex<State>,
    changed: Condvar,
    pub catalog: RwLock<Catalog>,
}

impl Queue {
    pub fn new(catalog: Catalog, options: Options) -> Arc<Self> {
        Arc::new(Self { state: Mutex::new(State { options, ..State::default() }), changed: Condvar::new(), catalog: RwLock::new(catalog) })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A handler that panicked while holding the lock left nothing half-written that the
        // queue relies on (every update is one assignment), so carry on with the state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `work` under `task_id` (a fresh id when `None`); returns the id and the channel
    /// its one reply comes on.
    pub fn submit(&self, work: Work, task_id: Option<String>) -> Result<(String, mpsc::Receiver<Result<Reply, ApiError>>), ApiError> {
        let mut s = self.lock();
        if s.stopping.is_some() {
            return Err(ApiError::new(503, "stopping", "the server is shutting down"));
        }
        if s.waiting.len() >= MAX_WAITING {
            return Err(ApiError::new(503, "queue_full", format!("{MAX_WAITING} requests are already waiting; try again when some have finished")));
        }
        s.next += 1;
        let id = task_id.unwrap_or_else(|| format!("task({})", s.next));
        if s.waiting.iter().any(|t| t.id == id) || s.running.as_ref().is_some_and(|r| r.id == id) {
            return Err(ApiError::invalid(format!("a request with the task id {id:?} is already queued; use another force_task_id")));
        }
        let (tx, rx) = mpsc::channel();
        s.waiting.push_back(Task { id: id.clone(), work, cancel: cancel_token(), reply: tx, enqueued: Instant::now() });
        s.counts.accepted += 1;
        drop(s);
        self.changed.notify_all();
        Ok((id, rx))
    }

    /// Cancels a waiting or running task. Returns whether there was one.
    pub fn cancel(&self, id: &str) -> bool {
        let mut s = self.lock();
        if let Some(at) = s.waiting.iter().position(|t| t.id == id) {
            if let Some(task) = s.waiting.remove(at) {
                s.counts.cancelled += 1;
                let _ = task.reply.send(Err(ApiError::cancelled()));
                Self::remember(&mut s, task.id);
            }
            return true;
        }
        match &s.running {
            Some(r) if r.id == id => {
                r.task_cancel.store(true, Ordering::SeqCst);
                if let Some(c) = &r.job_cancel {
                    c.store(true, Ordering::SeqCst);
                }
                true
            }
            _ => false,
        }
    }

    /// `/interrupt`: ends the running request after its current image, returning what it made.
    pub fn interrupt(&self) {
        let mut s = self.lock();
        if let Some(r) = &mut s.running {
            r.interrupted = true;
            if let Some(c) = &r.job_cancel {
                c.store(true, Ordering::SeqCst);
            }
        }
    }

    /// `/skip`: drops the image being made and goes on with the request's next one.
    pub fn skip(&self) {
        let mut s = self.lock();
        if let Some(r) = &mut s.running {
            r.skipped = true;
            if let Some(c) = &r.job_cancel {
                c.store(true, Ordering::SeqCst);
            }
        }
    }

    pub fn running(&self) -> Option<Running> {
        self.lock().running.clone()
    }

    pub fn waiting(&self) -> Vec<(String, &'static str, f64)> {
        self.lock().waiting.iter().map(|t| (t.id.clone(), t.work.label(), t.enqueued.elapsed().as_secs_f64())).collect()
    }

    pub fn locate(&self, id: &str) -> Where {
        let s = self.lock();
        if s.running.as_ref().is_some_and(|r| r.id == id) {
            Where::Running
        } else if let Some(p) = s.waiting.iter().position(|t| t.id == id) {
            Where::Waiting { position: p + 1 }
        } else if s.finished.iter().any(|f| f == id) {
            Where::Finished
        } else {
            Where::Unknown
        }
    }

    pub fn options(&self) -> Options {
        self.lock().options.clone()
    }

    pub fn set_live_previews(&self, on: bool) {
        self.lock().options.live_previews_enable = on;
    }

    pub fn loaded(&self) -> Option<String> {
        self.lock().loaded.as_ref().map(|(n, _)| n.clone())
    }

    pub fn counts(&self) -> Counts {
        self.lock().counts
    }

    /// Requests waiting or running.
    pub fn len(&self) -> usize {
        let s = self.lock();
        s.waiting.len() + usize::from(s.running.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops taking requests; those waiting are cancelled, the running one is stopped.
    pub fn stop(&self) {
        let mut s = self.lock();
        s.stopping.get_or_insert_with(Instant::now);
        for task in std::mem::take(&mut s.waiting) {
            s.counts.cancelled += 1;
            let _ = task.reply.send(Err(ApiError::new(503, "stopping", "the server is shutting down")));
        }
        if let Some(r) = &s.running {
            r.task_cancel.store(true, Ordering::SeqCst);
            if let Some(c) = &r.job_cancel {
                c.store(true, Ordering::SeqCst);
            }
        }
        drop(s);
        self.changed.notify_all();
    }

    /// Whether the dispatcher sent engine job `job` (one of its last 1024).
    pub fn sent(&self, job: JobId) -> bool {
        self.lock().sent.contains(&job)
    }

    fn record_sent(&self, job: JobId) {
        let mut s = self.lock();
        s.sent.push_back(job);
        while s.sent.len() > 1024 {
            s.sent.pop_front();
        }
    }

    /// How long ago [`Self::stop`] was called.
    fn stopped_for(&self) -> Option<Duration> {
        self.lock().stopping.map(|t| t.elapsed())
    }

    fn remember(s: &mut State, id: String) {
        s.finished.push_back(id);
        while s.finished.len() > REMEMBER_FINISHED {
            s.finished.pop_front();
        }
    }

    /// The next task, waiting until there is one; `None` once stopping.
    fn next_task(&self) -> Option<(String, Work, CancelToken)> {
        let mut s = self.lock();
        loop {
            if s.stopping.is_some() {
                return None;
            }
            if let Some(task) = s.waiting.pop_front() {
                let (id, work, cancel) = (task.id.clone(), task.work.clone(), task.cancel.clone());
                s.running = Some(Running {
                    id: id.clone(),
                    kind: work.label(),
                    started: Instant::now(),
                    job_cancel: None,
                    task_cancel: cancel.clone(),
                    job_no: 0,
                    job_count: 1,
                    step: 0,
                    steps: 0,
                    sec_per_step: 0.0,
                    preview: None,
                    preview_id: 0,
                    interrupted: false,
                    skipped: false,
                    textinfo: String::new(),
                });
                s.reply = Some(task.reply);
                return Some((id, work, cancel));
            }
            s = self.changed.wait_timeout(s, Duration::from_millis(500)).map(|(g, _)| g).unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Ends the running task with `result`.
    fn finish(&self, result: Result<Reply, ApiError>) {
        let mut s = self.lock();
        let reply = s.reply.take();
        match &result {
            Ok(_) => s.counts.finished += 1,
            Err(e) if e.error == "cancelled" => s.counts.cancelled += 1,
            Err(_) => s.counts.failed += 1,
        }
        if let Some(r) = s.running.take() {
            Self::remember(&mut s, r.id);
        }
        drop(s);
        if let Some(reply) = reply {
            // The client may have gone away; the result is in the log line then.
            let _ = reply.send(result);
        }
    }

    fn update(&self, f: impl FnOnce(&mut Running)) {
        if let Some(r) = &mut self.lock().running {
            f(r);
        }
    }
}

/// How the dispatcher reaches the engine: a [`Worker`] of its own (`dcae serve`), or the app's
/// through a [`WorkerHandle`] ([`Tapped`]).
pub trait Link: Send {
    fn next_id(&self) -> JobId;
    fn send(&mut self, job: Job);
    fn recv_timeout(&mut self, timeout: Duration) -> Option<Event>;
    /// Others queue jobs on the same engine (the app's own runs): the app loads its own model
    /// at start and reports the backend itself.
    fn shared(&self) -> bool;
}

impl Link for Worker {
    fn next_id(&self) -> JobId {
        Worker::next_id(self)
    }
    fn send(&mut self, job: Job) {
        Worker::send(self, job)
    }
    fn recv_timeout(&mut self, timeout: Duration) -> Option<Event> {
        Worker::recv_timeout(self, timeout)
    }
    fn shared(&self) -> bool {
        false
    }
}

/// The app's engine, shared: this link's jobs and the events that name no job come on its own
/// channel; the app sees them all as well.
pub struct Tapped {
    handle: WorkerHandle,
    tx: mpsc::Sender<Event>,
    rx: mpsc::Receiver<Event>,
}

impl Tapped {
    pub fn new(handle: WorkerHandle) -> Self {
        let (tx, rx) = mpsc::channel();
        handle.listen(tx.clone());
        Self { handle, tx, rx }
    }
}

impl Link for Tapped {
    fn next_id(&self) -> JobId {
        self.handle.next_id()
    }
    fn send(&mut self, job: Job) {
        self.handle.send_tapped(job, self.tx.clone())
    }
    fn recv_timeout(&mut self, timeout: Duration) -> Option<Event> {
        self.rx.recv_timeout(timeout).ok()
    }
    fn shared(&self) -> bool {
        true
    }
}

/// Runs the queue's tasks on the engine, one at a time, until the queue stops.
pub struct Dispatcher {
    queue: Arc<Queue>,
    worker: Box<dyn Link>,
    /// The preview projection per model, as the engine fitted it.
    projection: Option<(String, Projection)>,
}

impl Dispatcher {
    pub fn new(queue: Arc<Queue>, worker: Box<dyn Link>) -> Self {
        Self { queue, worker, projection: None }
    }

    pub fn run(mut self) {
        while let Some((_, work, cancel)) = self.queue.next_task() {
            let result = if cancel.load(Ordering::SeqCst) {
                Err(ApiError::cancelled())
            } else {
                match &work {
                    Work::SetModel(name) => self.set_model(name, &cancel),
                    Work::Generate(spec) => self.generate(spec, &cancel),
                    Work::Reconstruct(spec) => self.reconstruct(spec, &cancel),
                }
            };
            self.queue.finish(result);
        }
    }

    /// Waits for job `id` to end, handing every other event of it to `on`.
    fn await_end(&mut self, id: JobId, on: &mut dyn FnMut(&mut Self, Event)) -> JobEnd {
        loop {
            let Some(ev) = self.worker.recv_timeout(Duration::from_millis(200)) else {
                // Stopping with an engine that is gone too (the app closing drops it first): a
                // job it will never run must not hold the dispatcher forever.
                if self.queue.stopped_for().is_some_and(|d| d > Duration::from_secs(10)) {
                    return JobEnd::Cancelled;
                }
                continue;
            };
            match ev {
                Event::Ended { job, end } if job == id => return end,
                Event::ProjectionReady { model, projection, .. } => self.projection = Some((model, projection)),
                // The engine recovered from a crash and reloads on its own; load explicitly
                // next time rather than trust it.
                Event::Restarted { reason } => {
                    eprintln!("serve: the engine restarted: {reason}");
                    self.queue.lock().loaded = None;
                }
                Event::BackendFallback { requested, reason } => eprintln!("serve: the {requested} backend failed ({reason}); running on the CPU"),
                // As every other command prints it: a run on the CPU says why it is not on the GPU.
                Event::BackendReady(info) if !self.worker.shared() => {
                    eprintln!("serve: backend: {info}");
                    for s in &info.skipped {
                        eprintln!("serve:   skipped {s}");
                    }
                }
                Event::Error { message } => eprintln!("serve: {message}"),
                other => on(self, other),
            }
        }
    }

    fn send(&mut self, job: Job) {
        self.queue.record_sent(job.id());
        self.worker.send(job);
    }

    /// The catalog entry named `name` (label or key) as something the engine loads.
    fn source_of(&self, name: &str) -> Result<(String, GeneratorSource), ApiError> {
        let catalog = self.queue.catalog.read().unwrap_or_else(|p| p.into_inner());
        let entry = catalog
            .generators()
            .find(|e| e.label == name || e.key == name)
            .ok_or_else(|| ApiError::new(404, "not_found", format!("no generation model {name:?}: GET /sdapi/v1/sd-models lists them")))?;
        let source = entry
            .generator_source()
            .ok_or_else(|| ApiError::new(404, "not_downloaded", format!("{name} is not on this computer yet: `dcae download {}` fetches it", entry.key)))?;
        Ok((entry.label.clone(), source))
    }

    /// Asks the engine for `name`: every request does, since the engine answers a load of
    /// the model it holds at once, and on the app's shared engine the model may have changed
    /// since the last request.
    fn ensure(&mut self, name: &str, cancel: &CancelToken) -> Result<GeneratorInfo, ApiError> {
        let (label, source) = self.source_of(name)?;
        self.queue.update(|r| r.textinfo = format!("Loading {label}"));
        let id = self.worker.next_id();
        let job_cancel = cancel_token();
        self.queue.update(|r| r.job_cancel = Some(job_cancel.clone()));
        if cancel.load(Ordering::SeqCst) {
            return Err(ApiError::cancelled());
        }
        self.send(Job::LoadGenerator { id, source, cancel: job_cancel });
        let end = self.await_end(id, &mut |_, _| {});
        self.queue.update(|r| r.job_cancel = None);
        match end {
            JobEnd::Loaded { info, .. } => {
                self.queue.lock().loaded = Some((label, info.clone()));
                Ok(info)
            }
            other => {
                // Whatever was held is gone: the load freed it first.
                self.queue.lock().loaded = None;
                Err(end_error(other, &format!("loading {label}")))
            }
        }
    }

    fn set_model(&mut self, name: &str, cancel: &CancelToken) -> Result<Reply, ApiError> {
        self.ensure(name, cancel)?;
        let label = self.queue.loaded().unwrap_or_else(|| name.to_string());
        self.queue.lock().options.sd_model_checkpoint = Some(label.clone());
        Ok(Reply::ModelSet { name: label })
    }

    fn generate(&mut self, spec: &GenerateSpec, cancel: &CancelToken) -> Result<Reply, ApiError> {
        let started = Instant::now();
        let name = match spec.model.clone().or_else(|| self.queue.options().sd_model_checkpoint) {
            Some(n) => n,
            None => return Err(ApiError::new(404, "no_model", "no generation model is chosen: set sd_model_checkpoint (POST /sdapi/v1/options) to one of GET /sdapi/v1/sd-models")),
        };
        let info = self.ensure(&name, cancel)?;
        let mut notes = Vec::new();
        let steps = spec.steps.unwrap_or(info.default_steps).max(1);
        if steps > info.max_steps {
            return Err(ApiError::invalid(format!("steps {steps} is more than {} takes ({}); ask for at most {}", info.name, info.steps_hint, info.max_steps)));
        }
        // Its range was checked with the request (`routes::generate_spec`).
        let cfg_scale = spec.cfg_scale.unwrap_or(info.default_guidance);
        let text = info.controls.takes_prompt();
        let sampler = choose_sampler(&info, spec.sampler_name.as_deref(), &mut notes);
        // The conditioning of each prompt, checked before any work.
        let mut conds = Vec::new();
        for prompt in &spec.prompts {
            let c = if text {
                if prompt.trim().is_empty() {
                    return Err(ApiError::invalid("the prompt is empty: describe the picture you want"));
                }
                info.check_size(spec.width, spec.height).map_err(ApiError::invalid)?;
                Conditioning::Prompt(TextRequest {
                    prompt: prompt.trim().to_string(),
                    negative_prompt: spec.negative_prompt.trim().to_string(),
                    batch: spec.batch_size,
                    width: spec.width,
                    height: spec.height,
                    instruction: true,
                    binning: true,
                })
            } else {
                Conditioning::Classes(vec![class_of(prompt, info.num_classes)?; spec.batch_size])
            };
            conds.push((prompt.trim().to_string(), c));
        }
        if !text && (spec.width, spec.height) != (info.image_size(), info.image_size()) {
            notes.push(format!("{} makes {}×{} images; the requested size was not used", info.name, info.image_size(), info.image_size()));
        }
        if !text && !spec.negative_prompt.trim().is_empty() {
            notes.push(format!("{} is a class model: the negative prompt was not used", info.name));
        }
        let live = self.queue.options().live_previews_enable;
        let seed0 = spec.seed.unwrap_or_else(|| u64::from(rand::random::<u32>()));
        let jobs: Vec<(String, Conditioning, u64)> = conds
            .iter()
            .flat_map(|(p, c)| (0..spec.n_iter).map(move |_| (p.clone(), c.clone())))
            .enumerate()
            .map(|(i, (p, c))| (p, c, seed0.wrapping_add(i as u64)))
            .collect();
        let count = jobs.len();
        self.queue.update(|r| {
            r.job_count = count;
            r.steps = steps;
        });
        let mut images = Vec::new();
        let mut ran_sampler = sampler.clone().unwrap_or_else(|| info.sampler.clone());
        let mut interrupted = false;
        for (n, (prompt, conditioning, seed)) in jobs.into_iter().enumerate() {
            if cancel.load(Ordering::SeqCst) {
                return Err(ApiError::cancelled());
            }
            let id = self.worker.next_id();
            let job_cancel = cancel_token();
            let mut stop_now = false;
            self.queue.update(|r| {
                r.job_no = n;
                r.step = 0;
                r.skipped = false;
                r.textinfo = format!("Image {} of {count}", n + 1);
                stop_now = r.interrupted;
                r.job_cancel = Some(job_cancel.clone());
            });
            if stop_now {
                interrupted = true;
                break;
            }
            let job = GenerateJob {
                id,
                conditioning: conditioning.clone(),
                init: spec.init.clone(),
                cfg_scale,
                steps,
                seed,
                sampler: sampler.clone(),
                preview_latents: live,
                decode_every: 0,
                cancel: job_cancel,
            };
            self.send(Job::Generate(job.clone()));
            let model = info.name.clone();
            let end = self.await_end(id, &mut |d, ev| d.on_progress(id, &model, ev));
            self.queue.update(|r| r.job_cancel = None);
            match end {
                JobEnd::Generated(g) => {
                    ran_sampler = g.sampler.clone();
                    let params = job.image_params(&info, g.sampler.clone(), "API init image");
                    images.extend(g.images.iter().map(|img| Made { image: img.clone(), params: params.clone(), prompt: prompt.clone(), seed }));
                }
                JobEnd::Cancelled => {
                    let (skipped, was_interrupted) = self.queue.running().map_or((false, false), |r| (r.skipped, r.interrupted));
                    if cancel.load(Ordering::SeqCst) {
                        return Err(ApiError::cancelled());
                    }
                    if skipped {
                        notes.push(format!("image {} of {count} was skipped", n + 1));
                    }
                    if was_interrupted {
                        interrupted = true;
                        break;
                    }
                    if skipped {
                        continue;
                    }
                    return Err(ApiError::cancelled());
                }
                other => return Err(end_error(other, "generating")),
            }
        }
        Ok(Reply::Images { images, model: info.name.clone(), sampler: ran_sampler, steps, cfg_scale, interrupted, notes, seconds: started.elapsed().as_secs_f64() })
    }

    fn on_progress(&mut self, id: JobId, model: &str, ev: Event) {
        match ev {
            Event::Progress { job, step, total, sec_per_step, .. } if job == id => self.queue.update(|r| {
                r.step = step;
                r.steps = total;
                r.sec_per_step = sec_per_step;
            }),
            Event::PreviewLatent { job, latents, .. } if job == id => {
                let Some((m, projection)) = &self.projection else { return };
                if m != model {
                    return;
                }
                let [_, _, h, w] = latents.shape;
                let rgba = projection.to_rgba(latents.image(0), h, w);
                let rgb: Vec<u8> = rgba.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
                if let Some(img) = RgbImage::from_raw(w as u32, h as u32, rgb) {
                    self.queue.update(|r| {
                        r.preview = Some(Arc::new(img));
                        r.preview_id += 1;
                    });
                }
            }
            Event::PreviewDecoded { job, mut images, .. } if job == id && !images.is_empty() => {
                let img = images.swap_remove(0);
                self.queue.update(|r| {
                    r.preview = Some(Arc::new(img));
                    r.preview_id += 1;
                });
            }
            Event::Phase { job, label, .. } if job == id => self.queue.update(|r| r.textinfo = label),
            Event::Warning { job: Some(job), message } if job == id => eprintln!("serve: {message}"),
            _ => {}
        }
    }

    fn reconstruct(&mut self, spec: &ReconstructSpec, cancel: &CancelToken) -> Result<Reply, ApiError> {
        let models = {
            let catalog = self.queue.catalog.read().unwrap_or_else(|p| p.into_inner());
            let mut models = Vec::new();
            for name in &spec.models {
                let entry = catalog
                    .entries
                    .iter()
                    .find(|e| (e.label == *name || e.key == *name) && (e.kind == ModelKind::Autoencoder || e.kind == ModelKind::TextToImage))
                    .ok_or_else(|| ApiError::new(404, "not_found", format!("no autoencoder {name:?}: GET /dcae/v1/autoencoders lists them")))?;
                let files = entry.files.clone().ok_or_else(|| ApiError::new(404, "not_downloaded", format!("{name} is not on this computer yet: `dcae download {}` fetches it", entry.key)))?;
                models.push(files);
            }
            models
        };
        let id = self.worker.next_id();
        let job_cancel = cancel_token();
        self.queue.update(|r| {
            r.job_cancel = Some(job_cancel.clone());
            r.job_count = 1;
            r.steps = models.len();
        });
        if cancel.load(Ordering::SeqCst) {
            return Err(ApiError::cancelled());
        }
        self.send(Job::Reconstruct(ReconstructJob { id, image: spec.image.clone(), size: spec.size, models, heatmap_gain: 8.0, cancel: job_cancel }));
        let mut original = None;
        let mut results = Vec::new();
        let mut warnings = Vec::new();
        let end = self.await_end(id, &mut |d, ev| match ev {
            Event::ReconstructInput { job, original: o } if job == id => original = Some(o),
            Event::Reconstructed { job, result } if job == id => {
                results.push(result);
                let done = results.len();
                d.queue.update(|r| r.step = done);
            }
            Event::Warning { job: Some(job), message } if job == id => warnings.push(message),
            _ => {}
        });
        match end {
            JobEnd::Reconstructed => Ok(Reply::Reconstructed { original: original.unwrap_or_else(|| (*spec.image).clone()), results, warnings }),
            other => Err(end_error(other, "reconstructing")),
        }
    }
}

/// A job's end other than its success, as the client's error.
fn end_error(end: JobEnd, doing: &str) -> ApiError {
    match end {
        JobEnd::Cancelled => ApiError::cancelled(),
        JobEnd::Failed(e) => ApiError::new(500, "failed", format!("{doing} failed: {}", e.message)),
        JobEnd::Crashed { reason } => ApiError::new(500, "crashed", format!("the engine crashed while {doing} ({reason}); it has restarted, so the request can be sent again")),
        other => ApiError::new(500, "internal", format!("{doing} ended unexpectedly ({other:?})")),
    }
}

/// A class model's prompt: an ImageNet class id or name; empty means unconditional.
pub fn class_of(prompt: &str, num_classes: usize) -> Result<usize, ApiError> {
    let p = prompt.trim();
    if p.is_empty() {
        return Ok(num_classes);
    }
    if let Ok(id) = p.parse::<usize>() {
        return if id < num_classes {
            Ok(id)
        } else {
            Err(ApiError::invalid(format!("class {id} does not exist: ids go from 0 to {}", num_classes.saturating_sub(1))))
        };
    }
    match crate::labels::search(p, 1).first() {
        Some((id, _)) if (*id as usize) < num_classes => Ok(*id as usize),
        _ => Err(ApiError::invalid(format!("no ImageNet class matches {p:?}: give a class name (\"golden retriever\") or an id from 0 to {}", num_classes.saturating_sub(1)))),
    }
}

/// A1111 sampler names onto what the model offers. Clients send their own default ("Euler a"
/// in webuiapi), so a name the model lacks runs the model's default and says so in the notes
/// rather than failing every request of a client that cannot be configured.
/// Returns the name of the model's sampler to run (`None`: its default).
fn choose_sampler(info: &GeneratorInfo, asked: Option<&str>, notes: &mut Vec<String>) -> Option<String> {
    let asked = asked.map(str::trim).filter(|a| !a.is_empty())?;
    let lower = asked.to_ascii_lowercase();
    // A1111's names for the flow solvers: "Euler …" is Flow Euler, "DPM++ 2M …" Flow DPM-Solver++,
    // "LCM" the consistency sampler's nearest kin.
    let alias = if lower.starts_with("euler") {
        Some("euler")
    } else if lower.starts_with("dpm") || lower.contains("flow dpm") {
        Some("dpm")
    } else if lower.contains("scm") || lower.contains("lcm") {
        Some("scm")
    } else {
        None
    };
    let found = info
        .samplers
        .iter()
        .find(|(n, l)| n.eq_ignore_ascii_case(asked) || l.eq_ignore_ascii_case(asked))
        .or_else(|| alias.and_then(|a| info.samplers.iter().find(|(n, _)| n == a)));
    match found {
        // The default by its own name runs as the default.
        Some((name, _)) => (info.samplers.first().map(|(n, _)| n) != Some(name)).then(|| name.clone()),
        None => {
            if info.samplers.len() > 1 {
                let names: Vec<&str> = info.samplers.iter().map(|(n, _)| n.as_str()).collect();
                notes.push(format!("{} offers the samplers {} ({} by default); {asked:?} was not used", info.name, names.join(", "), names[0]));
            } else {
                notes.push(format!("{} samples with {} only; {asked:?} was not used", info.name, info.sampler));
            }
            None
        }
    }
}

