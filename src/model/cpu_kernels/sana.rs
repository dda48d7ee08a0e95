//! CPU-backend kernels for the SANA transformer's token-major (`[B, N, C]`) activations: the
//! modulated LayerNorm, GLUMBConv's depthwise 3×3 with its GLU, the ReLU linear attention and
//! the softmax cross-attention, each reading and writing the token-major buffers in place.
//!
//! Why: with burn's ops each of these is a chain of single-threaded elementwise passes, strided
//! copies (the heads' `swap_dims`) and small batched matmuls; a Sana-600M forward at 512 px
//! spent more time in them than in its Linear layers. Here each is one or two passes,
//! parallel over rows or heads, with the matrix products done by `gemm` on strided views of
//! the token-major data.
//!
//! Every function returns `None` when `B` is not the CPU backend (or the tensors are not f32,
//! or the shapes are not the expected ones); the caller then runs burn's ops, and the tests
//! check the two agree.

use std::sync::OnceLock;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::{contiguous, from_vec, linear_then, matmul, Epilogue, OutPtr};

/// Whether these kernels run: on the CPU backend, unless `DCAE_SANA_KERNELS=burn` (read once)
/// asks for burn's ops, for benchmarking one against the other (`DCAE_CPU_CONV=burn` turns
/// off every CPU kernel, these included).
fn takes_fast_path<B: Backend>() -> bool {
    static OFF: OnceLock<bool> = OnceLock::new();
    super::takes_fast_path::<B>() && !*OFF.get_or_init(|| std::env::var("DCAE_SANA_KERNELS").as_deref() == Ok("burn"))
}

/// `silu(x · weight + bias)` ([`super::linear`] with the SiLU applied by each thread to its
/// own columns while they are in cache).
pub fn linear_silu<B: Backend, const D: usize>(x: &Tensor<B, D>, weight: &Tensor<B, 2>, bias: Option<&Tensor<B, 1>>) -> Option<Tensor<B, D>> {
    if !takes_fast_path::<B>() {
        return None;
    }
    linear_then(x, weight, bias, Epilogue::Silu)
}

/// `e^x` for f32, branch-free so that loops over it vectorize (libm's `expf` is a call per
/// element). Cody–Waite reduction `x = n·ln2 + r`, a degree-7 Taylor polynomial on
/// |r| ≤ ln2/2, and `2^n` built in the exponent bits (as two factors, so that n = ±127 stays
/// representable): within 3 ulp of `exp` in f64 on [-87.3, 88.72]; 0 below (where `expf`
/// gives subnormals or 0) and +∞ above.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 = LN2_HI + LN2_LO, LN2_HI with few enough bits that n · LN2_HI is exact (Cephes).
    const LN2_HI: f32 = 0.693_359_375;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const LO: f32 = -87.3;
    const HI: f32 = 88.72;
    let xc = x.clamp(LO, HI);
    // Round to nearest by the 1.5·2²³ trick: `f32::round` is a libm call on baseline x86-64,
    // which kept the loops from vectorizing.
    const ROUND: f32 = 12_582_912.0;
    let n = (xc * LOG2E + ROUND) - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let n = n as i32;
    let (n1, n2) = (n >> 1, n - (n >> 1));
    let pow2 = |e: i32| f32::from_bits(((e + 127) as u32) << 23);
    let y = p * pow2(n1) * pow2(n2);
    if x < LO {
        0.0
    } else if x > HI {
        f32::INFINITY
    } else {
        y
    }
}

/// `f()` compiled for AVX2 where the CPU has it: the crate is built for baseline x86-64 (SSE2,
/// 4 lanes), so without this the kernels' elementwise loops run at half width (`gemm`
/// dispatches on its own). The result is the same either way: no FMA contraction is allowed.
#[inline(always)]
pub(super) fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// `x · sigmoid(x)` through [`exp`].
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// Rows of a token-major tensor that one rayon job handles in the elementwise kernels.
const ROWS_PER_JOB: usize = 16;

