//! CPU-backend kernels for Gemma-2 on token-major (`[B, L, C]`) activations: its RMSNorm (alone
//! and fused with the residual add that follows each sandwich norm), the tanh-GELU gate of the
//! MLP, RoPE, and the causal, soft-capped, grouped-query attention core.
//!
//! Why: with the Linear layers on `gemm`, a Gemma-2-2B encode of a 540-token prompt still spent
//! a quarter of its time in burn's elementwise chains (single-threaded, one allocation per op,
//! libm's scalar `tanh` / `powf` / `expm1`) and in the strided copies of the heads' `swap_dims`.
//! Here each is one parallel pass, and the attention reads q, k and v where the projections
//! wrote them.
//!
//! Every function returns `None` off the CPU backend (or when the tensors are not f32, or the
//! shapes are not the expected ones); the caller then runs burn's ops, and the tests check
//! that the two agree.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::attention;
use super::sana::{exp, simd, sum_sq};
use super::{contiguous, from_vec, takes_fast_path, OutPtr};

/// Whether these kernels run on `B` (the callers skip preparing their inputs otherwise).
pub fn available<B: Backend>() -> bool {
    takes_fast_path::<B>()
}

/// Rows per rayon job in the row-wise kernels.
const ROWS_PER_JOB: usize = 8;

/// `tanh(x)` without a libm call, so that loops over it vectorize: an odd Taylor series below
/// |x| = 0.3 (where `1 − 2/(e^{2x} + 1)` would lose relative precision), that expression above.
/// Within 1e-6 relative of `tanh` in f64 everywhere (see the test).
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let a = x.abs();
    let a2 = a * a;
    let small = a * (1.0 + a2 * (-1.0 / 3.0 + a2 * (2.0 / 15.0 + a2 * (-17.0 / 315.0 + a2 * (62.0 / 2835.0 + a2 * (-1382.0 / 155_925.0))))));
    let big = 1.0 - 2.0 / (exp(2.0 * a) + 1.0);
    let t = if a < 0.3 { small } else { big };
    t.copysign(x)
}

/// transformers' `gelu_pytorch_tanh`: `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
#[inline(always)]
pub(super) fn gelu_tanh(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // √(2/π)
    0.5 * x * (1.0 + tanh(C * (x + 0.044_715 * x * x * x)))
}

/// Gemma's RMSNorm `x · rsqrt(mean(x²) + eps) · scale` over the last axis (`scale` = 1 + w,
/// folded at load), and with `residual` the sum `residual + norm(x)`.
pub fn rms_norm<B: Backend>(x: &Tensor<B, 3>, scale: &Tensor<B, 1>, eps: f32, residual: Option<&Tensor<B, 3>>) -> Option<Tensor<B, 3>> {
    if !takes_fast_path::<B>() {
        return None;
    }
    let [b, l, d] = x.dims();
    if scale.dims() != [d] || d == 0 || residual.is_some_and(|r| r.dims() != [b, l, d]) {
        return None;
    }
    let (xt, st) = (contiguous(x)?, contiguous(scale)?);
    let rt = match residual {
        Some(r) => Some(contiguous(r)?),
        None => None,
    };
    let (xv, sv) = (xt.as_slice::<f32>()?, st.as_slice::<f32>()?);
    let rv = match &rt {
        Some(r) => Some(r.as_slice::<f32>()?),
        None => None,
    };
    let mut out = vec![0.0f32; xv.len()];
    out.par_chunks_mut(d * ROWS_PER_JOB).enumerate().for_each(|(job, chunk)| simd(|| {
        for (r, dst) in chunk.chunks_exact_mut(d).enumerate() {
            let at = (job * ROWS_PER_JOB + r) * d;
            let src = &xv[at..][..d];
            let inv = 1.0 / (sum_sq(src) / d as f32 + eps).sqrt();
            match rv {
                Some(rv) => dst.iter_mut().zip(src.iter().zip(sv).zip(&rv[at..][..d])).for_each(|(o, ((v, s), res))| *o = res + v * inv * s),
                None => dst.iter_mut().zip(src.iter().zip(sv)).for_each(|(o, (v, s))| *o = v * inv * s),
            }
        }
    }));
    Some(from_vec::<B, 3>(out, [b, l, d]))
}

