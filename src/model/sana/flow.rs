//! The samplers of the SANA pipelines, over a flow-matching velocity network
//! (`x_σ = (1 − σ)·x₀ + σ·ε`, the network predicts `v = ε − x₀`):
//!
//! - flow DPM-Solver++ (diffusers `DPMSolverMultistepScheduler` with `use_flow_sigmas`,
//!   order 2, midpoint, final σ = 0): SANA's default;
//! - flow Euler (`FlowMatchEulerDiscreteScheduler`);
//! - SANA-Sprint's SCM / TrigFlow sampler (`SCMScheduler`, 1–4 steps, fresh noise every step).
//!
//! As in [`crate::sampler::dpm_solver`], nothing here knows the network: [`sample`] drives a closure that
//! returns the network's raw output for a model input and timestep, so guidance, cancellation
//! and batching stay with the caller. Schedules are computed in f64 and stored in f32, and the
//! updates use those f32 values, as the reference schedulers do.

use burn::tensor::{backend::Backend, Tensor};
use serde_json::Value;

use crate::sampler::SamplerError;

/// Which update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
pub enum FlowSolver {
    /// Flow DPM-Solver++ (2M, midpoint): first order on the first and last steps.
    #[value(name = "dpm")]
    Dpm,
    /// Flow Euler: `x ← x + (σ_next − σ)·v`.
    Euler,
    /// SANA-Sprint's TrigFlow consistency sampler.
    Scm,
}

impl FlowSolver {
    /// The name a job asks for it by ([`crate::engine::worker::api::GeneratorInfo::samplers`]),
    /// the CLI's value name.
    pub fn name(self) -> &'static str {
        match self {
            FlowSolver::Dpm => "dpm",
            FlowSolver::Euler => "euler",
            FlowSolver::Scm => "scm",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [FlowSolver::Dpm, FlowSolver::Euler, FlowSolver::Scm].into_iter().find(|s| s.name() == name)
    }

    /// For image metadata.
    pub fn label(self) -> &'static str {
        match self {
            FlowSolver::Dpm => "Flow DPM-Solver++ (order 2)",
            FlowSolver::Euler => "Flow Euler",
            FlowSolver::Scm => "SCM (TrigFlow)",
        }
    }
}

/// A model's `scheduler/scheduler_config.json`, reduced to what the samplers use.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FlowSchedulerConfig {
    pub solver: FlowSolver,
    /// σ → shift·σ / (1 + (shift − 1)·σ); 3.0 for SANA (6.0 for the 4K model). Unused by SCM.
    pub flow_shift: f64,
    pub num_train_timesteps: usize,
    /// SCM's σ_d (0.5).
    pub sigma_data: f64,
}

impl Default for FlowSchedulerConfig {
    fn default() -> Self {
        Self { solver: FlowSolver::Dpm, flow_shift: 3.0, num_train_timesteps: 1000, sigma_data: 0.5 }
    }
}

/// Sprint's default angles: π/2 (rounded up, as the pipeline passes it) and the 2-step midpoint.
pub const SCM_MAX_TIMESTEP: f64 = 1.57080;
pub const SCM_INTERMEDIATE_TIMESTEP: f64 = 1.3;

