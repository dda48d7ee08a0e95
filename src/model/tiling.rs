//! Tiled encode and decode for every DC-AE: the image (or latent) is cut into overlapping tiles
//! that run through the model one at a time, and the seams are blended linearly, so that peak
//! memory follows the tile size instead of the image size.
//!
//! The algorithm is diffusers' `AutoencoderDC.tiled_encode` / `tiled_decode`, step for step, so
//! that with the tile size and stride given to its `enable_tiling` the result is the same:
//! - tiles start every `stride` pixels (latent: `stride / f`) from 0 while the start is inside
//!   the input, and are `tile` pixels long or whatever is left, so the last tiles of a row or
//!   column are ragged and may lie wholly inside their neighbour;
//! - an image tile whose sides are not multiples of the factor is zero-padded at the bottom and
//!   right;
//! - in raster order, each tile's output has its first rows blended with the last rows of the
//!   (already blended) tile above, then its first columns with the last columns of the (already
//!   blended) tile to the left, over `min(overlap, both lengths)` rows/columns with weights
//!   `y / extent` for the new tile;
//! - each tile then contributes its first `stride` rows and columns (output units); encode crops
//!   the assembled latent to `⌊H/f⌋ × ⌊W/f⌋`;
//! - an input no larger than one tile is run untiled, as diffusers' `encode` / `decode` do.
//!
//! Only the strips that later tiles blend with are kept between tiles (the bottom rows of the
//! row above, the right columns of the tile to the left), not the tiles themselves.

use burn::tensor::{backend::Backend, Tensor, TensorData};

use super::config::{BlockType, DcaeConfig, Downsample, Upsample};
use super::dcae::Dcae;
use super::precision::Precision;

/// Tile size and stride in image pixels (the latent's are these divided by the factor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileConfig {
    /// Side of a square tile, px.
    pub tile: usize,
    /// Distance between the starts of neighbouring tiles, px; `tile − stride` is the overlap.
    pub stride: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TileConfigError {
    #[error("tile size and stride must be positive (got tile {tile} px, stride {stride} px)")]
    Zero { tile: usize, stride: usize },
    #[error("the tile stride ({stride} px) is larger than the tile ({tile} px): parts of the image would never be seen; use a stride at most the tile size")]
    StrideLargerThanTile { tile: usize, stride: usize },
    /// Even the smallest tile (or the image itself) would be a tensor over the device's largest.
    #[error("{0}")]
    TooLarge(super::limits::TooLarge),
    #[error("tile size {tile} px and stride {stride} px must both be multiples of the model's compression factor {factor} (e.g. tile {} px, stride {} px)", tile.div_ceil((*factor).max(1)).max(2) * factor, (stride / (*factor).max(1)).clamp(1, tile.div_ceil((*factor).max(1)).max(2) - 1) * factor)]
    NotMultipleOfFactor { tile: usize, stride: usize, factor: usize },
}

impl TileConfig {
    /// diffusers' `AutoencoderDC` defaults (`tile_sample_min_* = 512`, `tile_sample_stride_* = 448`).
    /// Valid for f32 and f64 only: 448 is not a multiple of 128, and diffusers itself then
    /// assembles latent tiles of 384 px strides with image crops of 448 (a wrong picture), which
    /// [`TileConfig::validate`] refuses.
    pub fn diffusers_default() -> Self {
        Self { tile: 512, stride: 448 }
    }

