//! The one protocol between the UI (or any other front end) and the engine thread: the jobs it
//! sends and the events that come back.
//!
//! The contract, which the engine keeps by construction ([`super::engine`]'s job handler
//! returns a [`JobEnd`] and the loop around it sends it; the supervisor sends
//! [`JobEnd::Crashed`] for a job that panicked and [`JobEnd::Failed`] for jobs it can no longer
//! run): **every job carries an id and ends with exactly one [`Event::Ended`]**. Events before
//! the end (progress, previews, per-model results of a reconstruction, warnings) carry the same
//! id. A front end can therefore keep a table of jobs in flight that never leaks.
//!
//! Contact points: [`super::Worker`] sends jobs and reads events; `ui::Shared` keeps the table;
//! the engine adapters of the model families ([`super::generation::GenerationModel`]) see only
//! [`GenerateJob`].

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use image::RgbImage;

use super::api::{FailureKind, GeneratorInfo};
use super::projection::Projection;
use crate::model::sana::adapter::TextRequest;
use crate::engine::backend::{BackendChoice, BackendInfo};

/// A job's id: unique for the life of a [`super::Worker`] ([`super::Worker::next_id`]).
pub type JobId = u64;

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

/// What conditions a generation: a type, so a class model never receives a prompt by accident
/// of a field left empty (the adapter refuses the other kind with a typed failure).
#[derive(Debug, Clone, PartialEq)]
pub enum Conditioning {
    /// One class id per image of the batch; `num_classes` means unconditional.
    Classes(Vec<usize>),
    /// A prompt, its negative, size and batch (text-to-image models).
    Prompt(TextRequest),
}

impl Conditioning {
    /// Images the run makes.
    pub fn batch(&self) -> usize {
        match self {
            Conditioning::Classes(l) => l.len(),
            Conditioning::Prompt(t) => t.batch,
        }
    }

    pub fn takes_prompt(&self) -> bool {
        matches!(self, Conditioning::Prompt(_))
    }
}

#[derive(Debug, Clone)]
pub struct GenerateJob {
    pub id: JobId,
    pub conditioning: Conditioning,
    /// Image-to-image: start from this picture instead of pure noise.
    pub init: Option<InitImage>,
    pub cfg_scale: f32,
    pub steps: usize,
    pub seed: u64,
    /// The sampler, one of [`GeneratorInfo::samplers`]; `None`: the model's default.
    pub sampler: Option<String>,
    /// The preview plan: send every step's x0 estimate (as raw latents) for the projected
    /// preview…
    pub preview_latents: bool,
    /// …and decode x0 with the full DC-AE every `decode_every` steps (0 = never).
    pub decode_every: usize,
    pub cancel: CancelToken,
}

impl GenerateJob {
    /// The settings its pictures carry in their PNGs, made with `info` by `sampler` (a label)
    /// from the picture named `source` (image-to-image). The unconditional class is written as
    /// [`super::api::UNCONDITIONAL`] whatever the model's own null id.
    pub fn image_params(&self, info: &GeneratorInfo, sampler: String, source: &str) -> super::api::ImageParams {
        use super::api::{GenerationParams, ImageParams, Img2Img, PromptParams, UNCONDITIONAL};
        let img2img = self.init.as_ref().map(|i| Img2Img { source: source.to_string(), strength: i.strength });
        match &self.conditioning {
            Conditioning::Prompt(t) => ImageParams::Text(PromptParams {
                prompts: vec![t.prompt.clone(); t.batch.max(1)],
                negative_prompt: t.negative_prompt.clone(),
                steps: self.steps,
                sampler,
                guidance: self.cfg_scale,
                seed: self.seed,
                width: t.width,
                height: t.height,
                model: info.name.clone(),
                instruction: t.instruction,
                img2img,
            }),
            Conditioning::Classes(ids) => ImageParams::Class(GenerationParams {
                classes: ids.iter().map(|&c| if c >= info.num_classes { UNCONDITIONAL } else { c as u32 }).collect(),
                guidance: self.cfg_scale,
                steps: self.steps,
                seed: self.seed,
                model: info.name.clone(),
                sampler,
                batch: ids.len(),
                img2img,
            }),
        }
    }
}

/// The source of an image-to-image run (SDEdit): encoded with the model's own DC-AE, noised to
/// `strength` on the model's schedule, then denoised with the job's class or prompt.
#[derive(Debug, Clone)]
pub struct InitImage {
    pub image: Arc<RgbImage>,
    /// In (0, 1]: 1 keeps nothing of the source's content, small values little of the prompt's.
    pub strength: f32,
}

#[derive(Debug, Clone)]
pub struct ReconstructJob {
    pub id: JobId,
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
    /// Cancelled between two tensors ([`crate::weights::cancel`]): it ends `Cancelled` with
    /// nothing loaded (the model it replaces was freed before it began).
    LoadGenerator { id: JobId, source: GeneratorSource, cancel: CancelToken },
    Generate(GenerateJob),
    Reconstruct(ReconstructJob),
    /// Drop every loaded autoencoder (the generator stays).
    UnloadAutoencoders { id: JobId },
    /// Forget the fitted preview projection and delete the cached ones: the next generation
    /// with live previews fits it again.
    ClearProjections { id: JobId },
}

impl Job {
    pub fn id(&self) -> JobId {
        match self {
            Job::LoadGenerator { id, .. } | Job::UnloadAutoencoders { id } | Job::ClearProjections { id } => *id,
            Job::Generate(g) => g.id,
            Job::Reconstruct(r) => r.id,
        }
    }