impl FlowSchedulerConfig {
    /// From `scheduler_config.json`. Only the settings the SANA repos use are accepted; any
    /// other is refused with its name and value rather than sampled wrongly.
    pub fn from_json(v: &Value) -> Result<Self, SamplerError> {
        let class = v.get("_class_name").and_then(Value::as_str).unwrap_or("");
        let num = |k: &str, d: f64| v.get(k).and_then(Value::as_f64).unwrap_or(d);
        let text = |k: &str| v.get(k).and_then(Value::as_str);
        let flag = |k: &str| v.get(k).and_then(Value::as_bool);
        let unsupported = |field: &'static str, value: String, supported: &'static str| Err(SamplerError::Unsupported { field, value, supported });
        let num_train_timesteps = num("num_train_timesteps", 1000.0);
        if !(num_train_timesteps >= 2.0 && num_train_timesteps <= 1e6 && num_train_timesteps.fract() == 0.0) {
            return Err(SamplerError::Invalid(format!("num_train_timesteps = {num_train_timesteps} is not a count of steps")));
        }
        let mut cfg = Self { num_train_timesteps: num_train_timesteps as usize, ..Self::default() };
        match class {
            "DPMSolverMultistepScheduler" => {
                cfg.solver = FlowSolver::Dpm;
                cfg.flow_shift = num("flow_shift", 1.0);
                if flag("use_flow_sigmas") != Some(true) {
                    return unsupported("use_flow_sigmas", format!("{:?}", v.get("use_flow_sigmas")), "true (a flow-matching model)");
                }
                if let Some(p) = text("prediction_type").filter(|p| *p != "flow_prediction") {
                    return unsupported("prediction_type", p.into(), "\"flow_prediction\"");
                }
                if let Some(a) = text("algorithm_type").filter(|a| *a != "dpmsolver++") {
                    return unsupported("algorithm_type", a.into(), "\"dpmsolver++\"");
                }
                if let Some(o) = v.get("solver_order").and_then(Value::as_u64).filter(|o| *o != 2) {
                    return unsupported("solver_order", o.to_string(), "2");
                }
                if let Some(t) = text("solver_type").filter(|t| *t != "midpoint") {
                    return unsupported("solver_type", t.into(), "\"midpoint\"");
                }
                if let Some(f) = text("final_sigmas_type").filter(|f| *f != "zero") {
                    return unsupported("final_sigmas_type", f.into(), "\"zero\"");
                }
                for k in ["use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas", "thresholding", "use_dynamic_shifting"] {
                    if flag(k) == Some(true) {
                        return unsupported("scheduler option", k.into(), "the SANA defaults (false)");
                    }
                }
            }
            "FlowMatchEulerDiscreteScheduler" => {
                cfg.solver = FlowSolver::Euler;
                cfg.flow_shift = num("shift", 1.0);
                for k in ["use_dynamic_shifting", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas", "stochastic_sampling"] {
                    if flag(k) == Some(true) {
                        return unsupported("scheduler option", k.into(), "the SANA defaults (false)");
                    }
                }
                if v.get("shift_terminal").is_some_and(|t| !t.is_null()) {
                    return unsupported("shift_terminal", v["shift_terminal"].to_string(), "null");
                }
            }
            "SCMScheduler" => {
                cfg.solver = FlowSolver::Scm;
                cfg.sigma_data = num("sigma_data", 0.5);
                if let Some(p) = text("prediction_type").filter(|p| *p != "trigflow") {
                    return unsupported("prediction_type", p.into(), "\"trigflow\"");
                }
            }
            other => return unsupported("_class_name", other.into(), "DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, SCMScheduler"),
        }
        if !(cfg.flow_shift.is_finite() && cfg.flow_shift > 0.0 && cfg.flow_shift <= 1000.0) {
            return Err(SamplerError::Invalid(format!("flow shift = {} must be a positive number", cfg.flow_shift)));
        }
        if !(cfg.sigma_data.is_finite() && cfg.sigma_data > 0.0) {
            return Err(SamplerError::Invalid(format!("sigma_data = {} must be positive", cfg.sigma_data)));
        }
        Ok(cfg)
    }
}

/// `shift·σ / (1 + (shift − 1)·σ)`.
fn shifted(sigma: f64, shift: f64) -> f64 {
    shift * sigma / (1.0 + (shift - 1.0) * sigma)
}

/// The grid of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowSchedule {
    pub solver: FlowSolver,
    /// DPM / Euler: σ_0 … σ_n with σ_n = 0. SCM: the TrigFlow angles s_0 … s_n with s_n = 0.
    pub sigmas: Vec<f32>,
    /// The timestep the network gets at each of the n steps (before `timestep_scale`): DPM the
    /// integer ⌊1000·σ⌋, Euler the float 1000·σ, SCM c = sin s / (cos s + sin s).
    pub model_t: Vec<f32>,
    pub sigma_data: f32,
}