    /// Our default: 1024 px tiles overlapping by 256 px.
    ///
    /// Why larger than diffusers': a 64 px overlap leaves visible seams on flat regions (skies)
    /// at 4K, because the decoder's receptive field is far wider than 64 px: counting its 3×3
    /// convs (two per ResBlock, the GLUMBConv depthwise, the 5×5 aggregation) at each stage's
    /// resolution gives a radius near 490 px for f32c32 (most of it from the EfficientViT stages
    /// at 1/32–1/8, whose linear attention sees the whole tile anyway). The effective receptive
    /// field — where a pixel's influence is not negligible — is a fraction of that, and a pixel
    /// kept from a tile is at least the overlap away from the tile's far edge, so 256 px of
    /// overlap covers it while a 1024² tile keeps the decoder's activations near 1 GiB in f32
    /// for f32c32 (see [`activation_bytes_per_pixel`]). Both are multiples of every published
    /// factor (32, 64, 128); for a larger factor the sizes are rounded up to multiples of it.
    pub fn for_model(factor: usize) -> Self {
        let f = factor.max(1);
        let round = |px: usize| px.div_ceil(f) * f;
        let tile = round(1024);
        let overlap = round(256);
        Self { tile, stride: tile.saturating_sub(overlap).max(f) }
    }

    /// A tile of `tile` px with the overlap our default uses (a quarter of the tile, in whole
    /// latent pixels, at least one), for `--tile N`.
    pub fn with_tile(tile: usize, factor: usize) -> Self {
        let f = factor.max(1);
        let overlap = ((tile / 4) / f).max(1) * f;
        Self { tile, stride: tile.saturating_sub(overlap).max(f) }
    }

    pub fn validate(&self, factor: usize) -> Result<(), TileConfigError> {
        let (tile, stride) = (self.tile, self.stride);
        if tile == 0 || stride == 0 {
            return Err(TileConfigError::Zero { tile, stride });
        }
        if stride > tile {
            return Err(TileConfigError::StrideLargerThanTile { tile, stride });
        }
        if factor == 0 || tile % factor != 0 || stride % factor != 0 {
            return Err(TileConfigError::NotMultipleOfFactor { tile, stride, factor });
        }
        Ok(())
    }

    /// How many tiles an input of `h × w` (in the tiled domain's pixels, with tile `t` and
    /// stride `s` in the same units) makes.
    fn count(h: usize, w: usize, t: usize, s: usize) -> usize {
        if h <= t && w <= t {
            1
        } else {
            h.div_ceil(s) * w.div_ceil(s)
        }
    }

    /// Tiles an image of `h × w` px makes when encoded.
    pub fn encode_tiles(&self, h: usize, w: usize) -> usize {
        Self::count(h, w, self.tile, self.stride.max(1))
    }

    /// Tiles a latent of `h × w` makes when decoded.
    pub fn decode_tiles(&self, h: usize, w: usize, factor: usize) -> usize {
        let f = factor.max(1);
        Self::count(h, w, self.tile / f, (self.stride / f).max(1))
    }
}

