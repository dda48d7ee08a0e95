//! The discrete VP noise schedule the DC-AE UViTs were trained with, as DPM-Solver sees it.
//!
//! The reference (efficientvit's `NoiseScheduleVP("discrete", betas)`) evaluates everything in
//! float32 torch ops, so this module mirrors that arithmetic step by step in a scalar type
//! `S` ([`Real`]): `f32` reproduces the reference, `f64` exists to measure how much the f32
//! rounding matters (see the sampler tests). The places where the reference is *not* plain f32
//! are called out where they happen (the f64 betas, PyTorch's double accumulator in `cumsum`, and
//! `linspace`'s single-rounding formula).

use std::fmt::Debug;
use std::ops::{Add, Div, Mul, Neg, Sub};

/// The scalar type the schedule and the solver coefficients are computed in.
pub trait Real:
    Copy
    + Debug
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + Send
    + Sync
    + 'static
{
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn exp_m1(self) -> Self;
    fn ln_1p(self) -> Self;
    fn abs(self) -> Self;
    /// `self * a + b` with a single rounding.
    fn mul_add(self, a: Self, b: Self) -> Self;

    fn from_usize(v: usize) -> Self {
        Self::from_f64(v as f64)
    }
    fn max(self, other: Self) -> Self {
        if self >= other {
            self
        } else {
            other
        }
    }
}

macro_rules! impl_real {
    ($t:ty) => {
        impl Real for $t {
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn exp_m1(self) -> Self {
                <$t>::exp_m1(self)
            }
            fn ln_1p(self) -> Self {
                <$t>::ln_1p(self)
            }
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            fn mul_add(self, a: Self, b: Self) -> Self {
                <$t>::mul_add(self, a, b)
            }
        }
    };
}
impl_real!(f32);
impl_real!(f64);

/// `torch.linspace(start, end, n)` in precision `S`.
///
/// PyTorch's CPU kernel computes the first half as `start + step·i` and the second half as
/// `end − step·(n−1−i)`, each with one rounding (a fused multiply-add); the 31-point grid stored
/// in the uvit-tiny fixture matches this bit for bit, while the naive `start + step·i` differs
/// in five places.
pub fn linspace<S: Real>(start: S, end: S, n: usize) -> Vec<S> {
    match n {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (end - start) / S::from_usize(n - 1);
            let half = n / 2;
            (0..n)
                .map(|i| {
                    if i < half {
                        step.mul_add(S::from_usize(i), start)
                    } else {
                        (-step).mul_add(S::from_usize(n - 1 - i), end)
                    }
                })
                .collect()
        }
    }
}

/// Piecewise-linear interpolation through the knots `(xp, yp)` (`xp` ascending), extended
/// linearly beyond both ends — efficientvit's `interpolate_fn` for one point.
///
/// The reference finds the segment by sorting `x` into the knots; its stable sort puts `x`
/// before an equal knot, which is what `partition_point(< x)` reproduces here.
pub fn interpolate<S: Real>(x: S, xp: &[S], yp: &[S]) -> S {
    let k = xp.len();
    debug_assert!(k >= 2 && yp.len() == k);
    let below = xp.partition_point(|&v| v < x);
    let j = if below == 0 {
        0
    } else if below >= k {
        k - 2
    } else {
        below - 1
    };
    let (sx, ex, sy, ey) = (xp[j], xp[j + 1], yp[j], yp[j + 1]);
    // Same evaluation order as the reference: sy + ((x − sx)·(ey − sy)) / (ex − sx).
    sy + (x - sx) * (ey - sy) / (ex - sx)
}

/// PyTorch's `logaddexp(a, b)`: `max + log1p(exp(−|a − b|))`.
fn logaddexp<S: Real>(a: S, b: S) -> S {
    let m = a.max(b);
    m + (-(a - b).abs()).exp().ln_1p()
}

/// `NoiseScheduleVP(schedule="discrete")` over continuous time `t ∈ [1/N, 1]`.
#[derive(Debug, Clone)]
pub struct NoiseScheduleVP<S: Real = f32> {
    /// `t_k = linspace(1/N, 1, N)`.
    t: Vec<S>,
    /// `log α_k = ½·cumsum(log(1 − β))`.
    log_alpha: Vec<S>,
    /// The two tables reversed, so that `log α` ascends (for [`Self::inverse_lambda`]).
    log_alpha_rev: Vec<S>,
    t_rev: Vec<S>,
}

impl<S: Real> NoiseScheduleVP<S> {
    /// Stable Diffusion's "scaled_linear" betas: `linspace(√start, √end, n)` in f64, squared,
    /// then stored as **f32** (the reference builds them in float64 numpy and casts with
    /// `.float()`), whatever `S` is.
    pub fn scaled_linear(beta_start: f64, beta_end: f64, n: usize) -> Self {
        let betas: Vec<f32> =
            linspace(beta_start.sqrt(), beta_end.sqrt(), n).into_iter().map(|b| (b * b) as f32).collect();
        Self::from_betas(&betas)
    }

    /// The schedule of a discrete-time model with these betas.
    ///
    /// `log(1 − β)` is taken in `S`; the running sum is accumulated in f64 because PyTorch's CPU
    /// `cumsum` accumulates float32 in a double and rounds each partial sum to float32.
    pub fn from_betas(betas: &[f32]) -> Self {
        let n = betas.len();
        let one = S::from_f64(1.0);
        let half = S::from_f64(0.5);
        let mut acc = 0.0f64;
        let log_alpha: Vec<S> = betas
            .iter()
            .map(|&b| {
                acc += (one - S::from_f64(b as f64)).ln().to_f64();
                half * S::from_f64(acc)
            })
            .collect();
        // `torch.linspace(1.0 / N, 1.0, N)`: the Python double 1/N becomes a float32 scalar.
        let t = linspace(S::from_f64(1.0 / n as f64), one, n);
        let log_alpha_rev = log_alpha.iter().rev().copied().collect();
        let t_rev = t.iter().rev().copied().collect();
        Self { t, log_alpha, log_alpha_rev, t_rev }
    }

    /// Number of discrete training steps `N`.
    pub fn total_n(&self) -> usize {
        self.t.len()
    }

    /// `log α_t` (piecewise linear in `t`).
    pub fn log_alpha(&self, t: S) -> S {
        interpolate(t, &self.t, &self.log_alpha)
    }

    /// `α_t = exp(log α_t)`.
    pub fn alpha(&self, t: S) -> S {
        self.log_alpha(t).exp()
    }

    /// `σ_t = √(1 − exp(2·log α_t))`.
    pub fn sigma(&self, t: S) -> S {
        let two = S::from_f64(2.0);
        (S::from_f64(1.0) - (two * self.log_alpha(t)).exp()).sqrt()
    }

    /// Half log-SNR `λ_t = log α_t − ½·log(1 − exp(2·log α_t))`.
    pub fn lambda(&self, t: S) -> S {
        let la = self.log_alpha(t);
        let log_sigma = S::from_f64(0.5) * (S::from_f64(1.0) - (S::from_f64(2.0) * la).exp()).ln();
        la - log_sigma
    }

    /// `t` for a given `λ`: `log α = −½·logaddexp(0, −2λ)`, then interpolation over the reversed
    /// tables.
    pub fn inverse_lambda(&self, lambda: S) -> S {
        let zero = S::from_f64(0.0);
        let log_alpha = S::from_f64(-0.5) * logaddexp(zero, S::from_f64(-2.0) * lambda);
        interpolate(log_alpha, &self.log_alpha_rev, &self.t_rev)
    }
}
