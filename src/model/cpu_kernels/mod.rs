//! CPU-backend kernels for the few operations that dominate the models' time: DC-AE's dense
//! stride-1 convolutions (3×3 and 1×1, `groups = 1`) and the UViT's Linear layers, computed by
//! the `gemm` crate directly, and DC-AE's channel RMSNorm.
//!
//! Why: burn-flex 0.21 runs these through an NHWC copy and im2col tiles and reached about
//! 50 GFLOP/s on the 2-core CI machine, where the same GEMM shapes through `gemm` (AVX-512
//! kernels enabled in Cargo.toml) run at 250–300 GFLOP/s and PyTorch's oneDNN at about 280.
//!
//! How: over a zero-padded input a stride-1 convolution is the sum over the k×k taps of
//! `W[:, :, kh, kw] · X` shifted by the tap. Computing each output row on the padded width
//! (`W + 2p` columns, the extra `2p` thrown away) makes every shifted `X` an ordinary strided
//! matrix inside the padded buffer, so each tap is one GEMM that reads the input in place: no
//! im2col buffer, and only `2p / W` wasted work. Output rows are split into tiles that run on
//! rayon's pool; a tile's accumulator stays in cache across its k² GEMMs. Large 3×3 inputs
//! take Winograd's F(2×2, 3×3) instead ([`winograd`]): 2.25× fewer multiplications.
//!
//! Other backends and other convolution shapes take burn's own path; the result is the same
//! to float rounding (checked against burn's convolution in the tests).

use std::any::{Any, TypeId};
use std::borrow::Cow;
use std::sync::OnceLock;

use burn::backend::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::{Bytes, DType, Shape, Tensor, TensorPrimitive};
use burn_flex::{FlexTensor, Layout};
use rayon::prelude::*;

use super::act::Act;
use sana::simd;

mod attention;
pub mod dit;
pub mod gemma;
pub mod sana;
mod winograd;

/// Output columns (on the padded width) per tile: big enough for efficient GEMMs, small enough
/// that `c_out × TILE` floats of accumulator stay in L2 and that 64×64 images make several tiles.
const TILE_COLUMNS: usize = 512;

/// A convolution's weights rearranged for these kernels, made on first use and kept with the
/// layer: tap-major (`[k·k, c_out, c_in]`, see [`taps_major`]) for the direct path, and
/// Winograd-transformed ([`winograd::weights`]) for large 3×3 inputs.
#[derive(Debug, Default)]
pub struct ConvWeights {
    taps: OnceLock<Vec<f32>>,
    winograd: OnceLock<Vec<f32>>,
}

/// A cloned module starts with an empty cache: it is cheap to rebuild, and a clone whose
/// weights get replaced must not keep the old ones.
impl Clone for ConvWeights {
    fn clone(&self) -> Self {
        Self::default()
    }
}

/// The contents of `slot`, filled on first use with `f` of the contiguous weights.
fn prepared<'a, B: Backend>(slot: &'a OnceLock<Vec<f32>>, weight: &Tensor<B, 4>, f: impl FnOnce(&[f32]) -> Vec<f32>) -> Option<&'a [f32]> {
    if slot.get().is_none() {
        let wt = contiguous(weight)?;
        let _ = slot.set(f(wt.as_slice::<f32>()?));
    }
    slot.get().map(Vec::as_slice)
}

/// Winograd pays for its transforms only with enough tiles and channels. Measured on DC-AE's
/// layers (2 cores): from 32×32 on it wins (512→2048 at 32²: 0.25 vs 0.31 s per three
/// encodes; 256→256 at 128²: 1.62 vs 2.79), at 16×16 and below the direct path does
/// (1024→2048 at 16²: 0.27 vs 0.21; 2048→4096 at 4²: 2.2 vs 0.87), and so with 12 output
/// channels (256→12 at 128²: 0.053 vs 0.048).
const MIN_C: usize = 32;
const MIN_HW: usize = 32 * 32;
fn winograd_fits(k: usize, c_in: usize, c_out: usize, h: usize, w: usize) -> bool {
    k == 3 && c_in >= MIN_C && c_out >= MIN_C && h * w >= MIN_HW && conv_choice() == ConvChoice::Auto
}