/// Encodes `x` `[B, 3, H, W]` tile by tile (see the module docs). `progress(done, total)` is
/// called before the first tile and after each one; when it returns false the run stops there
/// and the result is `Ok(None)`. Any `H × W` is accepted: edge tiles are zero-padded to the
/// factor and the latent is `⌊H/f⌋ × ⌊W/f⌋`.
pub fn tiled_encode<B: Backend>(
    ae: &Dcae<B>,
    factor: usize,
    x: Tensor<B, 4>,
    t: &TileConfig,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Option<Tensor<B, 4>>, TileConfigError> {
    t.validate(factor)?;
    let [_, _, h, w] = x.dims();
    let f = factor;
    let plan = Plan { tile: t.tile, stride: t.stride, out_stride: t.stride / f, blend: (t.tile - t.stride) / f, pad_to: f };
    let Some(z) = plan.run(x, &|tile| ae.encode(tile), progress) else { return Ok(None) };
    let [_, _, zh, zw] = z.dims();
    let (lh, lw) = ((h / f).min(zh), (w / f).min(zw));
    Ok(Some(z.narrow(2, 0, lh).narrow(3, 0, lw)))
}

/// Decodes `z` `[B, c, h, w]` tile by tile (see the module docs and [`tiled_encode`]); the image
/// is `[B, 3, h·f, w·f]`.
pub fn tiled_decode<B: Backend>(
    ae: &Dcae<B>,
    factor: usize,
    z: Tensor<B, 4>,
    t: &TileConfig,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Option<Tensor<B, 4>>, TileConfigError> {
    t.validate(factor)?;
    let f = factor;
    let plan = Plan { tile: t.tile / f, stride: t.stride / f, out_stride: t.stride, blend: t.tile - t.stride, pad_to: 1 };
    Ok(plan.run(z, &|tile| ae.decode(tile), progress))
}

/// One tiled pass: tile and stride in input units, stride and overlap in output units.
struct Plan {
    tile: usize,
    stride: usize,
    out_stride: usize,
    blend: usize,
    /// Input tiles are zero-padded to multiples of this (the encoder's factor; 1 for decode).
    pad_to: usize,
}

impl Plan {
    fn run<B: Backend>(
        &self,
        x: Tensor<B, 4>,
        model: &dyn Fn(Tensor<B, 4>) -> Tensor<B, 4>,
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Option<Tensor<B, 4>> {
        let [_, _, h, w] = x.dims();
        if h <= self.tile && w <= self.tile {
            // As diffusers' encode/decode: an input that fits one tile is not tiled.
            if !progress(0, 1) {
                return None;
            }
            let out = model(self.pad(x));
            return progress(1, 1).then_some(out);
        }
        let starts = |n: usize| (0..n).step_by(self.stride).collect::<Vec<_>>();
        let (rows, cols) = (starts(h), starts(w));
        let total = rows.len() * cols.len();
        if !progress(0, total) {
            return None;
        }
        // The last rows of each blended tile of the previous tile row, per column.
        let mut above: Vec<Option<Tensor<B, 4>>> = vec![None; cols.len()];
        let mut out_rows = Vec::with_capacity(rows.len());
        let mut done = 0;
        for &i in &rows {
            // The last columns of the blended tile to the left.
            let mut left: Option<Tensor<B, 4>> = None;
            let mut parts = Vec::with_capacity(cols.len());
            for (c, &j) in cols.iter().enumerate() {
                let tile = x.clone().narrow(2, i, self.tile.min(h - i)).narrow(3, j, self.tile.min(w - j));
                let mut y = model(self.pad(tile));
                if let Some(a) = &above[c] {
                    y = blend(a, y, self.blend, 2);
                }
                if let Some(a) = &left {
                    y = blend(a, y, self.blend, 3);
                }
                let [_, _, oh, ow] = y.dims();
                let (keep_h, keep_w) = (oh.min(self.blend), ow.min(self.blend));
                above[c] = Some(y.clone().narrow(2, oh - keep_h, keep_h));
                left = Some(y.clone().narrow(3, ow - keep_w, keep_w));
                parts.push(y.narrow(2, 0, oh.min(self.out_stride)).narrow(3, 0, ow.min(self.out_stride)));
                done += 1;
                if !progress(done, total) {
                    return None;
                }
            }
            out_rows.push(Tensor::cat(parts, 3));
        }
        Some(Tensor::cat(out_rows, 2))
    }

    /// Zero-pads the bottom and right of `x` to multiples of `pad_to`.
    fn pad<B: Backend>(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, c, h, w] = x.dims();
        let m = self.pad_to.max(1);
        let (ph, pw) = (h.next_multiple_of(m) - h, w.next_multiple_of(m) - w);
        let device = x.device();
        let mut x = x;
        if ph > 0 {
            x = Tensor::cat(vec![x, Tensor::zeros([b, c, ph, w], &device)], 2);
        }
        if pw > 0 {
            x = Tensor::cat(vec![x, Tensor::zeros([b, c, h + ph, pw], &device)], 3);
        }
        x
    }
}

/// diffusers' `blend_v` (dim 2) / `blend_h` (dim 3): over `e = min(len(a), len(b), extent)`
/// rows or columns, `b[y] = a[len(a) − e + y] · (1 − y/e) + b[y] · (y/e)`. `a` may be only the
/// tail of the neighbouring tile (at least `min(extent, its length)` long).
fn blend<B: Backend>(a: &Tensor<B, 4>, b: Tensor<B, 4>, extent: usize, dim: usize) -> Tensor<B, 4> {
    let (la, lb) = (a.dims()[dim], b.dims()[dim]);
    let e = extent.min(la).min(lb);
    if e == 0 {
        return b;
    }
    let device = b.device();
    let mut shape = [1usize; 4];
    shape[dim] = e;
    // Weights in f64 then rounded, as PyTorch multiplies an f32 tensor by a Python float.
    let wb: Vec<f32> = (0..e).map(|y| (y as f64 / e as f64) as f32).collect();
    let wa: Vec<f32> = (0..e).map(|y| (1.0 - y as f64 / e as f64) as f32).collect();
    let mut full = b.dims();
    full[dim] = e;
    let wb = Tensor::<B, 4>::from_data(TensorData::new(wb, shape), &device).expand(full);
    let wa = Tensor::<B, 4>::from_data(TensorData::new(wa, shape), &device).expand(full);
    let head = a.clone().narrow(dim, la - e, e) * wa + b.clone().narrow(dim, 0, e) * wb;
    if lb == e {
        head
    } else {
        Tensor::cat(vec![head, b.narrow(dim, e, lb - e)], dim)
    }
}

/// Peak activation bytes per image pixel (f32) of the encoder and decoder, from the widths.
///
/// At stage `s` (resolution 1/2^s of the image) a tensor of width `c_s` holds `c_s / 4^s`
/// values per image pixel. A stage's peak holds several such tensors at once: a ResBlock about
/// 4 (input, conv1 out, conv2 out, the sum; the fast conv's packed tiles are small), an
/// EfficientViT block about 21 of width `c` from the GLUMBConv (8c expansion, 8c depthwise out,
/// 4c gated) and `6·(1 + scales) + 2` from LiteMLA (3c qkv per branch, their concatenation and
/// the attention out), whichever is larger. In / mix models also run their first or last conv
/// at full resolution with `c_1 / 4` channels (before the pixel-unshuffle, after the pixel-
/// shuffle's conv); that is counted as a stage-0 tensor with 3 alive. The result is the
/// largest of these, times 4 bytes. It is an estimate, not a bound: for f32c32-in it gives
/// 1024 B/px (stage 1 of both: 256 channels at ½ resolution, 4 alive), and an untiled 1024²
/// encode + decode on the CPU measured 3883 MiB peak RSS, against the 3492 MiB it predicts with
/// the CPU kernels' two copies of the 1234 MiB of weights.
pub fn activation_bytes_per_pixel(cfg: &DcaeConfig) -> (f64, f64) {
    fn stages(widths: &[usize], depths: &[usize], blocks: &[BlockType]) -> f64 {
        let mut peak: f64 = 0.0;
        for (s, ((&c, &d), b)) in widths.iter().zip(depths).zip(blocks).enumerate() {
            let per_px = c as f64 / 4f64.powi(s as i32);
            let live = if d == 0 {
                // An empty stage 0 (in / mix): the head's full-resolution conv output.
                if s == 0 { 3.0 * (widths.get(1).copied().unwrap_or(c) as f64 / 4.0) / c as f64 } else { 0.0 }
            } else {
                match b {
                    BlockType::ResBlock => 4.0,
                    BlockType::EfficientVit { scales } => (21.0f64).max(6.0 * (1 + scales.len()) as f64 + 2.0),
                }
            };
            peak = peak.max(live * per_px);
        }
        peak * 4.0
    }
    let e = &cfg.encoder;
    let d = &cfg.decoder;
    (stages(&e.width_list, &e.depth_list, &e.block_type), stages(&d.width_list, &d.depth_list, &d.block_type))
}

/// Estimated peak bytes of one untiled encode of a `batch × h × w` image: weights plus
/// activations (see [`activation_bytes_per_pixel`]).
pub fn encode_bytes(cfg: &DcaeConfig, weight_bytes: u64, batch: usize, h: usize, w: usize) -> u64 {
    weight_bytes + (activation_bytes_per_pixel(cfg).0 * (batch * h * w) as f64) as u64
}

/// Estimated peak bytes of one untiled decode to a `batch × h × w` image (image pixels).
pub fn decode_bytes(cfg: &DcaeConfig, weight_bytes: u64, batch: usize, h: usize, w: usize) -> u64 {
    weight_bytes + (activation_bytes_per_pixel(cfg).1 * (batch * h * w) as f64) as u64
}

/// Which half of the autoencoder a memory decision is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Encode,
    Decode,
}

/// Estimated peak bytes of one untiled `stage` on a `batch × h × w` image (image pixels).
pub fn stage_bytes(cfg: &DcaeConfig, weight_bytes: u64, stage: Stage, batch: usize, h: usize, w: usize) -> u64 {
    match stage {
        Stage::Encode => encode_bytes(cfg, weight_bytes, batch, h, w),
        Stage::Decode => decode_bytes(cfg, weight_bytes, batch, h, w),
    }
}

/// How one stage of a batch runs within a memory budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// The whole batch in one call.
    Batch,
    /// One image at a time, untiled.
    PerImage,
    /// One image at a time, in these tiles.
    Tiled(TileConfig),
}