/// `gelu_tanh(gate) · up`, the gate of Gemma's MLP, in one parallel pass.
pub fn gelu_tanh_mul<B: Backend>(gate: &Tensor<B, 3>, up: &Tensor<B, 3>) -> Option<Tensor<B, 3>> {
    if !takes_fast_path::<B>() || gate.dims() != up.dims() {
        return None;
    }
    let (gt, ut) = (contiguous(gate)?, contiguous(up)?);
    let (gv, uv) = (gt.as_slice::<f32>()?, ut.as_slice::<f32>()?);
    const CHUNK: usize = 16 * 1024;
    let mut out = vec![0.0f32; gv.len()];
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(job, dst)| simd(|| {
        let at = job * CHUNK;
        dst.iter_mut().zip(gv[at..].iter().zip(&uv[at..])).for_each(|(o, (g, u))| *o = gelu_tanh(*g) * u);
    }));
    Some(from_vec::<B, 3>(out, gate.dims()))
}

/// Rotate-half RoPE on token-major `x` `[B, L, heads · hd]`: per head,
/// `x·cos + cat(−x₂, x₁)·sin` with `cos`, `sin` `[1, 1, L, hd]` (both halves equal).
pub fn rope<B: Backend>(x: &Tensor<B, 3>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>, heads: usize) -> Option<Tensor<B, 3>> {
    if !takes_fast_path::<B>() {
        return None;
    }
    let [b, l, c] = x.dims();
    let [.., cl, hd] = cos.dims();
    if heads == 0 || c != heads * hd || hd % 2 != 0 || cl != l || sin.dims() != cos.dims() {
        return None;
    }
    let half = hd / 2;
    let (xt, ct, st) = (contiguous(x)?, contiguous(cos)?, contiguous(sin)?);
    let (xv, cv, sv) = (xt.as_slice::<f32>()?, ct.as_slice::<f32>()?, st.as_slice::<f32>()?);
    let mut out = vec![0.0f32; xv.len()];
    out.par_chunks_mut(c).enumerate().for_each(|(row, dst)| simd(|| {
        let pos = row % l;
        let (cos, sin) = (&cv[pos * hd..][..hd], &sv[pos * hd..][..hd]);
        let src = &xv[row * c..][..c];
        for (o, x) in dst.chunks_exact_mut(hd).zip(src.chunks_exact(hd)) {
            let (x1, x2) = x.split_at(half);
            let (o1, o2) = o.split_at_mut(half);
            for i in 0..half {
                o1[i] = x1[i] * cos[i] - x2[i] * sin[i];
                o2[i] = x2[i] * cos[half + i] + x1[i] * sin[half + i];
            }
        }
    }));
    Some(from_vec::<B, 3>(out, [b, l, c]))
}

/// How the attention masks keys: causal, limited to the last `window` keys, and the padding.
#[derive(Debug, Clone, Copy)]
pub struct AttentionMask<'a> {
    /// `[B · L]`, 1 for a real token, 0 for padding.
    pub keep: &'a [f32],
    pub window: Option<usize>,
    /// Added to the score of a key that must not be seen, once per reason (causal and padding),
    /// exactly as the additive masks of burn's path add up.
    pub masked: f32,
}

/// Query rows per attention job.
const QUERY_BLOCK: usize = 64;

