//! ADM's Gaussian diffusion as DiT samples with it (efficientvit
//! `diffusioncore/models/dit_sampler/{gaussian_diffusion,respace}.py` at commit de7d773, from
//! openai/guided-diffusion): linear betas over 1000 steps, respaced to `steps` evenly kept
//! steps, ε prediction with learned-range variance, ancestral sampling (`p_sample_loop`) or
//! deterministic DDIM (`ddim_sample_loop`, η = 0).
//!
//! Precision follows the original: every schedule array is float64 (numpy), and each step
//! takes its coefficients as float32 (`_extract_into_tensor`) before it meets the float32
//! tensors, so the per-step arithmetic here is f32 on the device with f64-derived scalars.

use serde::{Deserialize, Serialize};

use crate::sampler::SamplerError;

/// The `"sampler"` block of a DiT config.json (`"name": "adm"`). Defaults: the original's
/// `create_diffusion(str(250))` over `get_named_beta_schedule("linear", 1000)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdmConfig {
    pub name: String,
    /// Default number of kept (respaced) steps; the user may pick any count up to
    /// `num_train_timesteps`.
    pub steps: usize,
    pub num_train_timesteps: usize,
    /// Linear betas at 1000 steps (scaled by 1000 / `num_train_timesteps` otherwise, as ADM does).
    pub beta_start: f64,
    pub beta_end: f64,
}

impl Default for AdmConfig {
    fn default() -> Self {
        Self { name: "adm".into(), steps: 250, num_train_timesteps: 1000, beta_start: 0.0001, beta_end: 0.02 }
    }
}

impl AdmConfig {
    pub fn validate(&self) -> Result<(), SamplerError> {
        if self.name != "adm" {
            return Err(SamplerError::Unsupported { field: "name", value: self.name.clone(), supported: "\"adm\" for a DiT" });
        }
        if self.num_train_timesteps < 2 || self.num_train_timesteps > 100_000 {
            return Err(SamplerError::Invalid(format!("num_train_timesteps must be in 2..=100000, got {}", self.num_train_timesteps)));
        }
        if self.steps == 0 || self.steps > self.num_train_timesteps {
            return Err(SamplerError::Invalid(format!("steps must be in 1..={}, got {}", self.num_train_timesteps, self.steps)));
        }
        let scale = 1000.0 / self.num_train_timesteps as f64;
        let (b0, b1) = (scale * self.beta_start, scale * self.beta_end);
        if !(b0.is_finite() && b1.is_finite() && b0 > 0.0 && b1 > 0.0 && b0 < 1.0 && b1 < 1.0) {
            return Err(SamplerError::Invalid(format!("betas must lie in (0, 1) after scaling, got {b0} → {b1}")));
        }
        Ok(())
    }
}

/// numpy's `linspace(start, stop, n)` in float64: `i·step + start`, the last value `stop`.
fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (stop - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| i as f64 * step + start).collect();
    v[n - 1] = stop;
    v
}

/// `space_timesteps(num_timesteps, str(count))`: one section, `count` steps taken at
/// `round(i · (T − 1)/(count − 1))` (Python's round: half to even), sorted.
pub fn space_timesteps(num_timesteps: usize, count: usize) -> Result<Vec<usize>, SamplerError> {
    if count == 0 || count > num_timesteps {
        return Err(SamplerError::Invalid(format!("cannot divide {num_timesteps} diffusion steps into {count}")));
    }
    let stride = if count <= 1 { 1.0 } else { (num_timesteps - 1) as f64 / (count - 1) as f64 };
    let mut cur = 0.0f64;
    let mut steps = Vec::with_capacity(count);
    for _ in 0..count {
        steps.push(cur.round_ties_even() as usize);
        cur += stride;
    }
    steps.sort_unstable();
    steps.dedup();
    Ok(steps)
}

/// A respaced schedule (`SpacedDiffusion`), every array float64 and indexed by the kept step
/// `i` (0 = the last, least noisy one).
#[derive(Debug, Clone, PartialEq)]
pub struct AdmSchedule {
    /// The original step each kept step stands for (what the network is given as `t`).
    pub timestep_map: Vec<usize>,
    pub betas: Vec<f64>,
    pub alphas_cumprod: Vec<f64>,
    pub alphas_cumprod_prev: Vec<f64>,
    pub sqrt_alphas_cumprod: Vec<f64>,
    pub sqrt_one_minus_alphas_cumprod: Vec<f64>,
    pub sqrt_recip_alphas_cumprod: Vec<f64>,
    pub sqrt_recipm1_alphas_cumprod: Vec<f64>,
    pub posterior_log_variance_clipped: Vec<f64>,
    pub posterior_mean_coef1: Vec<f64>,
    pub posterior_mean_coef2: Vec<f64>,
    pub log_betas: Vec<f64>,
}

