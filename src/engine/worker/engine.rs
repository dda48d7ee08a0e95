//! The engine proper, generic over the backend: it owns the device and every loaded model,
//! and turns one [`Job`] into its events and its one [`JobEnd`] ([`Engine::handle`] returns
//! the end; the loop in [`super::supervisor`] sends it, or [`JobEnd::Crashed`] when the
//! handler panicked).
//!
//! One generate path for every model family: the loaded model is a
//! [`GenerationModel`](super::generation::GenerationModel); the engine adds what every family
//! shares (the projection fit, live and decoded previews, progress, warnings, the end).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::tensor::{backend::Backend, Tensor};
use image::RgbImage;

use super::api::{self, GenerateFailure};
use super::faults::Faults;
use super::generation::{self, GenerationModel, RunEvent, RunOutput};
use super::projection::{self, Fitter, Projection};
use super::protocol::*;
use super::samples;
use super::{Sink, WorkerConfig};
use crate::model::placed::PlacedAe;
use crate::model::precision::{Precision, PrecisionChoice};
use crate::model::tiling;
use crate::model::{Dcae, DcaeConfig};

struct LoadedGenerator<B: Backend> {
    model: Box<dyn GenerationModel<B>>,
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

pub(super) struct Engine<B: Backend> {
    pub(super) device: B::Device,
    /// `cpu`, `wgpu` or `cuda`.
    pub(super) backend_kind: &'static str,
    pub(super) sink: Sink,
    pub(super) config: WorkerConfig,
    generator: Option<LoadedGenerator<B>>,
    projection: Option<Projection>,
    /// Autoencoders for reconstruction, by weights path, with the order they were last used.
    autoencoders: HashMap<PathBuf, (DcaeConfig, Dcae<B>, u64)>,
    /// What the supervisor reloads after a restart: the model loaded now (none while a load
    /// runs, so a load that crashes does not bring back the model it was replacing).
    loaded: Arc<Mutex<Option<GeneratorSource>>>,
    faults: Arc<Faults>,
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

fn failed(message: impl Into<String>) -> JobEnd {
    JobEnd::Failed(JobError::other(message))
}

impl<B: Backend> Engine<B> {
    pub(super) fn new(device: B::Device, backend_kind: &'static str, sink: Sink, config: WorkerConfig, loaded: Arc<Mutex<Option<GeneratorSource>>>, faults: Arc<Faults>) -> Self {
        Self { device, backend_kind, sink, config, generator: None, projection: None, autoencoders: HashMap::new(), loaded, faults }
    }

    fn status(&self, s: impl Into<String>) {
        self.sink.send(Event::Status(s.into()));
    }

    /// A failure the job survives (see [`Event::Warning`]).
    fn warn(&self, job: Option<JobId>, message: impl Into<String>) {
        self.sink.send(Event::Warning { job, message: message.into() });
    }

    /// Runs `job` to its end. Every path returns exactly one [`JobEnd`]; the caller sends it.
    pub(super) fn handle(&mut self, job: Job) -> JobEnd {
        if !matches!(job, Job::LoadGenerator { .. }) {
            self.faults.check_job(&job);
        }
        // Weights read for the job (a load, SANA's text encoder on first use) stop at a cancel.
        let cancel = job.cancel().cloned();
        crate::weights::cancel::scope(cancel.as_ref(), || self.run_job(job))
    }

    fn run_job(&mut self, job: Job) -> JobEnd {
        let end = match job {
            Job::LoadGenerator { id, source, cancel } => self.load_generator(id, source, &cancel),
            Job::Generate(g) => self.generate(g),
            Job::Reconstruct(r) => self.reconstruct(r),
            Job::UnloadAutoencoders { .. } => {
                self.autoencoders.clear();
                JobEnd::Done
            }
            Job::ClearProjections { .. } => self.clear_projections(),
        };
        self.status("");
        end
    }