/// Gemma-2's attention core on token-major `q` `[B, L, H·hd]`, `k`, `v` `[B, L, KV·hd]`: query
/// head `h` uses kv head `h / (H / KV)`; scores `q·k · scale`, soft-capped
/// `cap · tanh(s / cap)`, the mask added, softmax, times v → `[B, L, H·hd]`, ready for `o_proj`.
///
/// Keys after a block's last query are causally masked for every row of the block, and their
/// `exp(score − max)` is exactly 0 in f32 (−1e9 against scores within ±cap), so they are not
/// computed, unless key 0 is padding (left-padded input), where a row may see no key at all and
/// every key counts in its uniform softmax.
#[allow(clippy::too_many_arguments)]
pub fn attention<B: Backend>(q: &Tensor<B, 3>, k: &Tensor<B, 3>, v: &Tensor<B, 3>, heads: usize, kv_heads: usize, scale: f32, softcap: Option<f32>, mask: AttentionMask<'_>) -> Option<Tensor<B, 3>> {
    if !takes_fast_path::<B>() {
        return None;
    }
    let [b, l, qc] = q.dims();
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 || qc % heads != 0 || l == 0 || mask.keep.len() != b * l {
        return None;
    }
    let hd = qc / heads;
    let kc = kv_heads * hd;
    if k.dims() != [b, l, kc] || v.dims() != [b, l, kc] {
        return None;
    }
    let groups = heads / kv_heads;
    let (qt, kt, vt) = (contiguous(q)?, contiguous(k)?, contiguous(v)?);
    let (qv, kv_, vv) = (qt.as_slice::<f32>()?, kt.as_slice::<f32>()?, vt.as_slice::<f32>()?);
    let blocks = l.div_ceil(QUERY_BLOCK);
    let mut out = vec![0.0f32; b * l * qc];
    let out_ptr = OutPtr(out.as_mut_ptr());
    (0..b * heads * blocks).into_par_iter().for_each(|job| {
        let (bi, rest) = (job / (heads * blocks), job % (heads * blocks));
        let (hi, blk) = (rest / blocks, rest % blocks);
        let r0 = blk * QUERY_BLOCK;
        let rows = QUERY_BLOCK.min(l - r0);
        let keep = &mask.keep[bi * l..][..l];
        let keys = if keep[0] != 0.0 { r0 + rows } else { l };
        let q_off = (bi * l + r0) * qc + hi * hd;
        let kv_off = bi * l * kc + (hi / groups) * hd;
        let logits = |r: usize, row: &mut [f32]| {
            let qi = r0 + r;
            match softcap {
                Some(cap) => row.iter_mut().for_each(|v| *v = tanh(*v * scale / cap) * cap),
                None => row.iter_mut().for_each(|v| *v *= scale),
            }
            for (ki, v) in row.iter_mut().enumerate() {
                let visible = ki <= qi && mask.window.is_none_or(|w| qi - ki < w);
                let causal = if visible { 0.0 } else { mask.masked };
                let pad = if keep[ki] != 0.0 { 0.0 } else { mask.masked };
                *v = *v + (causal + pad);
            }
        };
        let out_ptr = out_ptr;
        // SAFETY: the query block is `rows` rows of hd at q_off (row stride qc) inside `qv`,
        // and its destination the same rows of `out`, which no other job writes; this kv
        // head's `keys` keys and values are rows of hd at kv_off (row stride kc).
        unsafe {
            attention::softmax_block(
                [rows, keys, hd],
                qv.as_ptr().add(q_off),
                kv_.as_ptr().add(kv_off),
                vv.as_ptr().add(kv_off),
                out_ptr.0.add(q_off),
                [qc, kc],
                logits,
            );
        }
    });
    Some(from_vec::<B, 3>(out, [b, l, qc]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tanh_is_within_1e_6_relative() {
        let mut worst = 0.0f64;
        for i in -200_000..=200_000 {
            let x = i as f32 * 1e-4;
            let (got, want) = (tanh(x) as f64, (x as f64).tanh());
            if want != 0.0 {
                worst = worst.max(((got - want) / want).abs());
            }
        }
        assert!(worst < 1e-6, "max relative error {worst}");
        assert_eq!((tanh(0.0), tanh(100.0), tanh(-100.0)), (0.0, 1.0, -1.0));
        assert!(tanh(f32::NAN).is_nan());
    }
}
