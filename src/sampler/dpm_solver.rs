//! Single-step DPM-Solver with data prediction ("DPM-Solver++"-style `predict_x0=True`) and the
//! "fast" order recipe, as efficientvit's `DPM_Solver.sample(x, steps, eps=1/N, T=1,
//! order=3, skip_type="time_uniform", method="fast")` runs it for the DC-AE UViTs.
//!
//! The solver only sees the network through a closure returning the noise prediction `ε̂(x, t)`
//! at continuous time `t`; classifier-free guidance, cancellation and the ×N time scaling live
//! in the caller. The per-step scalars are computed in `S` (f32 mirrors the reference; see
//! [`super::schedule`]) and only then applied to tensors, in the reference's order of operations.

use burn::tensor::{backend::Backend, Tensor};

use super::schedule::{linspace, NoiseScheduleVP, Real};
use super::{SamplerConfig, SamplerError};

/// Progress of one solver step, for progress bars and previews.
#[derive(Debug, Clone)]
pub struct StepUpdate<B: Backend> {
    /// 1-based index of the solver step just finished (an order-3 step counts once).
    pub step: usize,
    /// Number of solver steps in the run (11 for 30 network evaluations with order 3).
    pub total: usize,
    /// Continuous time the sample has reached (1 → `t_end`).
    pub t: f64,
    /// The sample at time `t`.
    pub x: Tensor<B, 4>,
    /// The latest data prediction (`x̂₀` at the step's last evaluation), for previews.
    pub x0: Tensor<B, 4>,
}

/// Solver orders of the "fast" recipe for `steps` network evaluations (the orders sum to
/// `steps`). Order 3: with `K = steps/3 + 1`, `steps % 3 == 0 → [3]·(K−2) + [2, 1]`,
/// `== 1 → [3]·(K−1) + [1]`, `== 2 → [3]·(K−1) + [2]`; order 2: `[2]·(steps/2)` plus a final
/// `[1]` when `steps` is odd. `steps == 0` gives no steps.
pub fn fast_orders(steps: usize, order: usize) -> Vec<usize> {
    if steps == 0 {
        return Vec::new();
    }
    let mut orders = Vec::new();
    if order >= 3 {
        let k = steps / 3 + 1;
        match steps % 3 {
            0 => {
                orders.extend(std::iter::repeat_n(3, k - 2));
                orders.extend([2, 1]);
            }
            1 => {
                orders.extend(std::iter::repeat_n(3, k - 1));
                orders.push(1);
            }
            _ => {
                orders.extend(std::iter::repeat_n(3, k - 1));
                orders.push(2);
            }
        }
    } else if order == 2 {
        orders.extend(std::iter::repeat_n(2, steps / 2));
        if steps % 2 == 1 {
            orders.push(1);
        }
    } else {
        orders.extend(std::iter::repeat_n(1, steps));
    }
    orders
}

/// The DPM-Solver of one sampler configuration.
#[derive(Debug, Clone)]
pub struct DpmSolver<S: Real = f32> {
    pub schedule: NoiseScheduleVP<S>,
    /// Highest solver order of the "fast" recipe (2 or 3).
    pub order: usize,
    pub t_start: S,
    pub t_end: S,
}

impl<S: Real> DpmSolver<S> {
    pub fn new(cfg: &SamplerConfig) -> Result<Self, SamplerError> {
        cfg.validate()?;
        Ok(Self {
            schedule: NoiseScheduleVP::scaled_linear(cfg.beta_start, cfg.beta_end, cfg.num_train_timesteps),
            order: cfg.order,
            t_start: S::from_f64(cfg.t_start),
            t_end: S::from_f64(cfg.t_end),
        })
    }

    /// Orders of the solver steps for `steps` network evaluations.
    pub fn orders(&self, steps: usize) -> Vec<usize> {
        fast_orders(steps, self.order)
    }

    /// The time grid `linspace(t_start, t_end, steps + 1)`; an order-`k` step spans `k` of its
    /// intervals.
    pub fn timesteps(&self, steps: usize) -> Vec<S> {
        linspace(self.t_start, self.t_end, steps + 1)
    }

