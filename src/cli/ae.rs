//! `dcae encode`, `decode` and `reconstruct`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use burn::tensor::{backend::Backend, Tensor};

use super::tiling::{self as tile, Stage, TileOpts};
use super::{model_files, prepare_output, Common};
use crate::model::host::{read_back, upload};
use crate::engine::{run_on, BackendInfo, BackendTask};
use crate::imaging::{self, ImageLimits};
use crate::model::precision::{Precision, PrecisionChoice};
use crate::model::{Dcae, DcaeConfig};
use crate::weights::tensor_file::{read_nchw, write_f32};

/// Image options shared by the commands that read pictures.
#[derive(Debug, Clone, clap::Args)]
pub struct ImageOpts {
    /// Centre-crop size (the authors' DMCrop: box-halve while large, bicubic resize of the short
    /// side, centre crop). Images whose sides are multiples of the compression factor are used
    /// as they are when this is not given.
    #[arg(long)]
    pub size: Option<u32>,
    /// Refuse images with more pixels than this (decoding a huge file could exhaust memory).
    #[arg(long, default_value_t = 100_000_000)]
    pub max_pixels: u64,
}

impl ImageOpts {
    fn limits(&self) -> ImageLimits {
        ImageLimits { max_pixels: self.max_pixels, ..ImageLimits::default() }
    }
}

/// The autoencoder's compute precision.
#[derive(Debug, Clone, clap::Args)]
pub struct PrecisionOpts {
    /// auto: f16 on a GPU backend whose device has it (norms and attention stay f32; a call
    /// that overflows f16 runs again in f32), else f32.
    #[arg(long, value_enum, default_value_t = PrecisionChoice::Auto)]
    pub precision: PrecisionChoice,
}

#[derive(Debug, clap::Args)]
pub struct EncodeArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub tiling: TileOpts,
    #[command(flatten)]
    pub precision: PrecisionOpts,
    #[command(flatten)]
    pub image: ImageOpts,
    /// Images to encode (same size after preparation; they are encoded as one batch).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Output safetensors file; tensor `latent` [B, C, H/f, W/f], f32, raw encoder output.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct DecodeArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub tiling: TileOpts,
    #[command(flatten)]
    pub precision: PrecisionOpts,
    /// safetensors file with tensor `latent` [B, C, h, w].
    pub latents: PathBuf,
    /// The latent is multiplied by the scaling factor (as diffusion models produce it, e.g.
    /// `dcae generate --latent-out`): divide before decoding.
    #[arg(long)]
    pub scaled: bool,
    /// Folder for the PNGs (00000.png, 00001.png, …).
    #[arg(long)]
    pub out_dir: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct ReconstructArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub tiling: TileOpts,
    #[command(flatten)]
    pub precision: PrecisionOpts,
    #[command(flatten)]
    pub image: ImageOpts,
    pub input: PathBuf,
    /// Reconstructed image (PNG).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Original and reconstruction side by side (PNG).
    #[arg(long)]
    pub side_by_side: Option<PathBuf>,
    /// The latent (tensor `latent`, raw).
    #[arg(long)]
    pub latent_out: Option<PathBuf>,
    /// The decoder's raw output (tensor `recon`, no clamp).
    #[arg(long)]
    pub recon_out: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}


/// Runs one model stage and reads its output back: the output, its values and the seconds. The
/// read-back is inside the timing because GPU backends only finish the work when the result is
/// read.
fn timed_stage<B: Backend>(
    stage: impl FnOnce() -> anyhow::Result<Tensor<B, 4>>,
) -> anyhow::Result<(Tensor<B, 4>, Vec<f32>, f64)> {
    let t = Instant::now();
    let out = stage()?;
    let values = read_back(out.clone())?;
    Ok((out, values, t.elapsed().as_secs_f64()))
}

/// Loads the model named by `common.model` on this backend, in the precision asked for (said
/// on stderr when it is not f32).
fn load<B: Backend>(model: &str, precision: PrecisionChoice, device: &B::Device) -> anyhow::Result<(DcaeConfig, Dcae<B>)> {
    let precision = precision.resolve::<B>(device).map_err(anyhow::Error::msg)?;
    let files = model_files(model)?;
    // Named by the repo id (or the folder), not by the folder config.json sits in, which for a
    // model from the hub is a snapshot's commit hash. A published `model_name` keeps its name.
    let cfg = crate::model::load::dcae_config_from_json(&crate::model::load::read_json(&files.config)?, &files.display_name())?;
    let ckpt = crate::weights::Checkpoint::open(&files.weights)?;
    let model = crate::model::load::load_dcae::<B>(&ckpt, &cfg, device)?.with_precision(precision);
    if precision != Precision::F32 {
        eprintln!("precision: {} (norms and attention in f32)", precision.name());
    }
    Ok((cfg, model))
}