/// `layer_norm(x) · (1 + scale) + shift` over the last axis (no affine parameters), `x`
/// `[B, N, D]`, `shift` and `scale` `[B, 1, D]`: two passes over each row instead of burn's
/// eight over the tensor.
pub fn norm_modulate<B: Backend>(x: &Tensor<B, 3>, shift: &Tensor<B, 3>, scale: &Tensor<B, 3>, eps: f32) -> Option<Tensor<B, 3>> {
    if !takes_fast_path::<B>() {
        return None;
    }
    let [b, n, d] = x.dims();
    if shift.dims() != [b, 1, d] || scale.dims() != [b, 1, d] || d == 0 {
        return None;
    }
    let (xt, st, ct) = (contiguous(x)?, contiguous(shift)?, contiguous(scale)?);
    let (xv, sv, cv) = (xt.as_slice::<f32>()?, st.as_slice::<f32>()?, ct.as_slice::<f32>()?);
    let mut out = vec![0.0f32; xv.len()];
    out.par_chunks_mut(d * ROWS_PER_JOB).enumerate().for_each(|(job, chunk)| simd(|| {
        for (r, dst) in chunk.chunks_exact_mut(d).enumerate() {
            let row = job * ROWS_PER_JOB + r;
            let src = &xv[row * d..][..d];
            let bi = row / n;
            let (shift, scale) = (&sv[bi * d..][..d], &cv[bi * d..][..d]);
            let mean = sum(src) / d as f32;
            dst.iter_mut().zip(src).for_each(|(o, v)| *o = v - mean);
            let var = sum_sq(dst) / d as f32;
            let inv = 1.0 / (var + eps).sqrt();
            dst.iter_mut().zip(shift.iter().zip(scale)).for_each(|(o, (s, c))| *o = *o * inv * (1.0 + c) + s);
        }
    }));
    Some(from_vec::<B, 3>(out, [b, n, d]))
}

/// `x + gate · y` with `x`, `y` `[B, N, D]` and `gate` `[B, 1, D]` (`gate` absent: `x + y`),
/// the blocks' residual connections: one parallel pass instead of two single-threaded ones.
pub fn add_gated<B: Backend>(x: &Tensor<B, 3>, gate: Option<&Tensor<B, 3>>, y: &Tensor<B, 3>) -> Option<Tensor<B, 3>> {
    if !takes_fast_path::<B>() {
        return None;
    }
    let [b, n, d] = x.dims();
    if y.dims() != [b, n, d] || gate.is_some_and(|g| g.dims() != [b, 1, d]) || d == 0 {
        return None;
    }
    let (xt, yt) = (contiguous(x)?, contiguous(y)?);
    let gt = super::optional(gate, contiguous)?;
    let (xv, yv) = (xt.as_slice::<f32>()?, yt.as_slice::<f32>()?);
    let gv = super::optional(gt.as_ref(), |g| g.as_slice::<f32>())?;
    let mut out = vec![0.0f32; xv.len()];
    out.par_chunks_mut(d * ROWS_PER_JOB).enumerate().for_each(|(job, chunk)| simd(|| {
        for (r, dst) in chunk.chunks_exact_mut(d).enumerate() {
            let row = job * ROWS_PER_JOB + r;
            let (xr, yr) = (&xv[row * d..][..d], &yv[row * d..][..d]);
            match gv {
                Some(g) => {
                    let g = &g[(row / n) * d..][..d];
                    dst.iter_mut().zip(xr.iter().zip(yr.iter().zip(g))).for_each(|(o, (x, (y, g)))| *o = x + g * y);
                }
                None => dst.iter_mut().zip(xr.iter().zip(yr)).for_each(|(o, (x, y))| *o = x + y),
            }
        }
    }));
    Some(from_vec::<B, 3>(out, [b, n, d]))
}

/// Sum in 16 lanes (vectorizes; also more accurate than one running sum).
pub(super) fn sum(v: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let chunks = v.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        acc.iter_mut().zip(c).for_each(|(a, x)| *a += x);
    }
    acc.iter().sum::<f32>() + tail
}

/// Maximum in 16 lanes (NaN-ignoring, as `f32::max`).
pub(super) fn max(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = v.chunks_exact(16);
    let tail = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    for c in chunks {
        acc.iter_mut().zip(c).for_each(|(a, x)| *a = a.max(*x));
    }
    acc.iter().fold(tail, |m, &x| m.max(x))
}

pub(super) fn sum_sq(v: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let chunks = v.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|x| x * x).sum();
    for c in chunks {
        acc.iter_mut().zip(c).for_each(|(a, x)| *a += x * x);
    }
    acc.iter().sum::<f32>() + tail
}

