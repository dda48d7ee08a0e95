//! The job both softmax attentions of the CPU backend share (SANA's cross-attention and
//! Gemma-2's causal one): one head's block of queries against its keys, in place in the
//! projections' token-major layout.

use super::sana::{exp, max, simd, sum};
use super::matmul;

/// `out = softmax(logits(q·kᵀ)) · v` for `rows` queries against `keys` keys of one head of
/// width `hd`. `logits(r, row)` turns query `r`'s dot products into its logits in place (the
/// scale, a soft cap, masks). `q` and `out` share one layout (row stride `q_stride`), `k` and
/// `v` another (row stride `kv_stride`).
///
/// # Safety
/// `q` must hold `rows` rows of `hd` floats at row stride `q_stride`, `k` and `v` `keys` rows of
/// `hd` at row stride `kv_stride`, and `out` `rows` rows of `hd` at row stride `q_stride` that
/// nothing else reads or writes during the call.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn softmax_block(
    [rows, keys, hd]: [usize; 3],
    q: *const f32,
    k: *const f32,
    v: *const f32,
    out: *mut f32,
    [q_stride, kv_stride]: [usize; 2],
    logits: impl Fn(usize, &mut [f32]),
) {
    let mut s = vec![0.0f32; rows * keys];
    // SAFETY: s is rows × keys; kᵀ is read with row stride 1 and column stride kv_stride, the
    // caller's keys × hd block transposed.
    unsafe {
        matmul([rows, keys, hd], s.as_mut_ptr(), [keys, 1], false, q, [q_stride, 1], k, [1, kv_stride], gemm::Parallelism::None);
    }
    simd(|| {
        for (r, row) in s.chunks_exact_mut(keys).enumerate() {
            logits(r, row);
            let max = max(row);
            row.iter_mut().for_each(|v| *v = exp(*v - max));
            let inv = 1.0 / sum(row);
            row.iter_mut().for_each(|v| *v *= inv);
        }
    });
    // SAFETY: the destination is the caller's rows × hd block; s is rows × keys.
    unsafe {
        matmul([rows, hd, keys], out, [q_stride, 1], false, s.as_ptr(), [keys, 1], v, [kv_stride, 1], gemm::Parallelism::None);
    }
}