/// The largest single tensor of one untiled `stage`, in bytes per image pixel (one image), at
/// `precision`: what must stay under the device's largest tensor ([`super::limits`]).
///
/// From the architecture, stage by stage (stage `s` is at 1/2^s of the image, so a tensor of
/// `c` channels there holds `c / 4^s` values per image pixel): a ResBlock's convs give `c`; an
/// EfficientViT block's GLUMBConv expansion `8c`, its LiteMLA `3c` per branch concatenated
/// (`3c·(1 + scales)`); a pixel-shuffle upsample `4c_s` at the stage below (`c_s` per pixel of
/// stage `s`), a nearest ×2 upsample (sana) the *input's* `c_{s+1}` channels already at stage
/// `s`'s resolution; the heads the first / last widths. In f16 the norms and LiteMLA are f32
/// islands, so the figure is the larger of 2 bytes × the largest tensor and 4 bytes × the
/// largest island. SANA's decoder gives 256 values (1024 B f32) per pixel, the in / mix
/// decoders 64 (the figures read off the code in the project's GPU-limits study).
pub fn largest_tensor_per_pixel(cfg: &DcaeConfig, stage: Stage, precision: Precision) -> f64 {
    let (widths, depths, blocks) = match stage {
        Stage::Encode => (&cfg.encoder.width_list, &cfg.encoder.depth_list, &cfg.encoder.block_type),
        Stage::Decode => (&cfg.decoder.width_list, &cfg.decoder.depth_list, &cfg.decoder.block_type),
    };
    let n = widths.len();
    let at = |c: usize, s: usize| c as f64 / 4f64.powi(s as i32);
    // (largest tensor, largest f32 island) in values per image pixel.
    let mut any: f64 = 3.0;
    let mut island: f64 = 0.0;
    for s in 0..n {
        let c = widths[s];
        if depths[s] > 0 {
            match &blocks[s] {
                BlockType::ResBlock => {
                    any = any.max(at(c, s));
                    island = island.max(at(c, s));
                }
                BlockType::EfficientVit { scales } => {
                    let mla = 3.0 * (1 + scales.len()) as f64;
                    any = any.max(at(c, s) * 8.0f64.max(mla));
                    island = island.max(at(c, s) * mla);
                }
            }
        }
        // The resampling between stage s and s + 1 (only where stage s has blocks: in / mix
        // models skip an empty stage 0 and resample in their heads instead).
        if s + 1 < n && depths[s] > 0 {
            let next = widths[s + 1];
            let v = match stage {
                Stage::Encode => match cfg.encoder.downsample {
                    Downsample::ConvPixelUnshuffle => at(next / 4, s).max(at(c, s)),
                    Downsample::StridedConv => at(next, s + 1).max(at(4 * c, s + 1)),
                },
                Stage::Decode => match cfg.decoder.upsample {
                    Upsample::ConvPixelShuffle => at(c, s).max(at(next, s + 1)),
                    Upsample::InterpolateConv => at(next, s).max(at(c, s)),
                },
            };
            any = any.max(v);
        }
    }
    // Heads: in / mix (empty stage 0) run a full-resolution conv of width c_1 / 4 and their
    // norm on c_1 at ½ resolution; sana runs both at full resolution with c_0.
    let head = if depths.first() == Some(&0) { at(widths.get(1).copied().unwrap_or(0), 1) } else { at(widths.first().copied().unwrap_or(0), 0) };
    any = any.max(head);
    island = island.max(head);
    match precision {
        Precision::F32 => 4.0 * any,
        Precision::F16 | Precision::Bf16 => (2.0 * any).max(4.0 * island),
    }
}