/// GLUMBConv's middle: a depthwise 3×3 convolution (zero padding 1, with bias) over the
/// token grid `y` `[B, h, w, 2F]` (channel-last, `taps` `[3, 3, 2F]`), then `value ⊙
/// SiLU(gate)` of its two channel halves → `[B, h·w, F]`. One pass over the input per output
/// row, the nine taps accumulated in a cache-resident row buffer.
pub fn depthwise3x3_glu<B: Backend>(y: &Tensor<B, 4>, taps: &Tensor<B, 3>, bias: &Tensor<B, 1>) -> Option<Tensor<B, 3>> {
    if !takes_fast_path::<B>() {
        return None;
    }
    let [b, h, w, c2] = y.dims();
    if taps.dims() != [3, 3, c2] || bias.dims() != [c2] || c2 % 2 != 0 || h == 0 || w == 0 {
        return None;
    }
    let f = c2 / 2;
    let (yt, tt, bt) = (contiguous(y)?, contiguous(taps)?, contiguous(bias)?);
    let (yv, tv, bv) = (yt.as_slice::<f32>()?, tt.as_slice::<f32>()?, bt.as_slice::<f32>()?);
    let mut out = vec![0.0f32; b * h * w * f];
    out.par_chunks_mut(w * f).enumerate().for_each(|(job, dst)| simd(|| {
        let (bi, i) = (job / h, job % h);
        let mut acc = vec![0.0f32; c2];
        for j in 0..w {
            acc.copy_from_slice(bv);
            for di in 0..3 {
                let Some(ii) = (i + di).checked_sub(1).filter(|&ii| ii < h) else { continue };
                for dj in 0..3 {
                    let Some(jj) = (j + dj).checked_sub(1).filter(|&jj| jj < w) else { continue };
                    let src = &yv[((bi * h + ii) * w + jj) * c2..][..c2];
                    let tap = &tv[(di * 3 + dj) * c2..][..c2];
                    acc.iter_mut().zip(src.iter().zip(tap)).for_each(|(a, (x, t))| *a += x * t);
                }
            }
            let (value, gate) = acc.split_at(f);
            dst[j * f..][..f].iter_mut().zip(value.iter().zip(gate)).for_each(|(o, (v, g))| *o = v * silu(*g));
        }
    }));
    Some(from_vec::<B, 3>(out, [b, h * w, f]))
}

/// SANA's self-attention core on token-major `q`, `k`, `v` `[B, N, D]` (heads of `D / heads`
/// consecutive channels): per head, `out_n = Σₘ vₘ (kₘ·qₙ) / (Σₘ kₘ·qₙ + 1e-15)` with ReLU
/// applied to `q` and `k` here. Each (image, head) is one job: two small GEMMs on strided
/// views, the output written straight into its columns of the `[B, N, D]` result.
pub fn relu_linear_attention<B: Backend>(q: &Tensor<B, 3>, k: &Tensor<B, 3>, v: &Tensor<B, 3>, heads: usize) -> Option<Tensor<B, 3>> {
    if !takes_fast_path::<B>() {
        return None;
    }
    let [b, n, d] = q.dims();
    if k.dims() != [b, n, d] || v.dims() != [b, n, d] || heads == 0 || d % heads != 0 || n == 0 {
        return None;
    }
    let hd = d / heads;
    let (qt, kt, vt) = (contiguous(q)?, contiguous(k)?, contiguous(v)?);
    let (qv, kv_, vv) = (qt.as_slice::<f32>()?, kt.as_slice::<f32>()?, vt.as_slice::<f32>()?);
    let mut out = vec![0.0f32; b * n * d];
    let out_ptr = OutPtr(out.as_mut_ptr());
    (0..b * heads).into_par_iter().for_each(|job| {
        let (bi, hi) = (job / heads, job % heads);
        let base = bi * n * d + hi * hd;
        // ReLU'd copies of this head's q and k, [N, hd] contiguous.
        let head = |src: &[f32]| -> Vec<f32> {
            let mut t = Vec::with_capacity(n * hd);
            for r in 0..n {
                t.extend(src[base + r * d..][..hd].iter().map(|x| x.max(0.0)));
            }
            t
        };
        let (qh, kh) = (head(qv), head(kv_));
        // kv = khᵀ · v_h  [hd, hd]; k_sum = Σₙ kh  [hd].
        let mut kvm = vec![0.0f32; hd * hd];
        let mut k_sum = vec![0.0f32; hd];
        for r in 0..n {
            k_sum.iter_mut().zip(&kh[r * hd..][..hd]).for_each(|(s, x)| *s += x);
        }
        // SAFETY: kvm is hd × hd; kh is n × hd (read transposed: row stride 1, column stride
        // hd); v's head is n rows of hd at `base` with row stride d, all inside `vv`.
        unsafe {
            matmul([hd, hd, n], kvm.as_mut_ptr(), [hd, 1], false, kh.as_ptr(), [1, hd], vv.as_ptr().add(base), [d, 1], gemm::Parallelism::None);
        }
        let out_ptr = out_ptr;
        // SAFETY: the destination is this (image, head)'s n × hd block of `out` (row stride d),
        // which no other job writes; qh is n × hd, kvm hd × hd.
        unsafe {
            matmul([n, hd, hd], out_ptr.0.add(base), [d, 1], false, qh.as_ptr(), [hd, 1], kvm.as_ptr(), [hd, 1], gemm::Parallelism::None);
        }
        simd(|| for r in 0..n {
            let den: f32 = qh[r * hd..][..hd].iter().zip(&k_sum).map(|(a, b)| a * b).sum();
            let inv = den + 1e-15;
            // SAFETY: as above, row r of this job's block.
            let row = unsafe { std::slice::from_raw_parts_mut(out_ptr.0.add(base + r * d), hd) };
            row.iter_mut().for_each(|o| *o /= inv);
        });
    });
    Some(from_vec::<B, 3>(out, [b, n, d]))
}

