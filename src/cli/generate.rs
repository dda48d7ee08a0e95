//! `dcae generate`: class-conditional image generation with a DC-AE diffusion model, and the
//! `bench --task generate` measurement.
//!
//! `--model` goes through the CLI's hub resolver ([`super::model_files`]: a local folder, or a
//! repo id fetched into the Hugging Face cache); `--class` takes ids or ImageNet names.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use burn::tensor::{backend::Backend, Tensor, TensorData};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use serde::Serialize;

use crate::engine::backend::{run_on, BackendChoice, BackendInfo, BackendTask};
use crate::model::diffusion::{sample_uvit, seeded_noise, DiffusionConfig, DiffusionModel, GenerateRequest, StepUpdate};
use crate::model::uvit::Uvit;
use crate::weights::load::read_json;
use crate::weights::{Checkpoint, RandomWeights};

/// `dcae generate`
#[derive(clap::Args, Debug, Clone)]
pub struct GenerateArgs {
    /// A local folder (config.json + model.safetensors) or a Hugging Face repo id of a DC-AE
    /// diffusion model (e.g. mit-han-lab/dc-ae-f64c128-in-1.0-uvit-h-in-512px-train2000k).
    #[arg(long, short)]
    pub model: String,
    /// Class to draw: an ImageNet id (0–999; the model's null id gives an unconditional
    /// sample). Repeat for several images.
    #[arg(long = "class", required = true, value_name = "ID")]
    pub classes: Vec<String>,
    /// Classifier-free guidance scale (1 = no guidance, one network pass per step).
    #[arg(long, default_value_t = 6.0)]
    pub cfg: f32,
    /// Network evaluations of the solver [default: the model's, 30 for the published ones].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Seed of the initial noise (ignored with --noise).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Initial noise: a safetensors file with an f32 tensor `noise` [B, C, H, W].
    #[arg(long, value_name = "FILE")]
    pub noise: Option<PathBuf>,
    /// Also write the sampled latent (before dividing by the scaling factor) as tensor
    /// `latent` [B, C, H, W] to this safetensors file.
    #[arg(long, value_name = "FILE")]
    pub latent_out: Option<PathBuf>,
    /// Output PNG: the images tiled in a grid.
    #[arg(long, default_value = "grid.png", value_name = "FILE")]
    pub out: PathBuf,
    /// Write every step's x0 prediction, decoded, as PNG into this folder (one decode per
    /// step: slow with large autoencoders).
    #[arg(long, value_name = "DIR")]
    pub save_steps: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
}

/// A `--class` value as a class id: a number (checked against the model's class count later,
/// so small test models work too), or an ImageNet name or synonym ("golden retriever",
/// "unconditional"); unknown or ambiguous names list the close matches.
pub fn class_id(s: &str) -> anyhow::Result<usize> {
    if let Ok(id) = s.trim().parse::<usize>() {
        return Ok(id);
    }
    crate::labels::lookup(s).map(|id| id as usize).map_err(|e| anyhow!("--class {s:?}: {e}"))
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let labels = args.classes.iter().map(|c| class_id(c)).collect::<anyhow::Result<Vec<_>>>()?;
    let files = super::model_files(&args.model)?;
    let backend = args.backend;
    run_on(backend, GenerateTask { args, files, labels })?
}

struct GenerateTask {
    args: GenerateArgs,
    files: crate::weights::hub::ModelFiles,
    labels: Vec<usize>,
}

impl BackendTask for GenerateTask {
    type Output = anyhow::Result<()>;

