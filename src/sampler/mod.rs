//! Samplers: for the class-conditional diffusion models the DPM-Solver the DC-AE UViTs were
//! evaluated with, its noise schedule and the sampler settings of a model's config.json; for
//! SANA the flow-matching samplers of [`flow`].
//!
//! Nothing here knows about the UViT: the solver drives a closure that returns noise
//! predictions, so guidance, cancellation and progress stay with the caller
//! ([`crate::model::diffusion`]).

pub mod dpm_solver;
pub mod schedule;

use serde::{Deserialize, Serialize};

pub use dpm_solver::{fast_orders, DpmSolver, StepUpdate};
pub use schedule::{NoiseScheduleVP, Real};

/// The `"sampler"` block of a diffusion config.json. Defaults are the published UViTs' settings
/// (`UViT.generate` → `DPM_Solver.sample(x, steps=30, eps=1/1000, T=1.0)` with the defaults
/// `order=3, skip_type="time_uniform", method="fast", solver_type="dpm_solver"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplerConfig {
    /// Only `"dpm_solver"`.
    pub name: String,
    /// Default number of network evaluations (guided noise predictions).
    pub steps: usize,
    /// Highest order of the "fast" recipe: 2 or 3.
    pub order: usize,
    /// Only `"time_uniform"`.
    pub skip_type: String,
    /// Only `"fast"`.
    pub method: String,
    pub t_start: f64,
    pub t_end: f64,
    /// Only `"scaled_linear"` (betas `linspace(√start, √end, N)²`).
    pub beta_schedule: String,
    pub beta_start: f64,
    pub beta_end: f64,
    pub num_train_timesteps: usize,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            name: "dpm_solver".into(),
            steps: 30,
            order: 3,
            skip_type: "time_uniform".into(),
            method: "fast".into(),
            t_start: 1.0,
            t_end: 0.001,
            beta_schedule: "scaled_linear".into(),
            beta_start: 0.00085,
            beta_end: 0.012,
            num_train_timesteps: 1000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplerError {
    #[error("unsupported sampler setting {field} = {value:?} (this port implements {supported})")]
    Unsupported { field: &'static str, value: String, supported: &'static str },
    #[error("invalid sampler setting: {0}")]
    Invalid(String),
}

impl SamplerConfig {
    /// Checks that this is a configuration the port implements, with sane numbers.
    pub fn validate(&self) -> Result<(), SamplerError> {
        let unsupported = |field: &'static str, value: &str, supported: &'static str| {
            Err(SamplerError::Unsupported { field, value: value.to_string(), supported })
        };
        if self.name != "dpm_solver" {
            return unsupported("name", &self.name, "\"dpm_solver\"");
        }
        if self.method != "fast" {
            return unsupported("method", &self.method, "\"fast\"");
        }
        if self.skip_type != "time_uniform" {
            return unsupported("skip_type", &self.skip_type, "\"time_uniform\"");
        }
        if self.beta_schedule != "scaled_linear" {
            return unsupported("beta_schedule", &self.beta_schedule, "\"scaled_linear\"");
        }
        if !(2..=3).contains(&self.order) {
            return unsupported("order", &self.order.to_string(), "2 and 3");
        }
        let invalid = |m: String| Err(SamplerError::Invalid(m));
        if self.num_train_timesteps < 2 {
            return invalid(format!("num_train_timesteps must be at least 2, got {}", self.num_train_timesteps));
        }
        if !(self.beta_start > 0.0 && self.beta_start < self.beta_end && self.beta_end < 1.0) {
            return invalid(format!(
                "betas must satisfy 0 < beta_start < beta_end < 1, got {} and {}",
                self.beta_start, self.beta_end
            ));
        }
        if !(self.t_end > 0.0 && self.t_end < self.t_start && self.t_start <= 1.0) {
            return invalid(format!("times must satisfy 0 < t_end < t_start <= 1, got {} and {}", self.t_start, self.t_end));
        }
        if self.steps == 0 {
            return invalid("steps must be at least 1".into());
        }
        Ok(())
    }

    /// Short name for image metadata, e.g. `DPM-Solver (order 3, fast)`.
    pub fn label(&self) -> String {
        format!("DPM-Solver (order {}, {})", self.order, self.method)
    }

    /// One ASCII line for logs, e.g.
    /// `dpm_solver fast order 3, time_uniform 1->0.001, scaled_linear betas 0.00085->0.012 over 1000`.
    pub fn describe(&self) -> String {
        format!(
            "{} {} order {}, {} {}->{}, {} betas {}->{} over {}",
            self.name,
            self.method,
            self.order,
            self.skip_type,
            self.t_start,
            self.t_end,
            self.beta_schedule,
            self.beta_start,
            self.beta_end,
            self.num_train_timesteps
        )
    }
}