/// More steps than any sampler here needs; a typo (or a fuzzer) asking for billions of steps
/// must not allocate a schedule of that size.
pub const MAX_STEPS: usize = 1000;

impl FlowSchedule {
    /// The schedule `cfg` gives for `steps` steps. For SCM, `max_t` / `intermediate_t` are the
    /// Sprint pipeline's `max_timesteps` / `intermediate_timesteps` (the intermediate angle is
    /// used for 2 steps only; other counts space the angles evenly, as the reference requires).
    pub fn new(cfg: &FlowSchedulerConfig, steps: usize, max_t: Option<f64>, intermediate_t: Option<f64>) -> Result<Self, SamplerError> {
        if steps == 0 || steps > MAX_STEPS {
            return Err(SamplerError::Invalid(format!("steps must be between 1 and {MAX_STEPS}, got {steps}")));
        }
        let n = steps;
        let train = cfg.num_train_timesteps as f64;
        match cfg.solver {
            FlowSolver::Dpm => {
                // σ = shift(1 − linspace(1, 1/T, n+1)), reversed, without its last (0) entry.
                let mut s: Vec<f64> = (0..=n).map(|k| 1.0 - linspace(1.0, 1.0 / train, n + 1, k)).map(|s| shifted(s, cfg.flow_shift)).collect();
                s.reverse();
                s.pop();
                let model_t = s.iter().map(|&x| (x * train).trunc() as f32).collect();
                let mut sigmas: Vec<f32> = s.iter().map(|&x| x as f32).collect();
                sigmas.push(0.0);
                Ok(Self { solver: cfg.solver, sigmas, model_t, sigma_data: cfg.sigma_data as f32 })
            }
            FlowSolver::Euler => {
                // The training grid's smallest σ is already shifted, and the inference grid is
                // shifted once more: the shift applies twice at its end (as diffusers does).
                let sigma_min = shifted(1.0 / train, cfg.flow_shift);
                let s: Vec<f64> = (0..n).map(|k| linspace(train, sigma_min * train, n, k) / train).map(|s| shifted(s, cfg.flow_shift)).collect();
                let mut sigmas: Vec<f32> = s.iter().map(|&x| x as f32).collect();
                let model_t = sigmas.iter().map(|&x| x * train as f32).collect();
                sigmas.push(0.0);
                Ok(Self { solver: cfg.solver, sigmas, model_t, sigma_data: cfg.sigma_data as f32 })
            }
            FlowSolver::Scm => {
                let max_t = max_t.unwrap_or(SCM_MAX_TIMESTEP);
                if !(max_t.is_finite() && max_t > 0.0 && max_t <= 1.6) {
                    return Err(SamplerError::Invalid(format!("max timestep = {max_t} must be an angle in (0, 1.6]")));
                }
                let angles: Vec<f64> = match intermediate_t {
                    Some(mid) if n == 2 => {
                        if !(mid.is_finite() && mid > 0.0 && mid < max_t) {
                            return Err(SamplerError::Invalid(format!("intermediate timestep = {mid} must lie between 0 and the max timestep {max_t}")));
                        }
                        vec![max_t, mid, 0.0]
                    }
                    _ => (0..=n).map(|k| linspace(max_t, 0.0, n + 1, k)).collect(),
                };
                let sigmas: Vec<f32> = angles.iter().map(|&a| a as f32).collect();
                let model_t = sigmas[..n].iter().map(|&s| trig_flow_time(s)).collect();
                Ok(Self { solver: cfg.solver, sigmas, model_t, sigma_data: cfg.sigma_data as f32 })
            }
        }
    }

    pub fn steps(&self) -> usize {
        self.model_t.len()
    }

