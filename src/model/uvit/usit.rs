//! USiT: the UViT network trained with SiT's linear transport (efficientvit
//! `diffusioncore/models/uvit.py` with `train_scheduler=SiTSampler`,
//! `eval_scheduler=ODE_dopri5 | ODE_heun2`, `num_inference_steps=250`; `sit_sampler/` at
//! commit de7d773). It shares the UViT room because it *is* the UViT network; only the time
//! input and the sampler differ:
//! - the path is `x_t = t·x₁ + (1 − t)·x₀` (x₀ noise at t = 0, x₁ data at t = 1) and the
//!   network predicts the velocity `x₁ − x₀`, given the **raw** t ∈ [0, 1] (not ×1000);
//! - sampling integrates `dx/dt = v(x, t)` from 0 to 1 with torchdiffeq's `dopri5`
//!   (atol 1e-6, rtol 1e-3) or `heun2` on a 250-point grid ([`super::ode`]);
//! - guidance is batched as `forward_with_cfg` does it: one forward over `[x, x]` with
//!   `[y, null]`, then `v_u + s·(v_c − v_u)`.

use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::{backend::Backend, Int, Tensor};
use serde::{Deserialize, Serialize};

use super::ode::{dopri5, heun2, linspace_f32, times, OdeStep, Tolerances};
use super::Uvit;
use crate::model::diffusion::{checked_start, chosen_sampler, class_ids, ClassDenoiser, GenerateError, GenerateOutput, GenerateRequest, StepUpdate};
use crate::sampler::SamplerError;

/// The `"sampler"` block of a USiT config.json (`"name": "sit_ode"`), the zoo's settings by
/// default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OdeConfig {
    pub name: String,
    /// `"dopri5"` (adaptive) or `"heun2"` (fixed grid).
    pub method: String,
    /// Points of the output grid `linspace(0, 1, num_steps)`: heun2 steps between them;
    /// dopri5 only reports there (its steps are its own).
    pub num_steps: usize,
    pub atol: f64,
    pub rtol: f64,
}

impl Default for OdeConfig {
    fn default() -> Self {
        Self { name: "sit_ode".into(), method: "dopri5".into(), num_steps: 250, atol: 1e-6, rtol: 1e-3 }
    }
}

impl OdeConfig {
    pub fn validate(&self) -> Result<(), SamplerError> {
        if self.name != "sit_ode" {
            return Err(SamplerError::Unsupported { field: "name", value: self.name.clone(), supported: "\"sit_ode\" for a USiT" });
        }
        if self.method != "dopri5" && self.method != "heun2" {
            return Err(SamplerError::Unsupported { field: "method", value: self.method.clone(), supported: "\"dopri5\", \"heun2\"" });
        }
        if !(2..=100_000).contains(&self.num_steps) {
            return Err(SamplerError::Invalid(format!("num_steps must be in 2..=100000, got {}", self.num_steps)));
        }
        for (field, v) in [("atol", self.atol), ("rtol", self.rtol)] {
            if !(v.is_finite() && v > 0.0 && v < 1.0) {
                return Err(SamplerError::Invalid(format!("{field} must be in (0, 1), got {v}")));
            }
        }
        Ok(())
    }

    pub fn label(&self) -> String {
        match self.method.as_str() {
            "heun2" => "heun2 ODE (Heun, fixed grid)".to_string(),
            _ => format!("dopri5 ODE (atol {:e}, rtol {:e})", self.atol, self.rtol),
        }
    }
}

/// The most grid points a run may ask for (each is a network call pair for heun2).
pub const MAX_POINTS: usize = 100_000;

/// A USiT: the UViT network with its ODE settings.
#[derive(Debug)]
pub struct UsitFamily<B: Backend> {
    pub net: Uvit<B>,
    pub sampler: OdeConfig,
}

impl<B: Backend> ClassDenoiser<B> for UsitFamily<B> {
    fn family(&self) -> &'static str {
        "USiT"
    }

    fn device(&self) -> B::Device {
        self.net.device()
    }

    fn num_params(&self) -> usize {
        burn::module::Module::num_params(&self.net)
    }

    fn forward(&self, x: Tensor<B, 4>, t: Tensor<B, 1>, y: Tensor<B, 1, Int>) -> Tensor<B, 4> {
        self.net.forward(x, t, y)
    }

    fn sample(&self, req: &GenerateRequest<B>, on_step: &mut dyn FnMut(StepUpdate<B>), cancel: &AtomicBool) -> Result<GenerateOutput<B>, GenerateError> {
        let cfg = &self.net.config;
        let offered: &[&str] = if self.sampler.method == "heun2" { &["heun2", "dopri5"] } else { &["dopri5", "heun2"] };
        let method = chosen_sampler(req.sampler.as_deref(), offered, "USiT")?;
        let batch = req.labels.len();
        let device = self.net.device();
        let noise = checked_start(req, cfg.num_classes, cfg.latent_shape(batch), &device)?;
        let (y, y_null) = class_ids::<B>(&req.labels, cfg.null_class(), &device);
        let guided = req.cfg_scale != 1.0;
        let both_y = Tensor::cat(vec![y.clone(), y_null], 0);
        let scale = req.cfg_scale;
        let mut calls = 0usize;

        let mut velocity = |x: Tensor<B, 4>, t: f32| -> Result<Tensor<B, 4>, GenerateError> {
            if cancel.load(Ordering::Relaxed) {
                return Err(GenerateError::Cancelled);
            }
            if !guided {
                calls += 1;
                return Ok(self.net.forward(x, times::<B>(t, batch, &device), y.clone()));
            }
            calls += 2;
            let both = self.net.forward(Tensor::cat(vec![x.clone(), x], 0), times::<B>(t, 2 * batch, &device), both_y.clone());
            let cond = both.clone().narrow(0, 0, batch);
            let uncond = both.narrow(0, batch, batch);
            Ok(uncond.clone() + (cond - uncond).mul_scalar(scale))
        };

        // Image-to-image: start on the path at t0 = 1 − strength.
        let (x, t0, points) = match &req.init {
            Some((z, strength)) => {
                let t0 = 1.0 - *strength as f64;
                let x = z.clone().mul_scalar(t0 as f32) + noise.mul_scalar((1.0 - t0) as f32);
                (x, t0, ((req.steps as f32 * strength).round() as usize).max(2))
            }
            None => (noise, 0.0, req.steps.max(2)),
        };
        if points > MAX_POINTS {
            return Err(GenerateError::Sampler(SamplerError::Invalid(format!("{points} grid points asked for; the ODE samplers take at most {MAX_POINTS} (the authors use 250)"))));
        }
        let mut report = |s: OdeStep<B>| {
            // The clean estimate on a linear path: x₁ ≈ x_t + (1 − t)·v(x_t, t).
            let x0 = match s.v {
                Some(v) => s.x.clone() + v.mul_scalar((1.0 - s.t) as f32),
                None => s.x.clone(),
            };
            on_step(StepUpdate { step: s.step, total: s.total, t: s.t, x: s.x, x0 });
        };
        let (latent, nfe) = match method {
            "heun2" => heun2(&mut velocity, x, &linspace_f32(t0 as f32, 1.0, points), &mut report)?,
            _ => dopri5(&mut velocity, x, t0, 1.0, Tolerances { atol: self.sampler.atol, rtol: self.sampler.rtol }, &mut report)?,
        };
        Ok(GenerateOutput { latent, nfe, network_calls: calls })
    }
}