/// A device's largest single tensor, for the autoencoder's activations at its precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorCap {
    pub bytes: u64,
    pub precision: Precision,
}

/// Whether one untiled `stage` of `batch × h × w` stays within `budget` bytes in all and, with
/// `cap`, under the largest tensor.
pub fn fits(cfg: &DcaeConfig, weight_bytes: u64, stage: Stage, budget: u64, cap: Option<TensorCap>, [batch, h, w]: [usize; 3]) -> bool {
    stage_bytes(cfg, weight_bytes, stage, batch, h, w) <= budget
        && cap.is_none_or(|c| largest_tensor_per_pixel(cfg, stage, c.precision) * (batch * h * w) as f64 <= c.bytes as f64)
}

/// Our default tile ([`TileConfig::for_model`]) halved while one tile's estimate is still over
/// `budget` or its largest tensor over `cap` (down to 4 latent pixels, below which tiles are
/// mostly seam: [`fit_checked`] says when even that does not fit); `stride` overrides the
/// default overlap.
pub fn tiles_within(cfg: &DcaeConfig, weight_bytes: u64, stage: Stage, budget: u64, cap: Option<TensorCap>, [batch, h, w]: [usize; 3], stride: Option<usize>) -> TileConfig {
    let f = cfg.factor();
    let with_stride = |t: TileConfig| TileConfig { stride: stride.unwrap_or(t.stride), ..t };
    let mut t = with_stride(TileConfig::for_model(f));
    while !fits(cfg, weight_bytes, stage, budget, cap, [batch, t.tile.min(h), t.tile.min(w)]) && t.tile / 2 >= 4 * f {
        t = with_stride(TileConfig::with_tile((t.tile / 2 / f) * f, f));
    }
    t
}

