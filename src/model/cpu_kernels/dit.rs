//! CPU-backend kernels for DiT's adaLN-Zero blocks on token-major `[B, T, D]` activations: the
//! affine-free LayerNorm fused with its modulation, `LN(x)·(1 + scale) + shift`, and the gated
//! residual `x + gate·h`, with `shift`, `scale`, `gate` per image `[B, D]`.
//!
//! Why: burn's version of each is a chain of broadcasting ops; on the CPU backend every
//! broadcast walks a strided iterator and every op allocates, which took about a sixth of a
//! DiT-XL forward. Here each is one parallel pass over the rows.
//!
//! Both return `None` off the CPU backend or for unexpected shapes; the caller then runs
//! burn's ops, and the tests check that the two agree.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::sana::simd;
use super::{contiguous, from_vec, takes_fast_path};

/// Rows per rayon job.
const ROWS_PER_JOB: usize = 16;

/// `LayerNorm(x; eps, no affine)·(1 + scale) + shift`, the statistics in f64 like a two-pass
/// f32 reduction would be at this width (D ≤ 16384).
pub fn modulated_layer_norm<B: Backend>(x: &Tensor<B, 3>, shift: &Tensor<B, 2>, scale: &Tensor<B, 2>, eps: f32) -> Option<Tensor<B, 3>> {
    if !takes_fast_path::<B>() {
        return None;
    }
    let [b, t, d] = x.dims();
    if shift.dims() != [b, d] || scale.dims() != [b, d] || d == 0 {
        return None;
    }
    let (xt, sh, sc) = (contiguous(x)?, contiguous(shift)?, contiguous(scale)?);
    let (xv, shv, scv) = (xt.as_slice::<f32>()?, sh.as_slice::<f32>()?, sc.as_slice::<f32>()?);
    let mut out = vec![0.0f32; xv.len()];
    out.par_chunks_mut(ROWS_PER_JOB * d).enumerate().for_each(|(job, dst)| simd(|| {
        for (r, row) in dst.chunks_exact_mut(d).enumerate() {
            let global = job * ROWS_PER_JOB + r;
            let img = global / t;
            let src = &xv[global * d..(global + 1) * d];
            let mean = src.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
            let var = src.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
            let (mean, inv) = (mean as f32, (1.0 / (var + eps as f64).sqrt()) as f32);
            let (shift, scale) = (&shv[img * d..(img + 1) * d], &scv[img * d..(img + 1) * d]);
            for i in 0..d {
                row[i] = (src[i] - mean) * inv * (1.0 + scale[i]) + shift[i];
            }
        }
    }));
    Some(from_vec::<B, 3>(out, [b, t, d]))
}

/// `x + gate·h` with `gate` `[B, D]` broadcast over the tokens.
pub fn gated_add<B: Backend>(x: &Tensor<B, 3>, gate: &Tensor<B, 2>, h: &Tensor<B, 3>) -> Option<Tensor<B, 3>> {
    if !takes_fast_path::<B>() {
        return None;
    }
    let [b, t, d] = x.dims();
    if h.dims() != [b, t, d] || gate.dims() != [b, d] || d == 0 {
        return None;
    }
    let (xt, gt, ht) = (contiguous(x)?, contiguous(gate)?, contiguous(h)?);
    let (xv, gv, hv) = (xt.as_slice::<f32>()?, gt.as_slice::<f32>()?, ht.as_slice::<f32>()?);
    let mut out = vec![0.0f32; xv.len()];
    out.par_chunks_mut(ROWS_PER_JOB * d).enumerate().for_each(|(job, dst)| simd(|| {
        for (r, row) in dst.chunks_exact_mut(d).enumerate() {
            let global = job * ROWS_PER_JOB + r;
            let g = &gv[(global / t) * d..(global / t + 1) * d];
            let (xs, hs) = (&xv[global * d..(global + 1) * d], &hv[global * d..(global + 1) * d]);
            for i in 0..d {
                row[i] = xs[i] + g[i] * hs[i];
            }
        }
    }));
    Some(from_vec::<B, 3>(out, [b, t, d]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    type Cpu = burn::backend::Flex;

    fn t<const D: usize>(shape: [usize; D], seed: u32) -> Tensor<Cpu, D> {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed)) % 1000) as f32 / 250.0 - 2.0).collect();
        Tensor::from_data(TensorData::new(v, shape), &Default::default())
    }

    fn max_diff<const D: usize>(a: Tensor<Cpu, D>, b: Tensor<Cpu, D>) -> f32 {
        let (a, b) = (a.into_data().to_vec::<f32>().unwrap(), b.into_data().to_vec::<f32>().unwrap());
        a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// Each kernel equals burn's op chain (`B = 2`, `T = 37` rows so jobs straddle images).
    #[test]
    fn fused_adaln_kernels_equal_burns_ops() {
        let (x, h) = (t([2, 37, 48], 1), t([2, 37, 48], 2));
        let (shift, scale, gate) = (t([2, 48], 3), t([2, 48], 4), t([2, 48], 5));
        let mean = x.clone().mean_dim(2);
        let c = x.clone() - mean;
        let var = c.clone().square().mean_dim(2);
        let want = c / (var + 1e-6).sqrt() * (scale.clone().unsqueeze_dim::<3>(1) + 1.0) + shift.clone().unsqueeze_dim::<3>(1);
        assert!(max_diff(modulated_layer_norm(&x, &shift, &scale, 1e-6).unwrap(), want) < 1e-5);
        let want = x.clone() + gate.clone().unsqueeze_dim::<3>(1) * h.clone();
        assert_eq!(max_diff(gated_add(&x, &gate, &h).unwrap(), want), 0.0);
    }
}