    /// The flag that cancels it, for the jobs that can be.
    pub fn cancel(&self) -> Option<&CancelToken> {
        match self {
            Job::LoadGenerator { cancel, .. } => Some(cancel),
            Job::Generate(g) => Some(&g.cancel),
            Job::Reconstruct(r) => Some(&r.cancel),
            Job::UnloadAutoencoders { .. } | Job::ClearProjections { .. } => None,
        }
    }

    /// What the job does, for messages ("internal error while …").
    pub fn doing(&self) -> &'static str {
        match self {
            Job::LoadGenerator { .. } => "loading the generation model",
            Job::Generate(_) => "generating",
            Job::Reconstruct(_) => "reconstructing",
            Job::UnloadAutoencoders { .. } => "unloading models",
            Job::ClearProjections { .. } => "clearing the preview projections",
        }
    }

    /// Whether the job runs anything on the device (its success counts for the restart policy).
    pub fn uses_device(&self) -> bool {
        matches!(self, Job::LoadGenerator { .. } | Job::Generate(_) | Job::Reconstruct(_))
    }
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

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Generated {
    pub images: Vec<RgbImage>,
    /// Solver steps (guided predictions) and network calls (twice as many under batched
    /// guidance, more for an adaptive solver).
    pub nfe: usize,
    pub network_calls: usize,
    pub sampling_secs: f64,
    pub decode_secs: f64,
    /// What ran, as saved in PNGs.
    pub sampler: String,
    /// The largest batch one decode was given (1: image by image, which keeps a batch of 16
    /// at 512² within 8 GB).
    pub decode_batch: Option<usize>,
}

/// Why a job failed: the message for people, the kind for the UI's offer (a damaged file can
/// be downloaded again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError {
    pub message: String,
    pub kind: FailureKind,
}

impl JobError {
    pub fn other(message: impl Into<String>) -> Self {
        Self { message: message.into(), kind: FailureKind::Other }
    }
}

/// How a job ended: the one terminal event's payload.
#[derive(Debug, Clone)]
pub enum JobEnd {
    /// [`Job::LoadGenerator`]: the model is loaded (or was already).
    Loaded { info: GeneratorInfo, secs: f64 },
    Generated(Generated),
    /// [`Job::Reconstruct`]: every model's result (or warning) has been sent.
    Reconstructed,
    /// Jobs without a result ([`Job::UnloadAutoencoders`], [`Job::ClearProjections`]).
    Done,
    Cancelled,
    Failed(JobError),
    /// The job panicked; the supervisor restarts the engine (the message says so).
    Crashed { reason: String },
}

#[derive(Debug, Clone)]
pub enum Event {
    BackendReady(BackendInfo),
    /// The requested backend could not start; the engine continues on the CPU.
    BackendFallback { requested: BackendChoice, reason: String },
    /// What the engine is doing right now (loading, fitting…); empty when idle.
    Status(String),
    /// A job the engine queued on its own: the reload of the model that was loaded, after a
    /// restart or a backend switch. It ends like any job.
    Reloading { job: JobId, source: GeneratorSource, cancel: CancelToken },
    /// The preview projection of the loaded generator (fitted now or read from the cache).
    ProjectionReady { model: String, projection: Projection, fit_secs: Option<f64> },
    Progress { job: JobId, step: usize, total: usize, sec_per_step: f64, elapsed: f64 },
    /// A phase outside the sampling steps (text encoding, decoding), with its own progress.
    Phase { job: JobId, label: String, done: usize, total: usize },
    PreviewLatent { job: JobId, step: usize, total: usize, latents: LatentBatch },
    PreviewDecoded { job: JobId, step: usize, images: Vec<RgbImage>, secs: f64 },
    /// The prepared (cropped) original every reconstruction of the job is compared against.
    ReconstructInput { job: JobId, original: RgbImage },
    Reconstructed { job: JobId, result: ReconResult },
    /// The job's one terminal event.
    Ended { job: JobId, end: JobEnd },
    DownloadProgress { repo: String, file: String, bytes_done: u64, bytes_total: u64 },
    DownloadFinished { repo: String, result: Result<(), String>, cancelled: bool },
    /// Something failed that concerns no job (a job's failure is its [`JobEnd::Failed`]).
    Error { message: String },
    /// Something went wrong that the job survives (a step preview, the projection cache, one
    /// model of a reconstruction): the UI says so and the run goes on, so its result is not
    /// lost.
    Warning { job: Option<JobId>, message: String },
    /// An engine thread ended (app closing, or replaced by [`super::Worker::restart`]);
    /// everything it held is freed.
    EngineStopped,
    /// The engine recovered from a panic; the model that was loaded is being reloaded.
    Restarted { reason: String },
    /// Device memory held by the backend's allocator (GPU backends only): in use, reserved.
    DeviceMemory { in_use: u64, reserved: u64 },
}

impl Event {
    /// The job the event belongs to, if any.
    pub fn job(&self) -> Option<JobId> {
        match self {
            Event::Progress { job, .. }
            | Event::Phase { job, .. }
            | Event::PreviewLatent { job, .. }
            | Event::PreviewDecoded { job, .. }
            | Event::ReconstructInput { job, .. }
            | Event::Reconstructed { job, .. }
            | Event::Ended { job, .. } => Some(*job),
            Event::Warning { job, .. } => *job,
            _ => None,
        }
    }
}
