//! The ODE solvers USiT samples with: torchdiffeq's adaptive `dopri5` and fixed-grid `heun2`
//! as SiT's `Sampler.sample_ode` calls them (efficientvit `diffusioncore/models/sit_sampler/`
//! at commit de7d773; torchdiffeq `_impl/{rk_common,dopri5,misc,interp,fixed_grid}.py` at
//! commit 657943a), integrating the probability-flow ODE `dx/dt = v(x, t)` from noise at t = 0
//! to data at t = 1.
//!
//! What parity needs, mirrored here (and measured against the original in the fixtures):
//! - the state and every Runge–Kutta combination are float32 tensors; the solver's times are
//!   float64, cast to float32 for each stage, and the two stages at the step's end are given
//!   the float32 time just *below* it (`Perturb.PREV`, `nextafter`);
//! - the tolerances are 1-element float64 tensors in the original, so the error ratio and the
//!   initial-step norms are computed in float64 (here on the host): RMS over the whole state;
//! - step control: safety 0.9, growth ≤ 10, shrink ≥ 0.2 (only after a rejection),
//!   exponent 1/5; the first step from Hairer's estimate (two network calls);
//! - the step is never clipped to t = 1: the solver steps past it and the value at 1 is the
//!   4th-order dense-output interpolation of the step that crossed it;
//! - `heun2` steps exactly between the float32 `linspace(t0, 1, num_steps)` points.

use burn::tensor::{backend::Backend, Tensor, TensorData};

use crate::model::diffusion::GenerateError;

/// Dormand–Prince 5(4) tableau (`_DORMAND_PRINCE_SHAMPINE_TABLEAU`), as float32 like the
/// original casts it to the state's dtype.
const ALPHA: [f64; 6] = [1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0, 1.0];
const BETA: [&[f64]; 6] = [
    &[1.0 / 5.0],
    &[3.0 / 40.0, 9.0 / 40.0],
    &[44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0],
    &[19372.0 / 6561.0, -25360.0 / 2187.0, 64448.0 / 6561.0, -212.0 / 729.0],
    &[9017.0 / 3168.0, -355.0 / 33.0, 46732.0 / 5247.0, 49.0 / 176.0, -5103.0 / 18656.0],
    &[35.0 / 384.0, 0.0, 500.0 / 1113.0, 125.0 / 192.0, -2187.0 / 6784.0, 11.0 / 84.0],
];
const C_ERROR: [f64; 7] = [
    35.0 / 384.0 - 1951.0 / 21600.0,
    0.0,
    500.0 / 1113.0 - 22642.0 / 50085.0,
    125.0 / 192.0 - 451.0 / 720.0,
    -2187.0 / 6784.0 - -12231.0 / 42400.0,
    11.0 / 84.0 - 649.0 / 6300.0,
    -1.0 / 60.0,
];
const C_MID: [f64; 7] = [
    6025192743.0 / 30085553152.0 / 2.0,
    0.0,
    51252292925.0 / 65400821598.0 / 2.0,
    -2691868925.0 / 45128329728.0 / 2.0,
    187940372067.0 / 1594534317056.0 / 2.0,
    -1776094331.0 / 19743644256.0 / 2.0,
    11237099.0 / 235043384.0 / 2.0,
];
const SAFETY: f64 = 0.9;
const IFACTOR: f64 = 10.0;
const DFACTOR: f64 = 0.2;
const ORDER: f64 = 5.0;
/// torchdiffeq's `max_num_steps` is 2³¹ − 1; a run that needs more than this many attempted
/// steps has a network that returns garbage (NaN steps shrink without end), so stop earlier.
pub const MAX_STEPS: usize = 100_000;

/// Solver tolerances (`sample_ode(atol=1e-6, rtol=1e-3)` in the zoo).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerances {
    pub atol: f64,
    pub rtol: f64,
}

/// What a solver reports after each accepted step.
pub struct OdeStep<B: Backend> {
    /// Accepted steps so far (1-based).
    pub step: usize,
    /// Estimated total: exact for heun2, a running estimate for dopri5.
    pub total: usize,
    pub t: f64,
    pub x: Tensor<B, 4>,
    /// The velocity at `(x, t)` when the solver has it (dopri5's last stage), for previews.
    pub v: Option<Tensor<B, 4>>,
}

/// The solver's view of the network: the velocity at float32 time `t`.
pub type Velocity<'a, B> = dyn FnMut(Tensor<B, 4>, f32) -> Result<Tensor<B, 4>, GenerateError> + 'a;