    fn run<B: Backend>(self, device: B::Device, info: BackendInfo) -> anyhow::Result<()> {
        let Self { args, files, labels } = self;
        eprintln!("backend: {info}");
        let name = Path::new(&args.model).file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or(args.model.clone());
        let config = DiffusionConfig::from_json(&read_json(&files.config)?, &name)?;
        if let Some(&bad) = labels.iter().find(|&&l| l > config.uvit.null_class()) {
            bail!(
                "--class {bad}: this model has classes 0..={} (and {} for an unconditional sample)",
                config.uvit.num_classes - 1,
                config.uvit.null_class()
            );
        }
        let steps = args.steps.unwrap_or(config.sampler.steps);
        let noise = match &args.noise {
            Some(path) => Some(read_tensor_f32::<B>(path, "noise", &device)?),
            None => None,
        };

        let t0 = Instant::now();
        let ckpt = Checkpoint::open(&files.weights)?;
        let model = DiffusionModel::<B>::load_checkpoint(&ckpt, config, &device)?;
        drop(ckpt);
        eprintln!("loaded {} in {:.1}s", model.config.name, t0.elapsed().as_secs_f64());

        let req = GenerateRequest { labels: labels.clone(), cfg_scale: args.cfg, steps, seed: args.seed, noise };
        let cancel = AtomicBool::new(false);
        let mut step_error: Option<anyhow::Error> = None;
        let t0 = Instant::now();
        let mut on_step = |u: StepUpdate<B>| {
            progress_bar(u.step, u.total, t0.elapsed().as_secs_f64());
            if let Some(dir) = &args.save_steps {
                let path = dir.join(format!("step_{:03}_of_{:03}.png", u.step, u.total));
                let params = format!("preview: x0 prediction after step {} of {} (t = {:.4})", u.step, u.total, u.t);
                let result = std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))
                    .and_then(|_| save_grid(&model.decode_latent(u.x0), &path, &params));
                if let Err(e) = result {
                    step_error.get_or_insert(e);
                    cancel.store(true, Ordering::Relaxed);
                }
            }
        };
        let result = model.generate(&req, &mut on_step, &cancel);
        eprintln!();
        if let Some(e) = step_error {
            return Err(e.context("writing --save-steps previews"));
        }
        let out = result?;
        eprintln!(
            "sampled {} latent(s) in {:.1}s ({} network passes)",
            labels.len(),
            t0.elapsed().as_secs_f64(),
            out.network_calls
        );

        if let Some(path) = &args.latent_out {
            write_tensor_f32(path, "latent", out.latent.clone())?;
            eprintln!("wrote {}", path.display());
        }
        let image = model.decode_latent(out.latent);
        // The same `parameters` text the app writes, so the app can reopen CLI results.
        let mut params = crate::imaging::GenerationParams {
            classes: labels.iter().map(|&l| l as u32).collect(),
            guidance: args.cfg,
            steps,
            seed: args.seed,
            model: model.config.name.clone(),
            sampler: model.config.sampler.describe(),
            batch: labels.len(),
        }
        .to_parameters_text();
        if let Some(p) = &args.noise {
            params.push_str(&format!(", Noise: {}", p.display()));
        }
        save_grid(&image, &args.out, &params)?;
        eprintln!("wrote {}", args.out.display());
        Ok(())
    }
}

/// A one-line progress bar on stderr, redrawn in place.
fn progress_bar(step: usize, total: usize, elapsed_s: f64) {
    const WIDTH: usize = 30;
    let filled = (step * WIDTH).checked_div(total).unwrap_or(WIDTH);
    let eta = if step > 0 { elapsed_s / step as f64 * (total - step) as f64 } else { 0.0 };
    let mut err = std::io::stderr();
    let _ = write!(
        err,
        "\r[{}{}] step {step}/{total}  {elapsed_s:.1}s elapsed, ~{eta:.1}s left ",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled)
    );
    let _ = err.flush();
}

/// Images `[B, 3, H, W]` in about [−1, 1] → one RGB grid PNG (`ceil(√B)` columns) with a
/// `parameters` text chunk. Quantised like the reference evaluator:
/// `clamp(127.5·x + 128, 0, 255)` truncated to u8.
pub fn save_grid<B: Backend>(images: &Tensor<B, 4>, path: &Path, parameters: &str) -> anyhow::Result<()> {
    let [b, c, h, w] = images.dims();
    if c != 3 {
        bail!("expected RGB images, got {c} channels");
    }
    let values = images.to_data().convert::<f32>().to_vec::<f32>().map_err(|e| anyhow!("reading the image back: {e:?}"))?;
    let cols = (1..=b).find(|c| c * c >= b).unwrap_or(1);
    let rows = b.div_ceil(cols);
    let (gw, gh) = (cols * w, rows * h);
    let mut rgb = vec![0u8; gw * gh * 3];
    for (i, img) in values.chunks_exact(3 * h * w).enumerate() {
        let (ox, oy) = ((i % cols) * w, (i / cols) * h);
        for y in 0..h {
            for x in 0..w {
                for ch in 0..3 {
                    let v = img[ch * h * w + y * w + x];
                    rgb[((oy + y) * gw + ox + x) * 3 + ch] = (127.5f32 * v + 128.0).clamp(0.0, 255.0) as u8;
                }
            }
        }
    }
    write_png(path, gw as u32, gh as u32, &rgb, parameters)
}