/// Query rows per cross-attention job: a 64 × 300 score tile stays in L1/L2.
const QUERY_BLOCK: usize = 64;

/// Softmax attention on token-major `q` `[B, N, X]`, `k`, `v` `[B, L, X]` (heads of `X / heads`
/// consecutive channels) with an additive key bias `[B, 1, 1, L]`, scale `1/√(X/heads)` →
/// `[B, N, X]`. Jobs are (image, head, block of queries): the scores of a block, their softmax
/// and the product with the values, without copying q, k or v into head-major order.
pub fn cross_attention<B: Backend>(q: &Tensor<B, 3>, k: &Tensor<B, 3>, v: &Tensor<B, 3>, bias: &Tensor<B, 4>, heads: usize) -> Option<Tensor<B, 3>> {
    if !takes_fast_path::<B>() {
        return None;
    }
    let [b, n, x] = q.dims();
    let [_, l, _] = k.dims();
    if k.dims() != [b, l, x] || v.dims() != [b, l, x] || bias.dims() != [b, 1, 1, l] || heads == 0 || x % heads != 0 || n == 0 || l == 0 {
        return None;
    }
    let hd = x / heads;
    let scale = (hd as f32).powf(-0.5);
    let (qt, kt, vt, bt) = (contiguous(q)?, contiguous(k)?, contiguous(v)?, contiguous(bias)?);
    let (qv, kv_, vv, bv) = (qt.as_slice::<f32>()?, kt.as_slice::<f32>()?, vt.as_slice::<f32>()?, bt.as_slice::<f32>()?);
    let blocks = n.div_ceil(QUERY_BLOCK);
    let mut out = vec![0.0f32; b * n * x];
    let out_ptr = OutPtr(out.as_mut_ptr());
    (0..b * heads * blocks).into_par_iter().for_each(|job| {
        let (bi, rest) = (job / (heads * blocks), job % (heads * blocks));
        let (hi, blk) = (rest / blocks, rest % blocks);
        let r0 = blk * QUERY_BLOCK;
        let rows = QUERY_BLOCK.min(n - r0);
        let q_off = (bi * n + r0) * x + hi * hd;
        let kv_off = bi * l * x + hi * hd;
        let key_bias = &bv[bi * l..][..l];
        let out_ptr = out_ptr;
        // SAFETY: the query block is `rows` rows of hd at q_off (row stride x) inside `qv`, and
        // its destination the same rows of `out`, which no other job writes; this head's l keys
        // and values are rows of hd at kv_off (row stride x).
        unsafe {
            super::attention::softmax_block(
                [rows, l, hd],
                qv.as_ptr().add(q_off),
                kv_.as_ptr().add(kv_off),
                vv.as_ptr().add(kv_off),
                out_ptr.0.add(q_off),
                [x, x],
                |_, row: &mut [f32]| row.iter_mut().zip(key_bias).for_each(|(v, bias)| *v = *v * scale + bias),
            );
        }
    });
    Some(from_vec::<B, 3>(out, [b, n, x]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_3_ulp_of_libm() {
        let mut worst = 0.0f64;
        for i in -870_000..=887_000 {
            let x = i as f32 * 1e-4;
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            if want > f32::MIN_POSITIVE as f64 {
                worst = worst.max((got - want).abs() / want);
            }
        }
        assert!(worst < 3.0 * f32::EPSILON as f64, "max relative error {worst}");
        assert_eq!((exp(-1e4), exp(0.0), exp(1e4)), (0.0, 1.0, f32::INFINITY));
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
    }
}