fn host(x: &Tensor<impl Backend, 4>) -> Vec<f32> {
    x.clone().into_data().convert::<f32>().into_vec::<f32>().unwrap_or_default()
}

/// `rms(v)` in float64, torchdiffeq's `_rms_norm`.
fn rms(v: impl Iterator<Item = f64>) -> f64 {
    let (mut sum, mut n) = (0.0f64, 0usize);
    for x in v {
        sum += x * x;
        n += 1;
    }
    (sum / n.max(1) as f64).sqrt()
}

/// The float32 number just below `t` (`torch.nextafter(t, t − 1)`).
fn prev_f32(t: f32) -> f32 {
    if t.is_nan() || t == f32::NEG_INFINITY {
        return t;
    }
    if t == 0.0 {
        return -f32::from_bits(1);
    }
    let bits = t.to_bits();
    f32::from_bits(if t > 0.0 { bits - 1 } else { bits + 1 })
}

/// `y0 + Σ_j k_j · (c_j · dt)` in float32, the coefficient products first, as
/// `torch.sum(k * (beta_i * dt), -1)` forms them.
fn combine<B: Backend>(y0: &Tensor<B, 4>, k: &[Tensor<B, 4>], coeffs: &[f64], dt: f32) -> Tensor<B, 4> {
    let mut acc: Option<Tensor<B, 4>> = None;
    for (kj, &c) in k.iter().zip(coeffs) {
        let w = (c as f32) * dt;
        if w == 0.0 {
            continue;
        }
        let term = kj.clone().mul_scalar(w);
        acc = Some(match acc {
            Some(a) => a + term,
            None => term,
        });
    }
    match acc {
        Some(a) => y0.clone() + a,
        None => y0.clone(),
    }
}

/// `_select_initial_step` for order 5 (Hairer, Nørsett & Wanner II.4), from `f0 = v(y0, t0)`.
fn initial_step<B: Backend>(f: &mut Velocity<'_, B>, t0: f64, y0: &Tensor<B, 4>, f0: &Tensor<B, 4>, tol: Tolerances) -> Result<f64, GenerateError> {
    let (y, fv) = (host(y0), host(f0));
    let scale: Vec<f64> = y.iter().map(|v| tol.atol + (*v as f64).abs() * tol.rtol).collect();
    let d0 = rms(y.iter().zip(&scale).map(|(v, s)| *v as f64 / s));
    let d1 = rms(fv.iter().zip(&scale).map(|(v, s)| *v as f64 / s));
    // The fallback is a float32 tensor in the original (`dtype = y0.dtype`).
    let h0 = if d0 < 1e-5 || d1 < 1e-5 { 1e-6f32 as f64 } else { 0.01 * d0 / d1 };
    let y1 = y0.clone() + f0.clone().mul_scalar(h0 as f32);
    let f1 = f(y1, (t0 + h0) as f32)?;
    let f1v = host(&f1);
    let d2 = rms(f1v.iter().zip(&fv).zip(&scale).map(|((a, b), s)| (a - b) as f64 / s)) / h0;
    let h1 = if d1 <= 1e-15 && d2 <= 1e-15 { (1e-6f64).max(h0 * 1e-3) } else { (0.01 / d1.max(d2)).powf(1.0 / ORDER) };
    Ok((100.0 * h0).min(h1))
}

/// `_optimal_step_size`.
fn next_step(dt: f64, ratio: f64) -> f64 {
    if ratio == 0.0 {
        return dt * IFACTOR;
    }
    let dfactor = if ratio < 1.0 { 1.0 } else { DFACTOR };
    let factor = IFACTOR.min((SAFETY / ratio.powf(1.0 / ORDER)).max(dfactor));
    dt * factor
}