/// Writes 8-bit RGB pixels as a PNG with the run's settings in a `parameters` text chunk
/// (tEXt when the text is ASCII, else iTXt).
pub fn write_png(path: &Path, width: u32, height: u32, rgb: &[u8], parameters: &str) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut enc = png::Encoder::new(BufWriter::new(file), width, height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    if parameters.is_ascii() {
        enc.add_text_chunk("parameters".into(), parameters.into())?;
    } else {
        enc.add_itxt_chunk("parameters".into(), parameters.into())?;
    }
    let mut writer = enc.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(())
}

/// Reads the f32 4-D tensor `name` from a safetensors file.
pub fn read_tensor_f32<B: Backend>(path: &Path, name: &str, device: &B::Device) -> anyhow::Result<Tensor<B, 4>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| anyhow!("{} is not a valid safetensors file: {e}", path.display()))?;
    let view = st.tensor(name).map_err(|_| {
        let names: Vec<String> = st.names().into_iter().map(|n| n.to_string()).collect();
        anyhow!("{} has no tensor `{name}` (it has {names:?})", path.display())
    })?;
    if view.dtype() != Dtype::F32 {
        bail!("{}: tensor `{name}` is {:?}; expected F32", path.display(), view.dtype());
    }
    let shape: [usize; 4] = view
        .shape()
        .try_into()
        .map_err(|_| anyhow!("{}: tensor `{name}` has shape {:?}; expected [batch, channels, height, width]", path.display(), view.shape()))?;
    let values: Vec<f32> = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Ok(Tensor::from_data(TensorData::new(values, shape), device))
}

/// Writes `tensor` as f32 under `name` to a new safetensors file.
pub fn write_tensor_f32<B: Backend>(path: &Path, name: &str, tensor: Tensor<B, 4>) -> anyhow::Result<()> {
    let shape = tensor.dims().to_vec();
    let values = tensor.into_data().convert::<f32>().to_vec::<f32>().map_err(|e| anyhow!("reading the tensor back: {e:?}"))?;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = TensorView::new(Dtype::F32, shape, &bytes)?;
    safetensors::serialize_to_file([(name, view)], None, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Settings of `dcae bench --task generate`.
#[derive(Debug, Clone)]
pub struct GenerateBenchOptions {
    /// A registered UViT model name (random weights: nothing is downloaded).
    pub model: String,
    /// Image resolution; the latent is `resolution / factor` on a side.
    pub resolution: usize,
    pub steps: usize,
    pub batch: usize,
    pub cfg_scale: f32,
    /// Timed single forward passes (after one untimed warm-up).
    pub forward_runs: usize,
    /// Timed full sampling runs.
    pub generate_runs: usize,
    pub backend: BackendChoice,
}

impl GenerateBenchOptions {
    pub fn new(model: &str, resolution: usize, steps: usize) -> Self {
        Self {
            model: model.to_string(),
            resolution,
            steps,
            batch: 1,
            cfg_scale: 6.0,
            forward_runs: 5,
            generate_runs: 1,
            backend: BackendChoice::Auto,
        }
    }
}

/// Wall-clock times of repeated runs.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub median_s: f64,
    pub runs: usize,
    pub all_s: Vec<f64>,
}

impl Timing {
    fn of(mut all_s: Vec<f64>) -> Self {
        let runs = all_s.len();
        let mut sorted = all_s.clone();
        sorted.sort_by(f64::total_cmp);
        let median_s = match runs {
            0 => f64::NAN,
            n if n % 2 == 1 => sorted[n / 2],
            n => 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]),
        };
        all_s.shrink_to_fit();
        Self { median_s, runs, all_s }
    }
}