/// `act(conv2d(x, weight, bias))` with stride 1, dilation 1, one group and "same" padding
/// `k / 2`, when `B` is the CPU backend and the tensors are f32; `None` otherwise (the caller
/// then uses burn's convolution). `cache` keeps the rearranged weights across calls.
pub fn conv2d_same<B: Backend>(
    x: &Tensor<B, 4>,
    weight: &Tensor<B, 4>,
    bias: Option<&Tensor<B, 1>>,
    act: Option<Act>,
    cache: &ConvWeights,
) -> Option<Tensor<B, 4>> {
    if !takes_fast_path::<B>() {
        return None;
    }
    let [c_out, c_in, kh, kw] = weight.dims();
    let [batch, xc, h, w] = x.dims();
    if kh != kw || kh % 2 == 0 || xc != c_in || h == 0 || w == 0 {
        return None;
    }
    let x = contiguous(x)?;
    let bias = optional(bias, contiguous)?;
    let x_data = x.as_slice::<f32>()?;
    let b_data = optional(bias.as_ref(), |b| b.as_slice::<f32>())?;
    let out = if winograd_fits(kh, c_in, c_out, h, w) {
        let u = prepared(&cache.winograd, weight, |wt| winograd::weights(wt, c_out, c_in))?;
        winograd::conv3x3(x_data, [batch, c_in, h, w], u, c_out, b_data, act, None)
    } else if kh == 1 {
        // A 1×1 convolution's tap-major layout `[1, c_out, c_in]` is its own `[c_out, c_in, 1,
        // 1]`: read the layer's weights in place. A cached copy doubled the memory of f32c32's
        // EfficientViT stages (about 600 MiB over its encoder and decoder), and it stays for as
        // long as the model is loaded.
        let wt = contiguous(weight)?;
        conv_same_f32(x_data, [batch, c_in, h, w], wt.as_slice::<f32>()?, c_out, 1, b_data, act)
    } else {
        let taps = prepared(&cache.taps, weight, |wt| taps_major(wt, c_out, c_in, kh))?;
        conv_same_f32(x_data, [batch, c_in, h, w], taps, c_out, kh, b_data, act)
    };
    Some(from_vec::<B, 4>(out, [batch, c_out, h, w]))
}

/// Which convolution code the CPU backend runs, from `DCAE_CPU_CONV` (read once), for
/// benchmarking one against another: unset, these kernels with Winograd where it pays;
/// `direct`, these kernels without Winograd; `burn`, burn-flex's own ops (and no kernel here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConvChoice {
    Auto,
    Direct,
    Burn,
}

fn conv_choice() -> ConvChoice {
    static CHOICE: OnceLock<ConvChoice> = OnceLock::new();
    *CHOICE.get_or_init(|| match std::env::var("DCAE_CPU_CONV").as_deref() {
        Ok("burn") => ConvChoice::Burn,
        Ok("direct") => ConvChoice::Direct,
        _ => ConvChoice::Auto,
    })
}

/// Whether `B` is the CPU backend and these kernels are on.
fn takes_fast_path<B: Backend>() -> bool {
    TypeId::of::<B>() == TypeId::of::<Flex>() && conv_choice() != ConvChoice::Burn
}

/// The CPU backend's tensor behind `t` (a cheap reference-counted clone), if `B` is that backend.
fn flex<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Option<FlexTensor> {
    let prim: Box<dyn Any> = Box::new(t.clone().into_primitive().tensor());
    let t = *prim.downcast::<FlexTensor>().ok()?;
    (t.dtype() == DType::F32).then_some(t)
}

/// [`flex`], row-major (copied only when it is not already), for reading as a slice.
fn contiguous<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Option<FlexTensor> {
    Some(flex(t)?.to_contiguous())
}

/// The CPU backend's tensor behind `t` whatever its float type (for weights kept 16-bit).
fn flex_any<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Option<FlexTensor> {
    let prim: Box<dyn Any> = Box::new(t.clone().into_primitive().tensor());
    prim.downcast::<FlexTensor>().ok().map(|t| *t)
}

/// Output columns of a 16-bit weight widened to f32 at a time: a `k × 256` f32 block (2.3 MB
/// for Gemma-2's 2304 inputs) stays in L2/L3 while `gemm` streams it. Measured on the
/// 540-token Gemma-2 encode (2 threads, AVX-512): 7.17 s, against 8.59 s with 1 MiB blocks and
/// 8.28 s with 8 MiB ones.
const HALF_BLOCK: usize = 4 * PANEL;