    /// Integrates from `x` at `t_start` to `t_end` with `steps` evaluations of `eps_model`
    /// (noise prediction at continuous time `t`, passed as f64 but holding an `S` value).
    /// `on_step` runs after every solver step. The first error from `eps_model` ends the run.
    pub fn sample<B: Backend, E>(
        &self,
        x: Tensor<B, 4>,
        steps: usize,
        eps_model: &mut dyn FnMut(Tensor<B, 4>, f64) -> Result<Tensor<B, 4>, E>,
        on_step: &mut dyn FnMut(StepUpdate<B>),
    ) -> Result<Tensor<B, 4>, E> {
        let orders = self.orders(steps);
        let ts = self.timesteps(steps);
        let ns = &self.schedule;
        let total = orders.len();
        let mut x = x;
        let mut i = 0;
        for (k, &order) in orders.iter().enumerate() {
            let (s, t) = (ts[i], ts[i + order]);
            // r1, r2: where the grid points inside this step sit in λ, as fractions of h.
            let h = ns.lambda(t) - ns.lambda(s);
            let r = |j: usize| (ns.lambda(ts[i + j]) - ns.lambda(s)) / h;
            let (next, x0) = match order {
                1 => self.first_update(x, s, t, eps_model)?,
                2 => self.second_update(x, s, t, r(1), eps_model)?,
                _ => self.third_update(x, s, t, r(1), r(2), eps_model)?,
            };
            x = next;
            i += order;
            on_step(StepUpdate { step: k + 1, total, t: t.to_f64(), x: x.clone(), x0 });
        }
        Ok(x)
    }

    /// Data prediction `x̂₀ = (x − σ_t·ε̂) / α_t`.
    fn data_prediction<B: Backend, E>(
        &self,
        x: Tensor<B, 4>,
        t: S,
        eps_model: &mut dyn FnMut(Tensor<B, 4>, f64) -> Result<Tensor<B, 4>, E>,
    ) -> Result<Tensor<B, 4>, E> {
        let ns = &self.schedule;
        let (alpha, sigma) = (ns.alpha(t), ns.sigma(t));
        let eps = eps_model(x.clone(), t.to_f64())?;
        Ok((x - eps.mul_scalar(sigma.to_f64())).div_scalar(alpha.to_f64()))
    }

    /// DPM-Solver-1: `x_t = (σ_t/σ_s)·x + α_t·(1 − e^{−h})·D0`. Returns `(x_t, D0)`.
    ///
    /// The reference writes `φ1 = (exp(−h) − 1)/(−1)` here (not `expm1`, unlike orders 2 and 3);
    /// mirrored as written.
    fn first_update<B: Backend, E>(
        &self,
        x: Tensor<B, 4>,
        s: S,
        t: S,
        eps_model: &mut dyn FnMut(Tensor<B, 4>, f64) -> Result<Tensor<B, 4>, E>,
    ) -> Result<(Tensor<B, 4>, Tensor<B, 4>), E> {
        let ns = &self.schedule;
        let one = S::from_f64(1.0);
        let h = ns.lambda(t) - ns.lambda(s);
        let (sigma_s, sigma_t, alpha_t) = (ns.sigma(s), ns.sigma(t), ns.log_alpha(t).exp());
        let phi_1 = ((-h).exp() - one) / (-one);

        let d0 = self.data_prediction(x.clone(), s, eps_model)?;
        let x_t = x.mul_scalar((sigma_t / sigma_s).to_f64()) + d0.clone().mul_scalar((alpha_t * phi_1).to_f64());
        Ok((x_t, d0))
    }