    /// Image-to-image (SDEdit): the last `round(strength · n)` steps (at least one), as
    /// diffusers' img2img pipelines cut their timesteps. DPM-Solver++ starts that tail with a
    /// first-order step, as after `set_begin_index`.
    pub fn img2img(&self, strength: f32) -> Result<Self, SamplerError> {
        if !(strength.is_finite() && strength > 0.0 && strength <= 1.0) {
            return Err(SamplerError::Invalid(format!("image-to-image strength must be in (0, 1], got {strength}")));
        }
        let n = self.steps();
        let k = ((n as f32 * strength).round() as usize).clamp(1, n);
        Ok(Self { solver: self.solver, sigmas: self.sigmas[n - k..].to_vec(), model_t: self.model_t[n - k..].to_vec(), sigma_data: self.sigma_data })
    }

    /// The sampler's start from a clean latent `x0` and standard normal `noise`, at the
    /// schedule's first σ: `(1 − σ)·x0 + σ·ε` for the flow solvers; for SCM the TrigFlow point
    /// `cos s·x0 + sin s·ε` (in the units [`sample`] takes, before its σ_d scaling).
    pub fn noised<B: Backend>(&self, x0: Tensor<B, 4>, noise: Tensor<B, 4>) -> Tensor<B, 4> {
        let s0 = self.sigmas.first().copied().unwrap_or(1.0) as f64;
        match self.solver {
            FlowSolver::Dpm | FlowSolver::Euler => x0.mul_scalar(1.0 - s0) + noise.mul_scalar(s0),
            FlowSolver::Scm => x0.mul_scalar(s0.cos()) + noise.mul_scalar(s0.sin()),
        }
    }
}

/// `u = sin s / (cos s + sin s)` in f32 (1.0000037 at s = 1.5708, and not clamped: the reference
/// feeds it as is).
fn trig_flow_time(s: f32) -> f32 {
    s.sin() / (s.cos() + s.sin())
}

/// numpy's `linspace(a, b, n)[k]`.
fn linspace(a: f64, b: f64, n: usize, k: usize) -> f64 {
    if n <= 1 {
        return a;
    }
    if k == n - 1 {
        return b;
    }
    a + (b - a) * k as f64 / (n - 1) as f64
}

/// What one step hands out, for previews and traces.
pub struct FlowStep<B: Backend> {
    /// 1-based.
    pub step: usize,
    pub total: usize,
    /// This step's estimate of the clean latent (for Sprint already divided by σ_d, so it is
    /// what the decoder takes after the scaling factor).
    pub x0: Tensor<B, 4>,
    /// The sample after the step.
    pub x: Tensor<B, 4>,
}

