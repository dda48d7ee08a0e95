//! `--tile auto|off|N` for `dcae encode`, `decode` and `reconstruct`: whether to run the
//! autoencoder in tiles, chosen from a memory estimate of the untiled run and a budget.

use std::io::Write;

use anyhow::Context;
use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};

use crate::engine::BackendInfo;
use crate::model::tiling::{self, TileConfig};
use crate::model::{Dcae, DcaeConfig};

/// Overrides the memory budget (MiB) that `--tile auto` compares the estimate with.
pub use crate::engine::memory::BUDGET_ENV;

/// What `--tile` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TileMode {
    /// Tile when the untiled run's estimated peak memory exceeds the budget.
    Auto,
    Off,
    /// Always tile, with tiles of this many pixels.
    Px(usize),
}

fn parse_mode(s: &str) -> Result<TileMode, String> {
    match s {
        "auto" => Ok(TileMode::Auto),
        "off" => Ok(TileMode::Off),
        n => n
            .parse::<usize>()
            .map(TileMode::Px)
            .map_err(|_| format!("`{n}` is not auto, off or a tile size in pixels (e.g. 1024)")),
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct TileOpts {
    /// Run the autoencoder in overlapping tiles with blended seams: `auto` (when the estimated
    /// memory of an untiled run exceeds half the available RAM, or DCAE_MEMORY_BUDGET_MB),
    /// `off`, or a tile size in pixels (a multiple of the model's factor).
    #[arg(long, default_value = "auto", value_parser = parse_mode)]
    pub tile: TileMode,
    /// Distance between tile starts in pixels (default: the tile less a quarter overlap;
    /// diffusers' `enable_tiling` defaults are `--tile 512 --tile-stride 448`).
    #[arg(long)]
    pub tile_stride: Option<usize>,
}

const MIB: f64 = (1u64 << 20) as f64;

fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (MIB * 1024.0))
}

/// The memory a run may use, where that figure came from, and how the weights are held.
pub struct Budget {
    pub bytes: u64,
    pub source: String,
    /// The CPU kernels keep a rearranged copy of every convolution's weights beside burn's
    /// (tap-major, and Winograd-transformed for large 3×3 inputs), made on first use: resident
    /// weights are about twice the checkpoint's f32 size there (measured with f32c32-in: 3883
    /// MiB peak for an untiled 1024² encode + decode, against 2 × 1234 MiB of weights plus the
    /// 1024 MiB of activations that the estimate gives).
    pub weight_copies: u64,
    /// The device's largest single tensor (its name for messages).
    pub max_tensor: Option<u64>,
    pub device: String,
}

/// The memory budget: `DCAE_MEMORY_BUDGET_MB`, else half of the device's free memory where the
/// driver tells it, else half of the available RAM; and the device's largest tensor.
pub fn budget<B: Backend>(info: &BackendInfo, device: &B::Device) -> anyhow::Result<Budget> {
    let (b, mut source) = crate::engine::memory::autoencoder_budget(info.kind).map_err(anyhow::Error::msg)?;
    let mut bytes = b.bytes;
    if info.kind != "cpu" && source != crate::engine::memory::BUDGET_ENV {
        if let Some(free) = crate::engine::backend::device_memory_available::<B>(device) {
            bytes = free / 2;
            source = format!("half of the device's memory {}", gib(free));
        }
    }
    let max_tensor = crate::model::limits::max_tensor_bytes::<B>(device);
    Ok(Budget { bytes, source, weight_copies: b.weight_copies, max_tensor, device: info.name.clone() })
}


pub use crate::model::tiling::Stage;