/// Integrates `dx/dt = v(x, t)` from `t0` to `t1` with adaptive Dormand–Prince 5(4). Returns
/// the state at `t1` and the number of velocity evaluations. `on_step` sees every accepted
/// step; `Err` from `v` (a cancel) stops at once.
pub fn dopri5<B: Backend>(
    v: &mut Velocity<'_, B>,
    x0: Tensor<B, 4>,
    t0: f64,
    t1: f64,
    tol: Tolerances,
    on_step: &mut dyn FnMut(OdeStep<B>),
) -> Result<(Tensor<B, 4>, usize), GenerateError> {
    let mut nfe = 0usize;
    let mut f = |x: Tensor<B, 4>, t: f32| {
        nfe += 1;
        v(x, t)
    };
    let mut y = x0;
    let mut t = t0;
    let mut fy = f(y.clone(), t0 as f32)?;
    let mut dt = initial_step(&mut f, t0, &y, &fy, tol)?;
    let mut accepted = 0usize;
    let mut attempts = 0usize;
    loop {
        attempts += 1;
        if attempts > MAX_STEPS {
            return Err(GenerateError::Sampler(crate::sampler::SamplerError::Invalid(format!(
                "dopri5 took {MAX_STEPS} steps without reaching t = {t1}: the network's velocities are not finite or not smooth"
            ))));
        }
        if !dt.is_finite() {
            dt = 0.0;
        }
        let t_next = t + dt;
        if t_next <= t {
            return Err(GenerateError::Sampler(crate::sampler::SamplerError::Invalid(format!("dopri5's step size underflowed at t = {t} (dt = {dt:e})"))));
        }
        // The stages in float32, as `_runge_kutta_step` casts t0, dt and t1.
        let (t0f, dtf, t1f) = (t as f32, dt as f32, t_next as f32);
        let mut k: Vec<Tensor<B, 4>> = vec![fy.clone()];
        let mut yi = y.clone();
        for (i, (&alpha, beta)) in ALPHA.iter().zip(BETA.iter()).enumerate() {
            let ti = if alpha == 1.0 { prev_f32(t1f) } else { t0f + (alpha as f32) * dtf };
            yi = combine(&y, &k[..=i], beta, dtf);
            k.push(f(yi.clone(), ti)?);
        }
        // FSAL: the solution is the last stage's input, its velocity the last stage's output.
        let y_new = yi;
        let f_new = k[6].clone();
        let err = combine(&Tensor::zeros(y.dims(), &y.device()), &k, &C_ERROR, dtf);
        let (ev, y0v, y1v) = (host(&err), host(&y), host(&y_new));
        let ratio = rms(ev.iter().zip(y0v.iter().zip(&y1v)).map(|(e, (a, b))| *e as f64 / (tol.atol + tol.rtol * (a.abs().max(b.abs())) as f64)));
        if !ratio.is_finite() {
            return Err(GenerateError::Sampler(crate::sampler::SamplerError::Invalid(format!(
                "the network's velocities are not finite at t = {t:.4}: the weights or the inputs are broken"
            ))));
        }
        let accept = ratio <= 1.0;
        let dt_next = next_step(dt, ratio).max(0.0);
        if accept {
            if t_next >= t1 {
                // Dense output at t1 from this step (`_interp_fit` / `_interp_evaluate`).
                let y_mid = combine(&y, &k, &C_MID, dtf);
                let x = ((t1 - t) / (t_next - t)) as f32;
                let out = interpolate(&y, &y_new, &y_mid, &k[0], &f_new, dtf, x);
                accepted += 1;
                on_step(OdeStep { step: accepted, total: accepted, t: t1, x: out.clone(), v: None });
                return Ok((out, nfe));
            }
            accepted += 1;
            let remaining = ((t1 - t_next) / dt_next.max(1e-12)).ceil().min(1e6) as usize;
            on_step(OdeStep { step: accepted, total: accepted + remaining.max(1), t: t_next, x: y_new.clone(), v: Some(f_new.clone()) });
            y = y_new;
            fy = f_new;
            t = t_next;
        }
        dt = dt_next;
    }
}

/// The quartic through `y0`, `y_mid`, `y1` with slopes `f0`, `f1`, at `x ∈ [0, 1]`
/// (`_interp_fit` then `_interp_evaluate`, in float32).
fn interpolate<B: Backend>(y0: &Tensor<B, 4>, y1: &Tensor<B, 4>, y_mid: &Tensor<B, 4>, f0: &Tensor<B, 4>, f1: &Tensor<B, 4>, dt: f32, x: f32) -> Tensor<B, 4> {
    let a = (f1.clone() - f0.clone()).mul_scalar(2.0 * dt) - (y1.clone() + y0.clone()).mul_scalar(8.0) + y_mid.clone().mul_scalar(16.0);
    let b = (f0.clone().mul_scalar(5.0) - f1.clone().mul_scalar(3.0)).mul_scalar(dt) + y0.clone().mul_scalar(18.0) + y1.clone().mul_scalar(14.0) - y_mid.clone().mul_scalar(32.0);
    let c = (f1.clone() - f0.clone().mul_scalar(4.0)).mul_scalar(dt) - y0.clone().mul_scalar(11.0) - y1.clone().mul_scalar(5.0) + y_mid.clone().mul_scalar(16.0);
    let d = f0.clone().mul_scalar(dt);
    let mut total = y0.clone() + d.mul_scalar(x);
    let mut xp = x;
    for coef in [c, b, a] {
        xp *= x;
        total = total + coef.mul_scalar(xp);
    }
    total
}