/// A Linear weight `[k, n]` row-major, in the type it is held in.
#[derive(Clone, Copy)]
enum WeightValues<'a> {
    F32(&'a [f32]),
    Bf16(&'a [half::bf16]),
    F16(&'a [half::f16]),
}

impl<'a> WeightValues<'a> {
    fn of(t: &'a FlexTensor) -> Option<Self> {
        match t.dtype() {
            DType::F32 => t.as_slice::<f32>().map(Self::F32),
            DType::BF16 => t.as_slice::<half::bf16>().map(Self::Bf16),
            DType::F16 => t.as_slice::<half::f16>().map(Self::F16),
            _ => None,
        }
    }

    /// Columns `c0..c0 + cw` of the `[k, n]` matrix into `dst`, `k × cw` row-major, as f32.
    #[inline(always)]
    fn widen_columns(&self, dst: &mut [f32], n: usize, c0: usize, cw: usize) {
        for (r, row) in dst.chunks_exact_mut(cw).enumerate() {
            let at = r * n + c0;
            match self {
                Self::F32(v) => row.copy_from_slice(&v[at..][..cw]),
                // bf16 is the top half of an f32: a shift, which vectorizes.
                Self::Bf16(v) => row.iter_mut().zip(&v[at..][..cw]).for_each(|(d, s)| *d = f32::from_bits((s.to_bits() as u32) << 16)),
                Self::F16(v) => row.iter_mut().zip(&v[at..][..cw]).for_each(|(d, s)| *d = s.to_f32()),
            }
        }
    }
}


/// `f` of an optional operand (a bias): `Some(None)` without one, `None` when `f` fails on it.
fn optional<T, U>(t: Option<T>, f: impl FnOnce(T) -> Option<U>) -> Option<Option<U>> {
    match t {
        None => Some(None),
        Some(t) => f(t).map(Some),
    }
}

/// `dst = lhs · rhs` (`dst += lhs · rhs` when `accumulate`) for an m×k by k×n product, each
/// matrix given as a pointer and its (row, column) strides in elements.
///
/// # Safety
/// Every element the strides reach must lie inside its allocation, and `dst` must not overlap
/// the operands or be written by anyone else during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    [m, n, k]: [usize; 3],
    dst: *mut f32,
    [dst_rs, dst_cs]: [usize; 2],
    accumulate: bool,
    lhs: *const f32,
    [lhs_rs, lhs_cs]: [usize; 2],
    rhs: *const f32,
    [rhs_rs, rhs_cs]: [usize; 2],
    parallelism: gemm::Parallelism,
) {
    let s = |v: usize| v as isize;
    // SAFETY: forwarded to the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            s(dst_cs),
            s(dst_rs),
            accumulate,
            lhs,
            s(lhs_cs),
            s(lhs_rs),
            rhs,
            s(rhs_cs),
            s(rhs_rs),
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// Raw pointer through which rayon's jobs write disjoint parts of one output buffer.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: each use gives every job its own elements (tiles of rows, column blocks, Winograd
// positions or channels), as the SAFETY comment at each write says.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// PyTorch's `[c_out, c_in, k, k]` weight as `[k·k, c_out, c_in]`: each tap's matrix contiguous,
/// which the GEMM packs 1.6× faster than the tap-strided original (measured, single core).
pub fn taps_major(weight: &[f32], c_out: usize, c_in: usize, k: usize) -> Vec<f32> {
    let kk = k * k;
    let mut t = vec![0.0f32; weight.len()];
    for o in 0..c_out {
        for i in 0..c_in {
            for tap in 0..kk {
                t[(tap * c_out + o) * c_in + i] = weight[(o * c_in + i) * kk + tap];
            }
        }
    }
    t
}

/// NCHW f32 convolution, stride 1, padding `k / 2`, then `act`. `weight` is tap-major
/// `[k·k, c_out, c_in]` ([`taps_major`]).
#[allow(clippy::too_many_arguments)]
pub fn conv_same_f32(
    x: &[f32],
    [batch, c_in, h, w]: [usize; 4],
    weight: &[f32],
    c_out: usize,
    k: usize,
    bias: Option<&[f32]>,
    act: Option<Act>,
) -> Vec<f32> {
    assert_eq!(x.len(), batch * c_in * h * w, "input length");
    assert_eq!(weight.len(), c_out * c_in * k * k, "weight length");
    let p = k / 2;
    let (hp, wp) = (h + 2 * p, w + 2 * p);
    let plane = hp * wp;
    // The last tap of the last row reads up to 2p elements past the final plane (into the
    // discarded columns); the slack keeps those reads inside the buffer.
    let padded_len = c_in * plane + 2 * p;

    // Zero-padded copies of the inputs, one per image; a 1×1 kernel (no padding) reads the
    // input itself, which is already that layout.
    let padded: Vec<Cow<[f32]>> = if p == 0 {
        (0..batch).map(|b| Cow::Borrowed(&x[b * c_in * plane..][..c_in * plane])).collect()
    } else {
        (0..batch)
            .into_par_iter()
            .map(|b| {
                let mut buf = vec![0.0f32; padded_len];
                for c in 0..c_in {
                    let src = &x[(b * c_in + c) * h * w..][..h * w];
                    for r in 0..h {
                        let dst = c * plane + (r + p) * wp + p;
                        buf[dst..dst + w].copy_from_slice(&src[r * w..(r + 1) * w]);
                    }
                }
                Cow::Owned(buf)
            })
            .collect()
    };

    let rows_per_tile = (TILE_COLUMNS / wp).clamp(1, h);
    let tiles_per_image = h.div_ceil(rows_per_tile);
    let jobs = batch * tiles_per_image;
    let mut out = vec![0.0f32; batch * c_out * h * w];
    let out_ptr = OutPtr(out.as_mut_ptr());
    let threads = rayon::current_num_threads();
    // Few tiles (small images): one tile at a time, each GEMM on all threads.
    let split_gemm = jobs < 2 * threads;
    let gemm_par = if split_gemm { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };

    let run_tile = |job: usize| {
        let (b, t) = (job / tiles_per_image, job % tiles_per_image);
        let r0 = t * rows_per_tile;
        let rows = rows_per_tile.min(h - r0);
        let n = rows * wp;
        let xp = &padded[b];
        let mut acc = vec![0.0f32; c_out * n];
        if let Some(bias) = bias {
            for (co, row) in acc.chunks_exact_mut(n).enumerate() {
                row.fill(bias[co]);
            }
        }
        for dy in 0..k {
            for dx in 0..k {
                let tap = dy * k + dx;
                let read_dst = bias.is_some() || tap > 0;
                let x_off = r0 * wp + dy * wp + dx;
                debug_assert!(x_off + (c_in - 1) * plane + n <= xp.len());
                // SAFETY: the slices cover every element the strides reach: `acc` is
                // c_out × n, the tap's weights c_out × c_in, and the input window
                // c_in planes of `n` elements from `x_off` (asserted above, slack included).
                unsafe {
                    matmul(
                        [c_out, n, c_in],
                        acc.as_mut_ptr(),
                        [n, 1],
                        read_dst,
                        weight.as_ptr().add(tap * c_out * c_in),
                        [c_in, 1],
                        xp.as_ptr().add(x_off),
                        [plane, 1],
                        gemm_par,
                    );
                }
            }
        }
        if let Some(act) = act {
            act.apply_slice(&mut acc);
        }
        // Keep the first w of every wp columns.
        let out_ptr = out_ptr;
        for co in 0..c_out {
            for r in 0..rows {
                let src = &acc[co * n + r * wp..][..w];
                // SAFETY: (b, co, r0 + r) rows are written by this tile only.
                unsafe {
                    let dst = out_ptr.0.add(((b * c_out + co) * h + r0 + r) * w);
                    std::ptr::copy_nonoverlapping(src.as_ptr(), dst, w);
                }
            }
        }
    };
    if split_gemm {
        (0..jobs).for_each(run_tile);
    } else {
        (0..jobs).into_par_iter().for_each(run_tile);
    }
    out
}

/// `x · rsqrt(mean_c(x²) + eps) · weight[c] + bias[c]` over the channels of an NCHW tensor, in
/// two passes over memory, when `B` is the CPU backend (burn's ops take eight, each allocating;
/// the norm ran at 5 % of the encoder's time after the convolutions got fast).
pub fn rms_norm2d<B: Backend>(x: &Tensor<B, 4>, weight: &Tensor<B, 1>, bias: &Tensor<B, 1>, eps: f32) -> Option<Tensor<B, 4>> {
    if !takes_fast_path::<B>() {
        return None;
    }
    let [batch, c, h, w] = x.dims();
    let (xt, wt, bt) = (contiguous(x)?, contiguous(weight)?, contiguous(bias)?);
    let (xv, wv, bv) = (xt.as_slice::<f32>()?, wt.as_slice::<f32>()?, bt.as_slice::<f32>()?);
    let hw = h * w;
    const CHUNK: usize = 1024;
    let chunks = hw.div_ceil(CHUNK);
    let mut out = vec![0.0f32; xv.len()];
    let out_ptr = OutPtr(out.as_mut_ptr());
    (0..batch * chunks).into_par_iter().for_each(|job| {
        let (b, p0) = (job / chunks, (job % chunks) * CHUNK);
        let n = CHUNK.min(hw - p0);
        let base = b * c * hw + p0;
        let mut inv = vec![0.0f32; n];
        for ch in 0..c {
            let row = &xv[base + ch * hw..][..n];
            inv.iter_mut().zip(row).for_each(|(s, v)| *s += v * v);
        }
        inv.iter_mut().for_each(|s| *s = 1.0 / (*s / c as f32 + eps).sqrt());
        let out_ptr = out_ptr;
        for ch in 0..c {
            let row = &xv[base + ch * hw..][..n];
            // SAFETY: (b, ch, p0..p0 + n) belongs to this job only.
            let dst = unsafe { std::slice::from_raw_parts_mut(out_ptr.0.add(base + ch * hw), n) };
            let (g, o) = (wv[ch], bv[ch]);
            dst.iter_mut().zip(row.iter().zip(&inv)).for_each(|(d, (v, r))| *d = v * r * g + o);
        }
    });
    Some(from_vec::<B, 4>(out, [batch, c, h, w]))
}

/// `x · weight + bias` over the last axis (`weight` `[in, out]`, as burn's `Linear` holds it),
/// when `B` is the CPU backend.
///
/// Why: a UViT-H forward at 512 px has only 66 tokens per image, and for such short matrices
/// `gemm`'s own threading splits the 66 rows into a 64-row block and a 2-row one, leaving one
/// core nearly idle (91 GFLOP/s for 66×1536·1536×6144 on 2 cores). Splitting the *output
/// columns* between rayon's threads, one single-threaded GEMM each, ran the same product at
/// 204 GFLOP/s, and 132-token (guided) batches no slower (242 vs 241).
///
/// Each thread computes its block *transposed*, `outᵀ = weightᵀ · xᵀ`, which is the same memory
/// (only the strides change). The AVX-512 kernel is 64 rows × 6 columns: with tokens as rows,
/// 66 tokens fill 64 + 16 rows (82 %); as columns they fill 11 × 6 exactly, and the weight, read
/// once from memory anyway, becomes the side `gemm` streams in 64-row panels. Measured with
/// 2 GB of weights cycling (2 threads, 66 tokens): 182 → 216 GFLOP/s for 1152 → 4608,
/// 124 → 206 for 1152 → 1152.
pub fn linear<B: Backend, const D: usize>(x: &Tensor<B, D>, weight: &Tensor<B, 2>, bias: Option<&Tensor<B, 1>>) -> Option<Tensor<B, D>> {
    linear_then(x, weight, bias, Epilogue::None)
}

/// [`linear`] followed by the exact (erf) GELU, applied by each thread to its own columns while
/// they are in cache: burn-flex's GELU runs libm's scalar erf on one thread.
pub fn linear_gelu<B: Backend, const D: usize>(x: &Tensor<B, D>, weight: &Tensor<B, 2>, bias: Option<&Tensor<B, 1>>) -> Option<Tensor<B, D>> {
    linear_then(x, weight, bias, Epilogue::Gelu)
}

/// [`linear`] followed by the tanh-approximated GELU (DiT's MLP), vectorized like the exact
/// one: burn-flex's runs libm's scalar `tanh`, `powf` and `expm1` (12 % of a DiT-XL forward).
pub fn linear_gelu_tanh<B: Backend, const D: usize>(x: &Tensor<B, D>, weight: &Tensor<B, 2>, bias: Option<&Tensor<B, 1>>) -> Option<Tensor<B, D>> {
    linear_then(x, weight, bias, Epilogue::GeluTanh)
}

/// What [`linear_then`] applies to each thread's columns while they are in cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Epilogue {
    None,
    /// The exact (erf) GELU.
    Gelu,
    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
    GeluTanh,
    /// SiLU through [`sana::silu`]'s vectorizing `exp`.
    Silu,
}

/// Rows of the AVX-512 `gemm` kernel (16 lanes × 4).
const PANEL: usize = 64;

fn linear_then<B: Backend, const D: usize>(x: &Tensor<B, D>, weight: &Tensor<B, 2>, bias: Option<&Tensor<B, 1>>, epilogue: Epilogue) -> Option<Tensor<B, D>> {
    if !takes_fast_path::<B>() || D < 2 {
        return None;
    }
    let dims = x.dims();
    let [k, n] = weight.dims();
    if dims[D - 1] != k {
        return None;
    }
    let m: usize = dims[..D - 1].iter().product();
    let (xt, wt) = (contiguous(x)?, flex_any(weight)?.to_contiguous());
    let bt = optional(bias, contiguous)?;
    let xv = xt.as_slice::<f32>()?;
    let wv = WeightValues::of(&wt)?;
    let bv = optional(bt.as_ref(), |b| b.as_slice::<f32>())?;
    let mut out = vec![0.0f32; m * n];
    if let Some(bv) = bv {
        out.chunks_exact_mut(n).for_each(|row| row.copy_from_slice(bv));
    }
    let out_ptr = OutPtr(out.as_mut_ptr());
    let parts = rayon::current_num_threads().clamp(1, n.div_ceil(PANEL));
    // Column ranges in whole kernel panels.
    let step = n.div_ceil(parts).div_ceil(PANEL) * PANEL;
    (0..n.div_ceil(step)).into_par_iter().for_each(|p| {
        let (n0, n1) = (p * step, ((p + 1) * step).min(n));
        let out_ptr = out_ptr;
        // SAFETY: columns n0..n1 of the m × n output belong to this part only; the operands
        // are m × k and k × n row-major slices of exactly those sizes. Transposed: the
        // (n1 - n0) × m result has row stride 1 and column stride n in `out`, and so on.
        match wv {
            WeightValues::F32(wv) => unsafe {
                matmul([n1 - n0, m, k], out_ptr.0.add(n0), [1, n], bv.is_some(), wv.as_ptr().add(n0), [1, n], xv.as_ptr(), [1, k], gemm::Parallelism::None);
            },
            // 16-bit weights are widened a block of columns at a time into a scratch that stays
            // in cache, so memory holds only the stored copy. Widening is exact, so the result
            // is the one of the f32 weights.
            _ => {
                let mut scratch = vec![0.0f32; k * HALF_BLOCK];
                for c0 in (n0..n1).step_by(HALF_BLOCK) {
                    let cw = HALF_BLOCK.min(n1 - c0);
                    simd(|| wv.widen_columns(&mut scratch[..k * cw], n, c0, cw));
                    // SAFETY: as above for columns c0..c0 + cw; scratch is k × cw row-major.
                    unsafe {
                        matmul([cw, m, k], out_ptr.0.add(c0), [1, n], bv.is_some(), scratch.as_ptr(), [1, cw], xv.as_ptr(), [1, k], gemm::Parallelism::None);
                    }
                }
            }
        }
        if epilogue != Epilogue::None {
            for r in 0..m {
                // SAFETY: as above, this part's columns of row r.
                let row = unsafe { std::slice::from_raw_parts_mut(out_ptr.0.add(r * n + n0), n1 - n0) };
                match epilogue {
                    Epilogue::Gelu => row.iter_mut().for_each(|v| *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2))),
                    Epilogue::GeluTanh => simd(|| row.iter_mut().for_each(|v| *v = gemma::gelu_tanh(*v))),
                    Epilogue::Silu => sana::simd(|| row.iter_mut().for_each(|v| *v = sana::silu(*v))),
                    Epilogue::None => {}
                }
            }
        }
    });
    let mut shape = dims;
    shape[D - 1] = n;
    Some(from_vec::<B, D>(out, shape))
}