fn cumprod(v: impl IntoIterator<Item = f64>) -> Vec<f64> {
    let mut acc = 1.0;
    v.into_iter().map(|x| {
        acc *= x;
        acc
    }).collect()
}

impl AdmSchedule {
    /// The schedule of `cfg` respaced to `steps` kept steps.
    pub fn new(cfg: &AdmConfig, steps: usize) -> Result<Self, SamplerError> {
        cfg.validate()?;
        let n = cfg.num_train_timesteps;
        let scale = 1000.0 / n as f64;
        let base_betas = linspace(scale * cfg.beta_start, scale * cfg.beta_end, n);
        let base_cumprod = cumprod(base_betas.iter().map(|b| 1.0 - b));
        let keep = space_timesteps(n, steps)?;

        // SpacedDiffusion: new β_i = 1 − ᾱ_{kept i} / ᾱ_{previous kept}.
        let mut last = 1.0;
        let mut betas = Vec::with_capacity(keep.len());
        for &i in &keep {
            betas.push(1.0 - base_cumprod[i] / last);
            last = base_cumprod[i];
        }
        let ac = cumprod(betas.iter().map(|b| 1.0 - b));
        let ac_prev: Vec<f64> = std::iter::once(1.0).chain(ac[..ac.len() - 1].iter().copied()).collect();
        let posterior_variance: Vec<f64> = (0..betas.len()).map(|i| betas[i] * (1.0 - ac_prev[i]) / (1.0 - ac[i])).collect();
        // log(append(pv[1], pv[1:])): the first step's posterior variance is 0, so it borrows
        // the second's (a one-step schedule has no such array in the original: we keep pv).
        let posterior_log_variance_clipped: Vec<f64> = if posterior_variance.len() > 1 {
            std::iter::once(posterior_variance[1]).chain(posterior_variance[1..].iter().copied()).map(f64::ln).collect()
        } else {
            vec![betas[0].ln()]
        };
        Ok(Self {
            timestep_map: keep,
            sqrt_alphas_cumprod: ac.iter().map(|a| a.sqrt()).collect(),
            sqrt_one_minus_alphas_cumprod: ac.iter().map(|a| (1.0 - a).sqrt()).collect(),
            sqrt_recip_alphas_cumprod: ac.iter().map(|a| (1.0 / a).sqrt()).collect(),
            sqrt_recipm1_alphas_cumprod: ac.iter().map(|a| (1.0 / a - 1.0).sqrt()).collect(),
            posterior_mean_coef1: (0..betas.len()).map(|i| betas[i] * ac_prev[i].sqrt() / (1.0 - ac[i])).collect(),
            posterior_mean_coef2: (0..betas.len()).map(|i| (1.0 - ac_prev[i]) * (1.0 - betas[i]).sqrt() / (1.0 - ac[i])).collect(),
            log_betas: betas.iter().map(|b| b.ln()).collect(),
            posterior_log_variance_clipped,
            alphas_cumprod: ac,
            alphas_cumprod_prev: ac_prev,
            betas,
        })
    }

    pub fn len(&self) -> usize {
        self.betas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }
}

/// How each step moves from `x_t` to `x_{t−1}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmMethod {
    /// `p_sample`: the posterior mean plus learned-range noise (the original's default).
    Ancestral,
    /// `ddim_sample` with η = 0: deterministic, no step noise.
    Ddim,
}

impl AdmMethod {
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "adm" | "ancestral" | "p_sample" => Some(Self::Ancestral),
            "ddim" => Some(Self::Ddim),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Ancestral => "adm",
            Self::Ddim => "ddim",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn respacing_keeps_the_originals_steps() {
        // space_timesteps(1000, "250"): stride 999/249, rounded half to even.
        let s = space_timesteps(1000, 250).unwrap();
        assert_eq!(s.len(), 250);
        assert_eq!(&s[..4], &[0, 4, 8, 12]);
        assert_eq!(*s.last().unwrap(), 999);
        assert_eq!(space_timesteps(1000, 1).unwrap(), vec![0]);
        assert_eq!(space_timesteps(1000, 1000).unwrap(), (0..1000).collect::<Vec<_>>());
        assert!(space_timesteps(1000, 1001).is_err());
    }

    #[test]
    fn the_full_schedule_is_the_linear_one() {
        let s = AdmSchedule::new(&AdmConfig::default(), 1000).unwrap();
        assert!((s.betas[0] - 1e-4).abs() < 1e-15 && (s.betas[999] - 0.02).abs() < 1e-15);
        let s = AdmSchedule::new(&AdmConfig::default(), 10).unwrap();
        // The kept steps' ᾱ equal the full schedule's at the kept indices.
        let full = AdmSchedule::new(&AdmConfig::default(), 1000).unwrap();
        for (i, &t) in s.timestep_map.iter().enumerate() {
            assert!((s.alphas_cumprod[i] - full.alphas_cumprod[t]).abs() < 1e-12);
        }
    }
}