/// `torch.linspace(start, end, n)` in float32: the first half from `start`, the second half
/// back from `end` (ATen's kernel), so both ends are exact.
pub fn linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n).map(|i| if i < half { start + step * i as f32 } else { end - step * (n - 1 - i) as f32 }).collect()
}

/// Heun's method (`heun2`: RK2 with nodes 0 and 1, weights ½ ½) over the float32 `grid`.
/// Returns the state at the grid's end and the number of velocity evaluations.
pub fn heun2<B: Backend>(
    v: &mut Velocity<'_, B>,
    x0: Tensor<B, 4>,
    grid: &[f32],
    on_step: &mut dyn FnMut(OdeStep<B>),
) -> Result<(Tensor<B, 4>, usize), GenerateError> {
    let mut y = x0;
    let mut nfe = 0;
    let total = grid.len().saturating_sub(1);
    for (i, w) in grid.windows(2).enumerate() {
        let (t0, t1) = (w[0], w[1]);
        let dt = t1 - t0;
        let k1 = v(y.clone(), t0)?;
        let k2 = v(y.clone() + k1.clone().mul_scalar(dt), t0 + dt)?;
        nfe += 2;
        y = y + (k1.mul_scalar(0.5f32) + k2.clone().mul_scalar(0.5f32)).mul_scalar(dt);
        on_step(OdeStep { step: i + 1, total, t: t1 as f64, x: y.clone(), v: Some(k2) });
    }
    Ok((y, nfe))
}

/// A host tensor `[n]` of `t` for the network.
pub fn times<B: Backend>(t: f32, n: usize, device: &B::Device) -> Tensor<B, 1> {
    Tensor::from_data(TensorData::new(vec![t; n], [n]), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    type Cpu = burn::backend::Flex;

    #[test]
    fn linspace_matches_atens_two_sided_kernel() {
        let g = linspace_f32(0.0, 1.0, 250);
        assert_eq!(g[0], 0.0);
        assert_eq!(g[249], 1.0);
        assert_eq!(g[1], 1.0f32 / 249.0);
    }

    #[test]
    fn prev_f32_is_the_next_float_down() {
        assert_eq!(prev_f32(1.0), 0.99999994);
        assert!(prev_f32(0.5) < 0.5 && prev_f32(0.5).to_bits() + 1 == 0.5f32.to_bits());
    }

    /// dx/dt = x integrates to e·x0 at t = 1 within the tolerances, with few evaluations.
    #[test]
    fn dopri5_integrates_exponential_growth() {
        let dev = Default::default();
        let x0 = Tensor::<Cpu, 4>::from_data(TensorData::new(vec![1.0f32, -0.5, 2.0, 0.25], [1, 1, 2, 2]), &dev);
        let mut v = |x: Tensor<Cpu, 4>, _t: f32| Ok(x);
        let (x, nfe) = dopri5(&mut v, x0.clone(), 0.0, 1.0, Tolerances { atol: 1e-6, rtol: 1e-3 }, &mut |_| {}).unwrap();
        let got = host(&x);
        for (g, e) in got.iter().zip([1.0f32, -0.5, 2.0, 0.25]) {
            let want = e * std::f32::consts::E;
            assert!((g - want).abs() <= 2e-3 * want.abs(), "{g} vs {want}");
        }
        assert!(nfe < 60, "{nfe} evaluations");
    }

    #[test]
    fn heun2_is_second_order() {
        let dev = Default::default();
        let x0 = Tensor::<Cpu, 4>::ones([1, 1, 1, 1], &dev);
        let mut v = |x: Tensor<Cpu, 4>, _t: f32| Ok(x);
        let grid = linspace_f32(0.0, 1.0, 101);
        let (x, nfe) = heun2(&mut v, x0, &grid, &mut |_| {}).unwrap();
        assert_eq!(nfe, 200);
        let err = (host(&x)[0] - std::f32::consts::E).abs();
        assert!(err < 1e-4 && err > 1e-7, "{err}");
    }
}