/// `erf(x)` as `x · P(x²) / Q(x²)` on [-4, 4] (±1 beyond, where erf rounds to ±1 in f32):
/// no branch and no `exp`, so the GELU epilogue vectorizes. libm's `erff` took 6 % of a UViT-H
/// forward. The rational function was fitted here (weighted least squares in a Chebyshev basis,
/// iterated towards minimax; 3.7e-9 in f64); in f32 it is within 5e-7 of erf, and GELU within
/// 1.6e-6 of exact at |x| ≤ 8 (2e-7 relative), against 4.5e-7 with a correctly rounded erf.
#[inline(always)]
fn erf(x: f32) -> f32 {
    const P: [f32; 8] = [
        1.128_379_2,
        0.173_067_88,
        0.051_728_57,
        0.003_248_535_6,
        0.000_320_490_74,
        2.632_479_7e-6,
        1.079_965_5e-8,
        -2.181_572_1e-10,
    ];
    const Q: [f32; 6] = [1.0, 0.486_710_76, 0.108_080_06, 0.014_044_418, 0.001_115_683_6, 4.790_433e-5];
    let x = x.clamp(-4.0, 4.0);
    let s = x * x;
    let p = P.iter().rev().fold(0.0, |acc, &c| acc * s + c);
    let q = Q.iter().rev().fold(0.0, |acc, &c| acc * s + c);
    x * (p / q)
}

