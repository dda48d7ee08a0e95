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

use super::config::{BlockType, DcaeConfig};
use super::dcae::Dcae;

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

/// Our default tile ([`TileConfig::for_model`]) halved while one tile's estimate is still over
/// `budget` (down to 4 latent pixels, below which tiles are mostly seam); `stride` overrides the
/// default overlap.
pub fn tiles_within(cfg: &DcaeConfig, weight_bytes: u64, stage: Stage, budget: u64, [batch, h, w]: [usize; 3], stride: Option<usize>) -> TileConfig {
    let f = cfg.factor();
    let with_stride = |t: TileConfig| TileConfig { stride: stride.unwrap_or(t.stride), ..t };
    let mut t = with_stride(TileConfig::for_model(f));
    while stage_bytes(cfg, weight_bytes, stage, batch, t.tile.min(h), t.tile.min(w)) > budget && t.tile / 2 >= 4 * f {
        t = with_stride(TileConfig::with_tile((t.tile / 2 / f) * f, f));
    }
    t
}

/// The cheapest way to run `stage` on `batch` images of `h × w` within `budget` bytes: the
/// batch at once, else image by image, else tiled.
pub fn fit(cfg: &DcaeConfig, weight_bytes: u64, stage: Stage, budget: u64, [batch, h, w]: [usize; 3]) -> Fit {
    if stage_bytes(cfg, weight_bytes, stage, batch, h, w) <= budget {
        Fit::Batch
    } else if stage_bytes(cfg, weight_bytes, stage, 1, h, w) <= budget {
        Fit::PerImage
    } else {
        Fit::Tiled(tiles_within(cfg, weight_bytes, stage, budget, [1, h, w], None))
    }
}

/// The memory a run may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub bytes: u64,
    /// Copies of the weights the backend holds: 2 on the CPU, whose kernels keep a rearranged
    /// copy of every convolution's weights beside burn's.
    pub weight_copies: u64,
}

impl Budget {
    /// The weights of `ae` as the backend holds them, in their precision. (The activation
    /// estimate stays the f32 one, which over-counts a 16-bit model's: it tiles earlier than it
    /// must, never later.)
    pub fn weight_bytes<B: Backend>(&self, ae: &Dcae<B>) -> u64 {
        ae.precision().bytes() * burn::module::Module::num_params(ae) as u64 * self.weight_copies
    }
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
        Some(budget) => fit(cfg, budget.weight_bytes(ae), Stage::Decode, budget.bytes, [b, h * f, w * f]),
        None => Fit::PerImage,
    };
    match how {
        Fit::Batch if b > 0 => {
            if !progress(0, 1) {
                return Ok(None);
            }
            let y = ae.decode(z);
            Ok(progress(1, 1).then_some(y))
        }
        Fit::Batch | Fit::PerImage => {
            let mut out = Vec::with_capacity(b);
            for i in 0..b {
                if !progress(i, b) {
                    return Ok(None);
                }
                out.push(ae.decode(z.clone().narrow(0, i, 1)));
            }
            if !progress(b, b) || out.is_empty() {
                return Ok(None);
            }
            Ok(Some(Tensor::cat(out, 0)))
        }
        Fit::Tiled(t) => {
            let per_image = t.decode_tiles(h, w, f);
            let total = per_image * b;
            let mut out = Vec::with_capacity(b);
            for i in 0..b {
                let mut inner = |d: usize, _n: usize| progress(i * per_image + d, total);
                match tiled_decode(ae, f, z.clone().narrow(0, i, 1), &t, &mut inner)? {
                    Some(y) => out.push(y),
                    None => return Ok(None),
                }
            }
            if out.is_empty() {
                return Ok(None);
            }
            Ok(Some(Tensor::cat(out, 0)))
        }
    }
}