/// The cheapest way to run `stage` on `batch` images of `h × w` within `budget` bytes and under
/// `cap`: the batch at once, else image by image, else tiled.
pub fn fit(cfg: &DcaeConfig, weight_bytes: u64, stage: Stage, budget: u64, cap: Option<TensorCap>, [batch, h, w]: [usize; 3]) -> Fit {
    if fits(cfg, weight_bytes, stage, budget, cap, [batch, h, w]) {
        Fit::Batch
    } else if fits(cfg, weight_bytes, stage, budget, cap, [1, h, w]) {
        Fit::PerImage
    } else {
        Fit::Tiled(tiles_within(cfg, weight_bytes, stage, budget, cap, [1, h, w], None))
    }
}

/// [`fit`], or the reason no way fits under the largest tensor (the smallest tile's tensor is
/// still over `cap`), named for the user. The total budget is an estimate and never refuses a
/// run; the cap is the device's hard limit and does.
pub fn fit_checked(cfg: &DcaeConfig, weight_bytes: u64, stage: Stage, budget: u64, cap: Option<TensorCap>, dims: [usize; 3], device: &str) -> Result<Fit, super::limits::TooLarge> {
    let how = fit(cfg, weight_bytes, stage, budget, cap, dims);
    let [batch, h, w] = dims;
    let run = match how {
        Fit::Batch => dims,
        Fit::PerImage => [1, h, w],
        Fit::Tiled(t) => [1, t.tile.min(h), t.tile.min(w)],
    };
    let advice = "this adapter is too small for this autoencoder: run it on the CPU (Settings → autoencoder device, --vae-device cpu, or --backend cpu)";
    check_cap(cfg, stage, cap, [batch, h, w], run, device, advice)?;
    Ok(how)
}