/// Says on stderr how many calls overflowed f16 and were run again in f32.
fn report_reruns<B: Backend>(model: &Dcae<B>) {
    let n = model.f32_reruns();
    if n > 0 {
        eprintln!("note: {n} call(s) overflowed f16 (NaN or infinity) and were run again in f32; --precision f32 avoids the retries");
    }
}

fn non_finite(v: &[f32]) -> usize {
    v.iter().filter(|x| !x.is_finite()).count()
}

pub fn encode(args: EncodeArgs) -> anyhow::Result<()> {
    run_on(args.common.backend, Encode(args))?
}

struct Encode(EncodeArgs);

impl BackendTask for Encode {
    type Output = anyhow::Result<()>;
    fn run<B: Backend>(self, device: B::Device, info: BackendInfo) -> Self::Output {
        let a = self.0;
        super::report_backend(&info);
        let budget = tile::budget::<B>(&info, &device)?;
        let (cfg, model) = load::<B>(&a.common.model, a.precision.precision, &device)?;
        let mut images = Vec::new();
        for p in &a.images {
            let img = imaging::load_rgb(p, &a.image.limits())?;
            images.push(imaging::prepare(img, cfg.factor(), a.image.size).with_context(|| p.display().to_string())?);
        }
        let (data, shape) = imaging::to_nchw(&images)?;
        let t = tile::choose(&a.tiling, &cfg, &model, &budget, Stage::Encode, [shape[0], shape[2], shape[3]])?;
        let x = upload::<B, 4>(data, shape, &device);
        let (latent, values, secs) = timed_stage(|| tile::encode(&model, cfg.factor(), x, t.as_ref()))?;
        let lshape = latent.dims();
        eprintln!("encoded {} image(s) {:?} → latent {:?} in {secs:.3} s", images.len(), shape, lshape);
        report_reruns(&model);
        prepare_output(&a.out)?;
        let names: Vec<_> = a.images.iter().map(|p| p.display().to_string()).collect();
        write_f32(
            &a.out,
            &[("latent", &values, &lshape)],
            &[("model", cfg.name.clone()), ("scaling_factor", cfg.scaling_factor.to_string()), ("images", names.join("\n"))],
        )?;
        Ok(())
    }
}

pub fn decode(args: DecodeArgs) -> anyhow::Result<()> {
    run_on(args.common.backend, Decode(args))?
}

struct Decode(DecodeArgs);

impl BackendTask for Decode {
    type Output = anyhow::Result<()>;
    fn run<B: Backend>(self, device: B::Device, info: BackendInfo) -> Self::Output {
        let a = self.0;
        super::report_backend(&info);
        let budget = tile::budget::<B>(&info, &device)?;
        let (cfg, model) = load::<B>(&a.common.model, a.precision.precision, &device)?;
        let latent = read_nchw(&a.latents, "latent")?;
        let [b, c, h, w] = latent.shape;
        if c != cfg.latent_channels {
            bail!("{} holds a latent with {c} channels; {} expects {}", a.latents.display(), cfg.name, cfg.latent_channels);
        }
        let mut z = upload::<B, 4>(latent.data, latent.shape, &device);
        if a.scaled {
            z = z / cfg.scaling_factor;
        }
        let (ho, wo) = (h * cfg.factor(), w * cfg.factor());
        let t = tile::choose(&a.tiling, &cfg, &model, &budget, Stage::Decode, [b, ho, wo])?;
        let (_, img, secs) = timed_stage(|| tile::decode(&model, cfg.factor(), z, t.as_ref()))?;
        eprintln!("decoded {b} latent(s) → {b}×3×{ho}×{wo} in {secs:.3} s");
        report_reruns(&model);
        if non_finite(&img) > 0 {
            eprintln!("warning: the decoder produced {} non-finite values (shown as black)", non_finite(&img));
        }
        std::fs::create_dir_all(&a.out_dir).with_context(|| format!("cannot create {}", a.out_dir.display()))?;
        let per = 3 * ho * wo;
        for i in 0..b {
            let rgb = imaging::to_rgb8(&img[i * per..(i + 1) * per], ho, wo)?;
            let path = a.out_dir.join(format!("{i:05}.png"));
            rgb.save(&path).with_context(|| format!("cannot write {}", path.display()))?;
            println!("{}", path.display());
        }
        Ok(())
    }
}