/// What `bench --task generate` measured. The integrator prints it as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct GenerateBench {
    pub model: String,
    pub backend: String,
    pub resolution: usize,
    /// `[batch, C, S, S]`.
    pub latent_shape: [usize; 4],
    pub steps: usize,
    pub cfg_scale: f32,
    /// One UViT forward pass at the batch size.
    pub forward: Timing,
    /// A full `steps`-step sampling run with guidance (no decode).
    pub generate: Timing,
    /// UViT passes per sampling run.
    pub network_calls: usize,
    /// Seconds to build the random-weight UViT.
    pub build_s: f64,
}

/// Times one UViT forward and a full guided sampling run of a registered model with random
/// weights, on the backend `opts.backend` picks (see [`bench_generate_on`]).
pub fn bench_generate(opts: &GenerateBenchOptions) -> anyhow::Result<GenerateBench> {
    run_on(opts.backend, BenchTask(opts.clone()))?
}

struct BenchTask(GenerateBenchOptions);

impl BackendTask for BenchTask {
    type Output = anyhow::Result<GenerateBench>;

    fn run<B: Backend>(self, device: B::Device, info: BackendInfo) -> anyhow::Result<GenerateBench> {
        let mut bench = bench_generate_on::<B>(&self.0, &device)?;
        bench.backend = info.to_string();
        Ok(bench)
    }
}

/// [`bench_generate`] on a backend already chosen (for callers inside their own
/// `BackendTask`). The autoencoder is not built: decoding is the AE benchmark's business.
/// One untimed forward pass warms up kernels first; either count in `opts` may be 0.
pub fn bench_generate_on<B: Backend>(opts: &GenerateBenchOptions, device: &B::Device) -> anyhow::Result<GenerateBench> {
    if opts.steps == 0 || opts.batch == 0 {
        bail!("steps and batch must be at least 1");
    }
    let config = DiffusionConfig::registered_at(&opts.model, Some(opts.resolution))?;
    let t0 = Instant::now();
    let uvit = Uvit::<B>::load(&mut RandomWeights::<B>::new(device), &config.uvit);
    let build_s = t0.elapsed().as_secs_f64();
    let shape = config.uvit.latent_shape(opts.batch);
    let labels: Vec<usize> = (0..opts.batch).map(|i| (i * 97) % config.uvit.num_classes).collect();

    let x = seeded_noise::<B>(shape, 0, device);
    let t = Tensor::<B, 1>::from_data(TensorData::new(vec![500.0f32; opts.batch], [opts.batch]), device);
    let y = Tensor::from_data(TensorData::new(labels.iter().map(|&l| l as i64).collect::<Vec<_>>(), [opts.batch]), device);
    let forward_once = || {
        let start = Instant::now();
        let eps = uvit.forward(x.clone(), t.clone(), y.clone());
        let _ = eps.into_data(); // waits for the device
        start.elapsed().as_secs_f64()
    };
    forward_once(); // warm-up: kernel compilation / autotune
    let forward = Timing::of((0..opts.forward_runs).map(|_| forward_once()).collect());

    let req = GenerateRequest::<B> { labels, cfg_scale: opts.cfg_scale, steps: opts.steps, seed: 0, noise: None };
    let cancel = AtomicBool::new(false);
    let mut network_calls = 0;
    let mut times = Vec::new();
    for _ in 0..opts.generate_runs {
        let start = Instant::now();
        let out = sample_uvit(&uvit, &config.sampler, &req, &mut |_| {}, &cancel)?;
        network_calls = out.network_calls;
        let _ = out.latent.into_data();
        times.push(start.elapsed().as_secs_f64());
    }
    Ok(GenerateBench {
        model: config.name,
        backend: B::name(device),
        resolution: opts.resolution,
        latent_shape: shape,
        steps: opts.steps,
        cfg_scale: opts.cfg_scale,
        forward,
        generate: Timing::of(times),
        network_calls,
        build_s,
    })
}