/// Refuses, before any work, a run of `stage` on a `[batch, h, w]` image (image pixels) that
/// computes `run` = `[n, hh, ww]` at once (the batch, one image or one tile) under the largest
/// tensor `cap`: the whole image stays on the device while its tiles run (f32, 3 channels), so
/// no tile size helps when it alone is over; else the run's largest tensor
/// ([`largest_tensor_per_pixel`]). `advice` says what to change for the latter.
pub fn check_cap(cfg: &DcaeConfig, stage: Stage, cap: Option<TensorCap>, [batch, h, w]: [usize; 3], [n, hh, ww]: [usize; 3], device: &str, advice: &str) -> Result<(), super::limits::TooLarge> {
    let Some(c) = cap else { return Ok(()) };
    let image = (12 * batch * h * w) as u64;
    if image > c.bytes {
        return Err(super::limits::TooLarge {
            device: device.to_string(),
            limit: c.bytes,
            what: format!("the {batch} × {h}×{w} image itself"),
            bytes: image,
            advice: "use a smaller image, or run the autoencoder on the CPU".into(),
        });
    }
    let bytes = (largest_tensor_per_pixel(cfg, stage, c.precision) * (n * hh * ww) as f64) as u64;
    if bytes <= c.bytes {
        return Ok(());
    }
    let what = match stage {
        Stage::Encode => format!("encoding {n} × {hh}×{ww} with {}", cfg.name),
        Stage::Decode => format!("decoding {n} × {hh}×{ww} with {}", cfg.name),
    };
    Err(super::limits::TooLarge { device: device.to_string(), limit: c.bytes, what, bytes, advice: advice.to_string() })
}

/// The memory a run may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub bytes: u64,
    /// Copies of the weights the backend holds: 2 on the CPU, whose kernels keep a rearranged
    /// copy of every convolution's weights beside burn's.
    pub weight_copies: u64,
    /// The device's largest single tensor ([`super::limits::max_tensor_bytes`]), if it has one.
    pub max_tensor: Option<u64>,
}

impl Budget {
    /// The weights of `ae` as the backend holds them, in their precision. (The activation
    /// estimate stays the f32 one, which over-counts a 16-bit model's: it tiles earlier than it
    /// must, never later.)
    pub fn weight_bytes<B: Backend>(&self, ae: &Dcae<B>) -> u64 {
        ae.precision().bytes() * burn::module::Module::num_params(ae) as u64 * self.weight_copies
    }

    /// The largest-tensor cap for `ae`'s activations.
    pub fn cap<B: Backend>(&self, ae: &Dcae<B>) -> Option<TensorCap> {
        self.max_tensor.map(|bytes| TensorCap { bytes, precision: ae.precision() })
    }
}