    /// DPM-Solver-2 with its intermediate point at `λ_s + r1·h`. Returns `(x_t, D1)`.
    fn second_update<B: Backend, E>(
        &self,
        x: Tensor<B, 4>,
        s: S,
        t: S,
        r1: S,
        eps_model: &mut dyn FnMut(Tensor<B, 4>, f64) -> Result<Tensor<B, 4>, E>,
    ) -> Result<(Tensor<B, 4>, Tensor<B, 4>), E> {
        let ns = &self.schedule;
        let (lambda_s, lambda_t) = (ns.lambda(s), ns.lambda(t));
        let h = lambda_t - lambda_s;
        let s1 = ns.inverse_lambda(lambda_s + r1 * h);
        let (sigma_s, sigma_s1, sigma_t) = (ns.sigma(s), ns.sigma(s1), ns.sigma(t));
        let (alpha_s1, alpha_t) = (ns.log_alpha(s1).exp(), ns.log_alpha(t).exp());
        let phi_11 = (-r1 * h).exp_m1();
        let phi_1 = (-h).exp_m1();
        let c = |v: S| v.to_f64();

        let d0 = self.data_prediction(x.clone(), s, eps_model)?;
        let x_s1 = x.clone().mul_scalar(c(sigma_s1 / sigma_s)) - d0.clone().mul_scalar(c(alpha_s1 * phi_11));
        let d1 = self.data_prediction(x_s1, s1, eps_model)?;
        let x_t = x.mul_scalar(c(sigma_t / sigma_s))
            - d0.clone().mul_scalar(c(alpha_t * phi_1))
            - (d1.clone() - d0).mul_scalar(c(S::from_f64(0.5) / r1 * (alpha_t * phi_1)));
        Ok((x_t, d1))
    }

    /// DPM-Solver-3 with intermediate points at `λ_s + r1·h` and `λ_s + r2·h`. Returns `(x_t, D2)`.
    #[allow(clippy::too_many_arguments)]
    fn third_update<B: Backend, E>(
        &self,
        x: Tensor<B, 4>,
        s: S,
        t: S,
        r1: S,
        r2: S,
        eps_model: &mut dyn FnMut(Tensor<B, 4>, f64) -> Result<Tensor<B, 4>, E>,
    ) -> Result<(Tensor<B, 4>, Tensor<B, 4>), E> {
        let ns = &self.schedule;
        let one = S::from_f64(1.0);
        let (lambda_s, lambda_t) = (ns.lambda(s), ns.lambda(t));
        let h = lambda_t - lambda_s;
        let s1 = ns.inverse_lambda(lambda_s + r1 * h);
        let s2 = ns.inverse_lambda(lambda_s + r2 * h);
        let (sigma_s, sigma_s1, sigma_s2, sigma_t) = (ns.sigma(s), ns.sigma(s1), ns.sigma(s2), ns.sigma(t));
        let (alpha_s1, alpha_s2, alpha_t) = (ns.log_alpha(s1).exp(), ns.log_alpha(s2).exp(), ns.log_alpha(t).exp());
        let phi_11 = (-r1 * h).exp_m1();
        let phi_12 = (-r2 * h).exp_m1();
        let phi_1 = (-h).exp_m1();
        let phi_22 = (-r2 * h).exp_m1() / (r2 * h) + one;
        let phi_2 = phi_1 / h + one;
        let c = |v: S| v.to_f64();

        let d0 = self.data_prediction(x.clone(), s, eps_model)?;
        let x_s1 = x.clone().mul_scalar(c(sigma_s1 / sigma_s)) - d0.clone().mul_scalar(c(alpha_s1 * phi_11));
        let d1 = self.data_prediction(x_s1, s1, eps_model)?;
        let x_s2 = x.clone().mul_scalar(c(sigma_s2 / sigma_s)) - d0.clone().mul_scalar(c(alpha_s2 * phi_12))
            + (d1 - d0.clone()).mul_scalar(c(r2 / r1 * (alpha_s2 * phi_22)));
        let d2 = self.data_prediction(x_s2, s2, eps_model)?;
        let x_t = x.mul_scalar(c(sigma_t / sigma_s)) - d0.clone().mul_scalar(c(alpha_t * phi_1))
            + (d2.clone() - d0).mul_scalar(c(one / r2 * (alpha_t * phi_2)));
        Ok((x_t, d2))
    }
}