/// A CPU-backend tensor from plain values (`B` is known to be the CPU backend here).
fn from_vec<B: Backend, const D: usize>(v: Vec<f32>, shape: [usize; D]) -> Tensor<B, D> {
    let t = FlexTensor::new(Bytes::from_elems(v), Layout::contiguous(Shape::from(shape)), DType::F32);
    let prim: Box<dyn Any> = Box::new(t);
    let prim = *prim.downcast::<B::FloatTensorPrimitive>().expect("called for the CPU backend only");
    Tensor::from_primitive(TensorPrimitive::Float(prim))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct six-loop convolution in f64, the reference.
    fn naive(x: &[f32], [b, ci, h, w]: [usize; 4], wt: &[f32], co: usize, k: usize, bias: Option<&[f32]>) -> Vec<f32> {
        let p = k as isize / 2;
        let mut out = vec![0.0f32; b * co * h * w];
        for n in 0..b {
            for o in 0..co {
                for y in 0..h {
                    for xx in 0..w {
                        let mut s = bias.map_or(0.0, |b| b[o] as f64);
                        for c in 0..ci {
                            for dy in 0..k {
                                for dx in 0..k {
                                    let (iy, ix) = (y as isize + dy as isize - p, xx as isize + dx as isize - p);
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let xv = x[((n * ci + c) * h + iy as usize) * w + ix as usize] as f64;
                                    s += xv * wt[((o * ci + c) * k + dy) * k + dx] as f64;
                                }
                            }
                        }
                        out[((n * co + o) * h + y) * w + xx] = s as f32;
                    }
                }
            }
        }
        out
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 2001) as f32 / 1000.0 - 1.0).collect()
    }

    #[test]
    fn matches_direct_convolution() {
        // Odd sizes, 1×1 / 3×3 / 5×5, with and without bias, one tile and many (h = 70 makes
        // several tiles of 6 rows plus a short last one).
        for &(b, ci, co, h, w, k, with_bias) in &[
            (1, 3, 5, 7, 9, 3, true),
            (2, 4, 6, 5, 3, 3, false),
            (1, 2, 3, 70, 80, 3, true),
            (2, 3, 2, 6, 11, 5, true),
            (1, 5, 4, 4, 4, 1, false),
            (1, 1, 1, 1, 1, 3, true),
        ] {
            let x = values(b * ci * h * w, 1);
            let wt = values(co * ci * k * k, 2);
            let bias = values(co, 3);
            let bias = with_bias.then_some(&bias[..]);
            let got = conv_same_f32(&x, [b, ci, h, w], &taps_major(&wt, co, ci, k), co, k, bias, None);
            let want = naive(&x, [b, ci, h, w], &wt, co, k, bias);
            let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(err < 1e-4, "{b}×{ci}→{co} {h}×{w} k{k}: max error {err}");
        }
    }

    #[test]
    fn winograd_matches_direct_convolution() {
        // The ResBlocks of tests/fixtures/ae-wide, whose model-level parity test relies on it.
        assert!(winograd_fits(3, 32, 32, 64, 64) && winograd_fits(3, 64, 64, 32, 32));
        // Odd and even sizes (partial tiles on the right and bottom), batches, one block and
        // several (including a short last one), with and without bias and activation.
        for &(b, ci, co, h, w, with_bias, act) in &[
            (1, 64, 48, 21, 19, true, None),
            (2, 5, 7, 8, 10, false, Some(Act::Silu)),
            (1, 3, 4, 1, 1, true, Some(Act::Relu)),
            (1, 6, 3, 2, 9, true, None),
        ] {
            let x = values(b * ci * h * w, 1);
            let wt = values(co * ci * 9, 2);
            let bias = values(co, 3);
            let bias = with_bias.then_some(&bias[..]);
            let mut want = naive(&x, [b, ci, h, w], &wt, co, 3, bias);
            if let Some(act) = act {
                act.apply_slice(&mut want);
            }
            let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let u = winograd::weights(&wt, co, ci);
            for rows in [Some(1), Some(3), None] {
                let got = winograd::conv3x3(&x, [b, ci, h, w], &u, co, bias, act, rows);
                let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                // The direct path's rounding is ~1e-7 of the scale here; Winograd's transforms
                // add a few more roundings per product.
                assert!(err <= 2e-6 * scale, "{b}×{ci}→{co} {h}×{w}, {rows:?} rows a block: max error {err} at scale {scale}");
            }
        }
    }

    #[test]
    fn cpu_backend_takes_this_path_and_agrees_with_burn() {
        use burn::tensor::module::conv2d;
        use burn::tensor::ops::ConvOptions;
        use burn::tensor::{Distribution, Tensor};
        let device = Default::default();
        // The direct path, then a shape large enough for Winograd, then a 1×1 conv of two
        // images (read in place, each image its own slice of the input).
        for ([n, c_in, h, w], c_out, k) in [([2, 8, 13, 10], 6, 3), ([1, 32, 33, 32], 40, 3), ([2, 8, 13, 10], 6, 1)] {
            assert_eq!(winograd_fits(k, c_in, c_out, h, w), c_in == 32);
            let x = Tensor::<Flex, 4>::random([n, c_in, h, w], Distribution::Uniform(-1.0, 1.0), &device);
            let wt = Tensor::<Flex, 4>::random([c_out, c_in, k, k], Distribution::Uniform(-1.0, 1.0), &device);
            let b = Tensor::<Flex, 1>::random([c_out], Distribution::Uniform(-1.0, 1.0), &device);
            let cache = ConvWeights::default();
            for act in [None, Some(Act::Relu), Some(Act::Silu)] {
                let fast = conv2d_same(&x, &wt, Some(&b), act, &cache).expect("the CPU backend must take the fast path");
                let pad = k / 2;
                let mut reference = conv2d(x.clone(), wt.clone(), Some(b.clone()), ConvOptions::new([1, 1], [pad, pad], [1, 1], 1));
                if let Some(act) = act {
                    reference = act.apply(reference);
                }
                let err: f32 = (fast - reference).abs().max().into_scalar();
                assert!(err < 1e-4, "{c_in}→{c_out} {h}×{w} k{k} {act:?}: max error {err}");
            }
            // A 1×1 layer keeps no second copy of its weights.
            assert_eq!(cache.taps.get().is_some(), k == 3 && c_in != 32, "k{k}: tap-major copy");
        }
    }

    #[test]
    fn rms_norm_agrees_with_burn_ops() {
        use burn::tensor::{Distribution, Tensor};
        let device = Default::default();
        // 1500 pixels: a full chunk and a partial one.
        let x = Tensor::<Flex, 4>::random([2, 5, 30, 50], Distribution::Uniform(-2.0, 2.0), &device);
        let g = Tensor::<Flex, 1>::random([5], Distribution::Uniform(-1.0, 1.0), &device);
        let b = Tensor::<Flex, 1>::random([5], Distribution::Uniform(-1.0, 1.0), &device);
        let fast = rms_norm2d(&x, &g, &b, 1e-5).expect("the CPU backend must take the fast path");
        let inv = (x.clone().square().mean_dim(1) + 1e-5).sqrt().recip();
        let reference = x * inv * g.reshape([1, 5, 1, 1]) + b.reshape([1, 5, 1, 1]);
        let err: f32 = (fast - reference).abs().max().into_scalar();
        assert!(err < 1e-5, "max error {err}");
    }

    #[test]
    fn erf_is_within_5e_7_of_libm() {
        let mut worst = 0.0f32;
        for i in -800_000..=800_000 {
            let x = i as f32 * 1e-5;
            worst = worst.max((erf(x) - libm::erff(x)).abs());
            // Tiny arguments keep their relative precision (erf(x) ≈ 2x/√π).
            let t = x * 1e-6;
            let rel = (erf(t) - libm::erff(t)).abs() / libm::erff(t).abs().max(f32::MIN_POSITIVE);
            assert!(t == 0.0 || rel < 1e-6, "erf({t}): relative error {rel}");
        }
        assert!(worst < 5e-7, "max error {worst}");
        assert_eq!((erf(100.0), erf(-100.0), erf(0.0)), (1.0, -1.0, 0.0));
    }

    #[test]
    fn linear_agrees_with_burn_matmul() {
        use burn::tensor::{Distribution, Tensor};
        let device = Default::default();
        // 66 tokens as in UViT-H at 512 px; 150 outputs split into 64-row panels and a tail.
        let x = Tensor::<Flex, 3>::random([2, 66, 24], Distribution::Uniform(-1.0, 1.0), &device);
        let w = Tensor::<Flex, 2>::random([24, 150], Distribution::Uniform(-1.0, 1.0), &device);
        let b = Tensor::<Flex, 1>::random([150], Distribution::Uniform(-1.0, 1.0), &device);
        for bias in [None, Some(&b)] {
            let fast = linear(&x, &w, bias).expect("the CPU backend must take the fast path");
            let mut reference = x.clone().matmul(w.clone().unsqueeze::<3>());
            if let Some(b) = bias {
                reference = reference + b.clone().reshape([1, 1, 150]);
            }
            let err: f32 = (fast - reference.clone()).abs().max().into_scalar();
            assert!(err < 1e-4, "bias {}: max error {err}", bias.is_some());
            let fast = linear_gelu(&x, &w, bias).expect("the CPU backend must take the fast path");
            let err: f32 = (fast - burn::tensor::activation::gelu(reference)).abs().max().into_scalar();
            assert!(err < 1e-4, "GELU, bias {}: max error {err}", bias.is_some());
        }
    }
}