/// Decides tiling for one stage on a `batch × h × w` image (image pixels) and says why on
/// stderr. `Ok(None)`: run untiled.
pub fn choose<B: Backend>(
    opts: &TileOpts,
    cfg: &DcaeConfig,
    model: &Dcae<B>,
    budget: &Budget,
    stage: Stage,
    [batch, h, w]: [usize; 3],
) -> anyhow::Result<Option<TileConfig>> {
    let f = cfg.factor();
    let what = if stage == Stage::Encode { "encode" } else { "decode" };
    let weights = 4 * model.num_params() as u64 * budget.weight_copies;
    let estimate = |hh: usize, ww: usize| tiling::stage_bytes(cfg, weights, stage, batch, hh, ww);
    let tiles_of = |t: &TileConfig| match stage {
        Stage::Encode => t.encode_tiles(h, w),
        Stage::Decode => t.decode_tiles(h / f, w / f, f),
    };
    let with_stride = |t: TileConfig| TileConfig { stride: opts.tile_stride.unwrap_or(t.stride), ..t };
    let untiled = estimate(h, w);
    let cap = budget.max_tensor.map(|bytes| tiling::TensorCap { bytes, precision: model.precision() });
    // The device's largest tensor is a hard limit, unlike the budget (an estimate): a run whose
    // largest tensor would be over it stops here, before any work, saying what to change.
    let largest = |n: usize, hh: usize, ww: usize| (tiling::largest_tensor_per_pixel(cfg, stage, model.precision()) * (n * hh * ww) as f64) as u64;
    let check = |n: usize, hh: usize, ww: usize, advice: &str| -> anyhow::Result<()> {
        Ok(tiling::check_cap(cfg, stage, cap, [batch, h, w], [n, hh, ww], &budget.device, advice)?)
    };
    let (source, device) = (&budget.source, &budget.device);
    let budget = &budget.bytes;
    let t = match opts.tile {
        TileMode::Off => {
            check(batch, h, w, "leave tiling on (--tile auto), or use --backend cpu")?;
            eprintln!("{what}: untiled (--tile off; estimated peak {})", gib(untiled));
            return Ok(None);
        }
        TileMode::Px(n) => {
            let t = with_stride(TileConfig::with_tile(n, f));
            t.validate(f).with_context(|| format!("--tile {n}"))?;
            check(batch, t.tile.min(h), t.tile.min(w), "use smaller tiles (--tile auto chooses them), or --backend cpu")?;
            eprintln!("{what}: {} px tiles, stride {} px, {} tile(s) (--tile {n})", t.tile, t.stride, tiles_of(&t));
            t
        }
        TileMode::Auto if tiling::fits(cfg, weights, stage, *budget, cap, [batch, h, w]) => {
            eprintln!("{what}: untiled (estimated peak {} within the budget {} = {source})", gib(untiled), gib(*budget));
            return Ok(None);
        }
        TileMode::Auto => {
            let t = tiling::tiles_within(cfg, weights, stage, *budget, cap, [batch, h, w], opts.tile_stride);
            check(batch, t.tile.min(h), t.tile.min(w), "this adapter is too small for this autoencoder: use --backend cpu")?;
            if let Some(c) = cap.filter(|c| largest(batch, h, w) > c.bytes) {
                eprintln!(
                    "{what}: the untiled largest tensor ({}) is over {device}'s largest tensor ({}): tiled for the largest tensor",
                    crate::model::limits::human(largest(batch, h, w)),
                    crate::model::limits::human(c.bytes)
                );
            }
            t.validate(f).context("--tile-stride")?;
            let per_tile = estimate(t.tile.min(h), t.tile.min(w));
            let why = if untiled > *budget {
                format!("estimated peak {} untiled > budget {} = {source}", gib(untiled), gib(*budget))
            } else {
                format!("within the budget {} = {source}, but over the largest tensor", gib(*budget))
            };
            eprintln!("{what}: {} px tiles, stride {} px, {} tile(s): {why} (about {} per tile)", t.tile, t.stride, tiles_of(&t), gib(per_tile));
            t
        }
    };
    Ok(Some(t))
}

/// A progress line on stderr, `what: tile k/n`; never cancels.
fn progress_line(what: &'static str) -> impl FnMut(usize, usize) -> bool {
    move |done, total| {
        if total > 1 {
            eprint!("\r{what}: tile {done}/{total}");
            if done == total {
                eprintln!();
            }
            let _ = std::io::stderr().flush();
        }
        true
    }
}

/// `model.encode(x)`, tiled when `t` says so.
pub fn encode<B: Backend>(model: &Dcae<B>, f: usize, x: Tensor<B, 4>, t: Option<&TileConfig>) -> anyhow::Result<Tensor<B, 4>> {
    match t {
        None => Ok(model.encode(x)),
        Some(t) => tiling::tiled_encode(model, f, x, t, &mut progress_line("encode"))?
            .context("tiled encode was cancelled"),
    }
}

/// `model.decode(z)`, tiled when `t` says so.
pub fn decode<B: Backend>(model: &Dcae<B>, f: usize, z: Tensor<B, 4>, t: Option<&TileConfig>) -> anyhow::Result<Tensor<B, 4>> {
    match t {
        None => Ok(model.decode(z)),
        Some(t) => tiling::tiled_decode(model, f, z, t, &mut progress_line("decode"))?
            .context("tiled decode was cancelled"),
    }
}