    fn load_generator(&mut self, id: JobId, files: GeneratorSource, cancel: &CancelToken) -> JobEnd {
        if let Some(g) = self.generator.as_ref().filter(|g| g.files == files) {
            return JobEnd::Loaded { info: g.model.info().clone(), secs: 0.0 };
        }
        self.status(format!("Loading {}…", files.name()));
        // Free the old model first: two UViT-H checkpoints need not fit at once. From here on
        // nothing is loaded, also for the supervisor, should this load crash.
        self.generator = None;
        self.projection = None;
        // Reconstruction's autoencoders go too: one of them may be the old model's own, and
        // the new model may need the memory.
        self.autoencoders.clear();
        self.set_loaded(None);
        self.faults.check_job(&Job::LoadGenerator { id, source: files.clone(), cancel: cancel.clone() });
        let t0 = Instant::now();
        let loaded = generation::load::<B>(&files, &self.device, &self.config);
        // Whatever the load made of a cancel (an error, or a model it finished anyway), nothing
        // of a cancelled load is kept.
        if cancel.load(Ordering::Relaxed) {
            drop(loaded);
            return JobEnd::Cancelled;
        }
        match loaded {
            Ok(model) => {
                let info = model.info().clone();
                self.set_loaded(Some(files.clone()));
                self.generator = Some(LoadedGenerator { model, files });
                // A cached projection is shown at once; fitting waits for the first generation.
                if let Some(p) = self.cached_projection() {
                    self.projection = Some(p.clone());
                    self.sink.send(Event::ProjectionReady { model: self.generator_name(), projection: p, fit_secs: None });
                }
                JobEnd::Loaded { info, secs: t0.elapsed().as_secs_f64() }
            }
            Err(api::LoadFailure { message, kind }) => JobEnd::Failed(JobError { message, kind }),
        }
    }

    fn set_loaded(&self, source: Option<GeneratorSource>) {
        if let Ok(mut l) = self.loaded.lock() {
            *l = source;
        }
    }