pub fn reconstruct(args: ReconstructArgs) -> anyhow::Result<()> {
    run_on(args.common.backend, Reconstruct(args))?
}

struct Reconstruct(ReconstructArgs);

impl BackendTask for Reconstruct {
    type Output = anyhow::Result<()>;
    fn run<B: Backend>(self, device: B::Device, info: BackendInfo) -> Self::Output {
        let a = self.0;
        let budget = tile::budget::<B>(&info, &device)?;
        let t_load = Instant::now();
        let (cfg, model) = load::<B>(&a.common.model, a.precision.precision, &device)?;
        let load_s = t_load.elapsed().as_secs_f64();

        let img = imaging::load_rgb(&a.input, &a.image.limits())?;
        let img = imaging::prepare(img, cfg.factor(), a.image.size).with_context(|| a.input.display().to_string())?;
        let (data, shape) = imaging::to_nchw(std::slice::from_ref(&img))?;
        let x = upload::<B, 4>(data, shape, &device);

        let [_, _, h, w] = shape;
        let t_enc = tile::choose(&a.tiling, &cfg, &model, &budget, Stage::Encode, [1, h, w])?;
        let t_dec = tile::choose(&a.tiling, &cfg, &model, &budget, Stage::Decode, [1, h, w])?;
        let (latent, latent_v, encode_s) = timed_stage(|| tile::encode(&model, cfg.factor(), x, t_enc.as_ref()))?;
        let lshape = latent.dims();
        let (_, recon_v, decode_s) = timed_stage(|| tile::decode(&model, cfg.factor(), latent, t_dec.as_ref()))?;
        report_reruns(&model);
        if non_finite(&latent_v) + non_finite(&recon_v) > 0 {
            bail!("the model produced non-finite values (NaN/inf): the weights or the input are broken");
        }

        let recon = imaging::to_rgb8(&recon_v, h, w)?;
        let psnr = imaging::psnr(&img, &recon)?;
        let ssim = imaging::ssim(&img, &recon)?;
        let latent_values = lshape.iter().product::<usize>();
        let ratio = (3 * h * w) as f64 / latent_values as f64;

        if let Some(p) = &a.out {
            prepare_output(p)?;
            recon.save(p).with_context(|| format!("cannot write {}", p.display()))?;
        }
        if let Some(p) = &a.side_by_side {
            prepare_output(p)?;
            imaging::side_by_side(&[&img, &recon], 8).save(p).with_context(|| format!("cannot write {}", p.display()))?;
        }
        if let Some(p) = &a.latent_out {
            prepare_output(p)?;
            write_f32(p, &[("latent", &latent_v, &lshape)], &[("model", cfg.name.clone())])?;
        }
        if let Some(p) = &a.recon_out {
            prepare_output(p)?;
            write_f32(p, &[("recon", &recon_v, &shape)], &[("model", cfg.name.clone())])?;
        }
        if a.json {
            let v = serde_json::json!({
                "model": cfg.name, "backend": info, "image": [h, w], "latent_shape": lshape,
                "compression_ratio": ratio, "psnr": psnr, "ssim": ssim,
                "load_s": load_s, "encode_s": encode_s, "decode_s": decode_s,
                "precision": model.precision().name(), "f32_reruns": model.f32_reruns(),
            });
            println!("{v}");
        } else {
            println!("model:        {}", cfg.name);
            println!("backend:      {info}");
            for s in &info.skipped {
                println!("  skipped     {s}");
            }
            println!("precision:    {}", model.precision().name());
            println!("image:        {h}×{w}");
            println!("latent:       {lshape:?} (compression {ratio:.1}× in values)");
            println!("PSNR:         {psnr:.3} dB");
            println!("SSIM:         {ssim:.4}");
            println!("time:         load {load_s:.3} s, encode {encode_s:.3} s, decode {decode_s:.3} s");
        }
        Ok(())
    }
}