/// Runs `schedule` from `x` (DPM / Euler: the initial noise, unscaled; SCM: standard normal
/// noise, multiplied by σ_d here). `network(input, t)` returns the raw network output (for the
/// flow solvers the guided velocity) or `None` to cancel; `step_noise(k)` gives SCM's fresh
/// standard normal draw after step k. Returns the final latent (SCM: the last x₀ / σ_d), or
/// `None` if cancelled.
pub fn sample<B: Backend>(
    schedule: &FlowSchedule,
    x: Tensor<B, 4>,
    network: &mut dyn FnMut(Tensor<B, 4>, f32) -> Option<Tensor<B, 4>>,
    step_noise: &mut dyn FnMut(usize) -> Tensor<B, 4>,
    on_step: &mut dyn FnMut(FlowStep<B>),
) -> Option<Tensor<B, 4>> {
    let n = schedule.steps();
    let s = &schedule.sigmas;
    match schedule.solver {
        FlowSolver::Dpm => {
            let mut x = x;
            let mut prev_x0: Option<Tensor<B, 4>> = None;
            for i in 0..n {
                let v = network(x.clone(), schedule.model_t[i])?;
                let (sig_s, sig_t) = (s[i] as f64, s[i + 1] as f64);
                let x0 = x.clone() - v.mul_scalar(sig_s);
                let first_order = i == 0 || i == n - 1 || prev_x0.is_none();
                x = if sig_t == 0.0 {
                    // λ_t = +∞: the update is x₀ exactly.
                    x0.clone()
                } else {
                    let lambda = |sig: f64| (1.0 - sig).ln() - sig.ln();
                    let h = lambda(sig_t) - lambda(sig_s);
                    let alpha_t = 1.0 - sig_t;
                    let coef = alpha_t * ((-h).exp() - 1.0);
                    let ratio = sig_t / sig_s;
                    match (&prev_x0, first_order) {
                        (Some(m1), false) => {
                            let sig_p = s[i - 1] as f64;
                            let r = (lambda(sig_s) - lambda(sig_p)) / h;
                            let d1 = (x0.clone() - m1.clone()).mul_scalar(1.0 / r);
                            x.mul_scalar(ratio) - x0.clone().mul_scalar(coef) - d1.mul_scalar(0.5 * coef)
                        }
                        _ => x.mul_scalar(ratio) - x0.clone().mul_scalar(coef),
                    }
                };
                on_step(FlowStep { step: i + 1, total: n, x0: x0.clone(), x: x.clone() });
                prev_x0 = Some(x0);
            }
            Some(x)
        }
        FlowSolver::Euler => {
            let mut x = x;
            for i in 0..n {
                let v = network(x.clone(), schedule.model_t[i])?;
                let x0 = x.clone() - v.clone().mul_scalar(s[i] as f64);
                x = x + v.mul_scalar((s[i + 1] - s[i]) as f64);
                on_step(FlowStep { step: i + 1, total: n, x0, x: x.clone() });
            }
            Some(x)
        }
        FlowSolver::Scm => {
            let sd = schedule.sigma_data as f64;
            let mut x = x.mul_scalar(sd);
            let mut denoised = x.clone();
            for i in 0..n {
                let (ang_s, ang_t) = (s[i], s[i + 1]);
                let u = schedule.model_t[i];
                let c = (u * u + (1.0 - u) * (1.0 - u)).sqrt();
                let x_in = x.clone().mul_scalar(1.0 / sd).mul_scalar(c as f64);
                let f = network(x_in.clone(), u)?;
                let f_trig = (x_in.mul_scalar((1.0 - 2.0 * u) as f64) + f.mul_scalar((1.0 - 2.0 * u + 2.0 * u * u) as f64)).mul_scalar((1.0 / c) as f64).mul_scalar(sd);
                denoised = x.mul_scalar(ang_s.cos() as f64) - f_trig.mul_scalar(ang_s.sin() as f64);
                let z = step_noise(i);
                x = denoised.clone().mul_scalar(ang_t.cos() as f64) + z.mul_scalar(ang_t.sin() as f64 * sd);
                on_step(FlowStep { step: i + 1, total: n, x0: denoised.clone().mul_scalar(1.0 / sd), x: x.clone() });
            }
            Some(denoised.mul_scalar(1.0 / sd))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn img2img_keeps_the_tail_of_the_schedule() {
        for solver in [FlowSolver::Dpm, FlowSolver::Euler, FlowSolver::Scm] {
            let cfg = FlowSchedulerConfig { solver, ..FlowSchedulerConfig::default() };
            let full = FlowSchedule::new(&cfg, 10, None, None).unwrap();
            let half = full.img2img(0.5).unwrap();
            assert_eq!(half.steps(), 5);
            assert_eq!(half.sigmas[..], full.sigmas[5..], "{solver:?}");
            assert_eq!(half.model_t[..], full.model_t[5..]);
            assert_eq!(full.img2img(1.0).unwrap(), full);
            assert_eq!(full.img2img(0.01).unwrap().steps(), 1, "at least one step");
            for bad in [0.0, -0.5, 1.5, f32::NAN] {
                assert!(full.img2img(bad).is_err(), "{bad}");
            }
        }
    }
}