    fn clear_projections(&mut self) -> JobEnd {
        self.projection = None;
        match &self.config.cache_dir {
            Some(dir) => {
                let folder = projection::cache_folder(dir);
                match std::fs::remove_dir_all(&folder) {
                    Ok(()) => JobEnd::Done,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => JobEnd::Done,
                    Err(e) => failed(format!("cannot clear {}: {e}", folder.display())),
                }
            }
            None => JobEnd::Done,
        }
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
        if self.faults.take_preview_failure() {
            return Err("the projection fit failed (injected by a test)".into());
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
        let scaling_factor = g.model.info().scaling_factor;
        let t0 = Instant::now();
        let (ae, cfg) = g.model.autoencoder()?;
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
            PlacedAe::Here(ae) => fit_projection(ae, &cfg, scaling_factor, side, mirrored, &mut on_crop, &self.device)?,
            PlacedAe::Cpu(ae) => fit_projection(ae, &cfg, scaling_factor, side, mirrored, &mut on_crop, &Default::default())?,
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

    /// The one generate path: whatever the family, the same phases, previews, progress and end.
    fn generate(&mut self, job: GenerateJob) -> JobEnd {
        let id = job.id;
        if self.generator.is_none() {
            return failed("no generation model is loaded — see the Models tab");
        }
        if job.conditioning.batch() == 0 || job.steps == 0 {
            return failed("nothing to generate (batch size or steps is 0)");
        }
        if job.preview_latents {
            if let Err(e) = self.ensure_projection(&job.cancel) {
                if job.cancel.load(Ordering::Relaxed) {
                    return JobEnd::Cancelled;
                }
                // Previews are a convenience: say why they are missing and go on.
                self.warn(Some(id), format!("step previews are off for this run: {e}"));
            }
        }
        if job.cancel.load(Ordering::Relaxed) {
            return JobEnd::Cancelled;
        }
        let sink = self.sink.clone();
        let Some(LoadedGenerator { model, files }) = &mut self.generator else { return failed("no generation model is loaded") };
        // The decoder for the full-decode previews: a handle on the model's own weights.
        let preview_ae = match job.decode_every {
            0 => None,
            _ => match model.autoencoder() {
                Ok(ae) => Some(ae),
                Err(e) => {
                    sink.send(Event::Warning { job: Some(id), message: format!("decoded previews are off for this run: {e}") });
                    None
                }
            },
        };
        sink.send(Event::Status(format!("Generating with {}…", files.name())));
        let scaling = model.info().scaling_factor;
        let start = Instant::now();
        let mut sampling = 0.0f64;
        let mut last = Instant::now();
        let mut callback_err: Option<String> = None;
        let mut decode_batch = 0usize;
        let mut on_event = |e: RunEvent<B>| match e {
            RunEvent::Phase { label, done, total } => {
                sink.send(Event::Status(label.clone()));
                sink.send(Event::Phase { job: id, label, done, total });
                // Steps are timed from the end of the phase before them.
                last = Instant::now();
            }
            RunEvent::Step { step, total, x0 } => {
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
                if let Some((ae, pcfg)) = preview_ae.as_ref().filter(|_| step % job.decode_every == 0 && step < total) {
                    let t = Instant::now();
                    decode_batch = decode_batch.max(1);
                    match generation::decode_images(ae, pcfg, scaling, x0, &mut |_, _| {}) {
                        Ok(images) => sink.send(Event::PreviewDecoded { job: id, step, images, secs: t.elapsed().as_secs_f64() }),
                        Err(e) => callback_err = Some(e),
                    }
                }
                sink.send(Event::Progress { job: id, step, total, sec_per_step: sampling / step as f64, elapsed: start.elapsed().as_secs_f64() });
                last = Instant::now();
            }
        };
        let result = model.run(&job, &mut on_event);
        if let Some(e) = callback_err {
            sink.send(Event::Warning { job: Some(id), message: format!("a step preview failed: {e}") });
        }
        match result {
            Ok(RunOutput { images, nfe, network_calls, sampler, decode_secs, decode_batch: run_batch, warnings }) => {
                for w in warnings {
                    sink.send(Event::Warning { job: Some(id), message: w });
                }
                JobEnd::Generated(Generated {
                    images,
                    nfe,
                    network_calls,
                    sampling_secs: start.elapsed().as_secs_f64() - decode_secs,
                    decode_secs,
                    sampler,
                    decode_batch: run_batch.map(|b| b.max(decode_batch)),
                })
            }
            Err(GenerateFailure::Cancelled) => JobEnd::Cancelled,
            // A cancel that stopped a load inside the run (SANA's text encoder on first use)
            // surfaces as that load's error: it is still the user's cancel.
            Err(GenerateFailure::Failed(_)) if job.cancel.load(Ordering::Relaxed) => JobEnd::Cancelled,
            Err(GenerateFailure::Failed(e)) => failed(format!("generation failed: {e}")),
        }
    }

    fn autoencoder(&mut self, files: &ModelFilesRef) -> Result<(), String> {
        let tick = self.autoencoders.values().map(|v| v.2).max().unwrap_or(0) + 1;
        if let Some(entry) = self.autoencoders.get_mut(&files.weights) {
            entry.2 = tick;
            return Ok(());
        }
        // The generator's own autoencoder shares its tensors: no second copy of the weights.
        let (mut cfg, ae) = match self.generators_autoencoder(files) {
            Some(shared) => shared,
            None => {
                while self.autoencoders.len() >= MAX_AUTOENCODERS {
                    let oldest = self.autoencoders.iter().min_by_key(|(_, v)| v.2).map(|(k, _)| k.clone());
                    match oldest {
                        Some(k) => self.autoencoders.remove(&k),
                        None => break,
                    };
                }
                self.status(format!("Loading {}…", files.name));
                let (cfg, ae) = api::load_autoencoder::<B>(&files.name, &files.config, &files.weights, &self.device)?;
                // f16 on a GPU that has it (half the memory of a full-size photo's activations).
                (cfg, ae.with_precision(PrecisionChoice::Auto.resolve::<B>(&self.device).unwrap_or(Precision::F32)))
            }
        };
        if cfg.name.is_empty() {
            cfg.name = files.name.clone();
        }
        self.autoencoders.insert(files.weights.clone(), (cfg, ae, tick));
        Ok(())
    }

    /// The loaded generator's own autoencoder when `files` names it (Reconstruct's "its
    /// autoencoder"), instead of loading the same weights a second time. `None` for another
    /// model, or when the generator's runs on the CPU beside a GPU run (another backend).
    fn generators_autoencoder(&mut self, files: &ModelFilesRef) -> Option<(DcaeConfig, Dcae<B>)> {
        let g = self.generator.as_mut()?;
        let same = match &g.files {
            GeneratorSource::Class(f) => f.weights == files.weights,
            GeneratorSource::Text { root, .. } => files.weights.starts_with(root.join("vae")),
        };
        if !same {
            return None;
        }
        match g.model.autoencoder().ok()? {
            (PlacedAe::Here(ae), cfg) => Some((cfg, ae)),
            (PlacedAe::Cpu(_), _) => None,
        }
    }

    fn reconstruct(&mut self, job: ReconstructJob) -> JobEnd {
        let id = job.id;
        // The configs first (cheap), so the image is cropped once for the largest factor and
        // every model is compared on the same pixels.
        let mut factor = 1usize;
        for m in &job.models {
            match api::autoencoder_config(&m.config, &m.name) {
                Ok(cfg) => factor = factor.max(cfg.factor()),
                Err(e) => return failed(format!("{}: {e}", m.name)),
            }
        }
        let original = match api::prepare((*job.image).clone(), factor, job.size) {
            Ok(img) => img,
            Err(e) => return failed(format!("cannot prepare the image: {e}")),
        };
        self.sink.send(Event::ReconstructInput { job: id, original: original.clone() });
        let (data, shape) = match api::to_nchw(std::slice::from_ref(&original)) {
            Ok(v) => v,
            Err(e) => return failed(e),
        };
        let mut failures: Vec<String> = Vec::new();
        let mut done = 0usize;
        // One upload for every model of the job.
        let x = crate::model::host::upload::<B, 4>(data, shape, &self.device);
        for m in &job.models {
            if job.cancel.load(Ordering::Relaxed) {
                return JobEnd::Cancelled;
            }
            match self.reconstruct_with(m, &x, &original, &job) {
                Ok(Some(result)) => {
                    self.sink.send(Event::Reconstructed { job: id, result });
                    done += 1;
                }
                Ok(None) => return JobEnd::Cancelled,
                // One model failing is a warning: the others still run.
                Err(e) => {
                    let msg = format!("{}: {e}", m.name);
                    self.warn(Some(id), msg.clone());
                    failures.push(msg);
                }
            }
        }
        match failures.first() {
            // Nothing came out: the job failed (each model's reason was a warning already).
            Some(first) if done == 0 => failed(if failures.len() == 1 { first.clone() } else { format!("no model could reconstruct the image ({first}; …)") }),
            _ => JobEnd::Reconstructed,
        }
    }

    /// One model's reconstruction of the prepared image `x` (`original` as pixels): `None`
    /// when the job was cancelled.
    fn reconstruct_with(&mut self, m: &ModelFilesRef, x: &Tensor<B, 4>, original: &RgbImage, job: &ReconstructJob) -> Result<Option<ReconResult>, String> {
        self.autoencoder(m)?;
        let Some((cfg, ae, _)) = self.autoencoders.get(&m.weights) else { return Err("the autoencoder was not kept".into()) };
        self.status(format!("Reconstructing with {}…", m.name));
        let [_, _, ih, iw] = x.dims();
        // A full-size photo goes through in tiles when an untiled run would not fit; the
        // status line counts them, and Cancel stops between two.
        let budget = crate::engine::memory::autoencoder_budget_on::<B>(&self.device);
        let (sink, cancel, name) = (&self.sink, &job.cancel, &m.name);
        let report = |what: &str, done: usize, total: usize| {
            if total > 1 {
                sink.send(Event::Status(format!("Reconstructing with {name}: {what} tile {}/{total}…", (done + 1).min(total))));
            }
            !cancel.load(Ordering::Relaxed)
        };
        let reruns_before = ae.f32_reruns();
        let t0 = Instant::now();
        let encode_fit = budget.map(|b| tiling::fit_checked(cfg, b.weight_bytes(ae), tiling::Stage::Encode, b.bytes, b.cap(ae), [1, ih, iw], "this device"));
        let z = match encode_fit {
            // Refused before any work: even the smallest tile would be over the device's
            // largest tensor.
            Some(Err(e)) => Err(tiling::TileConfigError::TooLarge(e)),
            Some(Ok(tiling::Fit::Tiled(t))) => tiling::tiled_encode(ae, cfg.factor(), x.clone(), &t, &mut |d, n| report("encoding", d, n)),
            _ => Ok(Some(ae.encode(x.clone()))),
        };
        let Some(z) = z.map_err(|e| e.to_string())? else { return Ok(None) };
        let _ = B::sync(&self.device);
        let encode_secs = t0.elapsed().as_secs_f64();
        let [_, c, h, w]: [usize; 4] = z.dims();
        let t1 = Instant::now();
        let Some(y) = tiling::decode_within(ae, cfg, z, budget, &mut |d, n| report("decoding", d, n)).map_err(|e| e.to_string())? else { return Ok(None) };
        let ydims: [usize; 4] = y.dims();
        let y = tensor_to_vec(y);
        let decode_secs = t1.elapsed().as_secs_f64();
        let reruns = ae.f32_reruns() - reruns_before;
        if reruns > 0 {
            self.sink.send(Event::Status(format!("{}: {reruns} call(s) overflowed f16 and were run again in f32", m.name)));
        }
        let recon = y.and_then(|d| images_from_nchw(&d, ydims))?.into_iter().next().ok_or("the decoder returned no image")?;
        let psnr = api::psnr(original, &recon).map_err(|e| format!("metrics failed: {e}"))?;
        let ssim = api::ssim(original, &recon).map_err(|e| format!("metrics failed: {e}"))?;
        let heatmap = api::diff_heatmap(original, &recon, job.heatmap_gain).map_err(|e| format!("metrics failed: {e}"))?;
        let compression = (3 * ih * iw) as f64 / (c * h * w).max(1) as f64;
        Ok(Some(ReconResult { model: m.name.clone(), recon, heatmap, latent_shape: [c, h, w], compression, encode_secs, decode_secs, psnr, ssim }))
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