/// `ae.encode(x)` for a `[B, 3, H, W]` image run as [`fit`] decides within `budget` (`None`:
/// the batch at once, untiled): the image-to-image sources and the preview fitting go through
/// the same limits as the final decode. `progress(done, total)` counts images or tiles and
/// stops the encode by returning false (`Ok(None)`).
pub fn encode_within<B: Backend>(
    ae: &Dcae<B>,
    cfg: &DcaeConfig,
    x: Tensor<B, 4>,
    budget: Option<Budget>,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Option<Tensor<B, 4>>, TileConfigError> {
    let [b, _, h, w] = x.dims();
    let how = match budget {
        Some(budget) => fit_checked(cfg, budget.weight_bytes(ae), Stage::Encode, budget.bytes, budget.cap(ae), [b, h, w], "this device").map_err(TileConfigError::TooLarge)?,
        None => Fit::Batch,
    };
    let tiles = |t: &TileConfig| t.encode_tiles(h, w);
    let mut tiled = |x: Tensor<B, 4>, t: &TileConfig, p: &mut dyn FnMut(usize, usize) -> bool| tiled_encode(ae, cfg.factor(), x, t, p);
    run_within(how, x, &|x| ae.encode(x), &tiles, &mut tiled, progress)
}

/// `ae.decode(z)` for a `[B, c, h, w]` latent run as [`fit`] decides within `budget` (`None`:
/// image by image, untiled). `progress(done, total)` counts images, or tiles when tiled, and
/// stops the decode by returning false (`Ok(None)`).
pub fn decode_within<B: Backend>(
    ae: &Dcae<B>,
    cfg: &DcaeConfig,
    z: Tensor<B, 4>,
    budget: Option<Budget>,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Option<Tensor<B, 4>>, TileConfigError> {
    let [b, _, h, w] = z.dims();
    let f = cfg.factor();
    let how = match budget {
        Some(budget) => fit_checked(cfg, budget.weight_bytes(ae), Stage::Decode, budget.bytes, budget.cap(ae), [b, h * f, w * f], "this device").map_err(TileConfigError::TooLarge)?,
        None => Fit::PerImage,
    };
    let tiles = |t: &TileConfig| t.decode_tiles(h, w, f);
    let mut tiled = |z: Tensor<B, 4>, t: &TileConfig, p: &mut dyn FnMut(usize, usize) -> bool| tiled_decode(ae, f, z, t, p);
    run_within(how, z, &|z| ae.decode(z), &tiles, &mut tiled, progress)
}

/// A tiled encode or decode of one image.
type TiledRun<'a, B> = dyn FnMut(Tensor<B, 4>, &TileConfig, &mut dyn FnMut(usize, usize) -> bool) -> Result<Option<Tensor<B, 4>>, TileConfigError> + 'a;

/// One stage run as `how` says: `whole` on the batch, or on each image, or `tiled` on each
/// image (`tiles` of them per image); `progress` counts calls or tiles and stops by returning
/// false (`Ok(None)`).
fn run_within<B: Backend>(
    how: Fit,
    x: Tensor<B, 4>,
    whole: &dyn Fn(Tensor<B, 4>) -> Tensor<B, 4>,
    tiles: &dyn Fn(&TileConfig) -> usize,
    tiled: &mut TiledRun<'_, B>,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Option<Tensor<B, 4>>, TileConfigError> {
    let b = x.dims()[0];
    let mut out = Vec::with_capacity(b);
    match how {
        Fit::Batch if b > 0 => {
            if !progress(0, 1) {
                return Ok(None);
            }
            let y = whole(x);
            return Ok(progress(1, 1).then_some(y));
        }
        Fit::Batch | Fit::PerImage => {
            for i in 0..b {
                if !progress(i, b) {
                    return Ok(None);
                }
                out.push(whole(x.clone().narrow(0, i, 1)));
            }
            if !progress(b, b) {
                return Ok(None);
            }
        }
        Fit::Tiled(t) => {
            let per_image = tiles(&t);
            let total = per_image * b;
            for i in 0..b {
                let mut inner = |d: usize, _n: usize| progress(i * per_image + d, total);
                match tiled(x.clone().narrow(0, i, 1), &t, &mut inner)? {
                    Some(y) => out.push(y),
                    None => return Ok(None),
                }
            }
        }
    }
    Ok((!out.is_empty()).then(|| Tensor::cat(out, 0)))
}
