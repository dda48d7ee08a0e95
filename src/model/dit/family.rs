//! The DiT family's engine adapter: [`Dit`] sampled with ADM ([`super::adm`]) as the original
//! `DiT.generate` does it:
//! - guidance through `forward_with_cfg`: one forward over `[x, x]` with `[y, null]`; the
//!   noise channels become `ε_u + s·(ε_c − ε_u)`, the variance channels stay the
//!   conditional half's (the returned sample is the first half of the doubled batch);
//! - `p_sample_loop` over the respaced steps from the noisiest down, the network given the
//!   *original* step index; noise added at every step but the last;
//! - or `ddim_sample_loop` with η = 0 (deterministic).

use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::StandardNormal;

use super::adm::{AdmConfig, AdmMethod, AdmSchedule};
use super::Dit;
use crate::model::diffusion::{checked_start, chosen_sampler, class_ids, ClassDenoiser, GenerateError, GenerateOutput, GenerateRequest, StepUpdate};

/// A DiT with its ADM settings.
#[derive(Debug)]
pub struct DitFamily<B: Backend> {
    pub net: Dit<B>,
    pub sampler: AdmConfig,
}

/// The per-step noise stream of a seed: its own generator, so the initial noise of a seed
/// stays what [`crate::model::diffusion::seeded_noise`] gives every family.
fn step_rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ 0x5DEE_CE66_D1CE_4E5B)
}

impl<B: Backend> ClassDenoiser<B> for DitFamily<B> {
    fn family(&self) -> &'static str {
        "DiT"
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
        let method = AdmMethod::parse(chosen_sampler(req.sampler.as_deref(), &["adm", "ddim"], "DiT")?).unwrap_or(AdmMethod::Ancestral);
        let batch = req.labels.len();
        let device = self.net.device();
        let shape = cfg.latent_shape(batch);
        let noise = checked_start(req, cfg.num_classes, shape, &device)?;
        let steps = req.steps.min(self.sampler.num_train_timesteps);
        let sched = AdmSchedule::new(&self.sampler, steps)?;
        let n = sched.len();
        if let Some(sn) = &req.step_noise {
            if sn.len() < n || sn.iter().any(|t| t.dims() != shape) {
                return Err(GenerateError::StepNoise { found: sn.len(), shape: sn.iter().map(|t| t.dims()).find(|d| *d != shape), expected: n, expected_shape: shape });
            }
        }
        let (y, y_null) = class_ids::<B>(&req.labels, cfg.null_class(), &device);
        let both_y = Tensor::cat(vec![y.clone(), y_null], 0);
        let guided = req.cfg_scale != 1.0;
        let c = cfg.in_channels;
        let learn_sigma = cfg.learn_sigma;
        let mut calls = 0usize;
        let mut nfe = 0usize;

        // (ε, variance values) for the first half of the doubled batch at kept step `i`.
        let mut model = |x: Tensor<B, 4>, i: usize| -> Result<(Tensor<B, 4>, Option<Tensor<B, 4>>), GenerateError> {
            if cancel.load(Ordering::Relaxed) {
                return Err(GenerateError::Cancelled);
            }
            nfe += 1;
            let t_orig = sched.timestep_map[i] as f32;
            let rows = if guided { 2 * batch } else { batch };
            let t = Tensor::<B, 1>::from_data(TensorData::new(vec![t_orig; rows], [rows]), &device);
            let out = if guided {
                calls += 2;
                let both = self.net.forward(Tensor::cat(vec![x.clone(), x], 0), t, both_y.clone());
                let eps = both.clone().narrow(1, 0, c);
                let (cond, uncond) = (eps.clone().narrow(0, 0, batch), eps.narrow(0, batch, batch));
                let guided_eps = uncond.clone() + (cond - uncond).mul_scalar(req.cfg_scale);
                let rest = learn_sigma.then(|| both.narrow(0, 0, batch).narrow(1, c, c));
                (guided_eps, rest)
            } else {
                calls += 1;
                let out = self.net.forward(x, t, y.clone());
                let rest = learn_sigma.then(|| out.clone().narrow(1, c, c));
                (out.narrow(1, 0, c), rest)
            };
            Ok(out)
        };

        // Image-to-image: q(x_k | x_0) at the kept step k = round(strength·n) − 1.
        let (mut x, start) = match &req.init {
            Some((z, strength)) => {
                let k = ((n as f32 * strength).round() as usize).clamp(1, n) - 1;
                (z.clone().mul_scalar(sched.sqrt_alphas_cumprod[k] as f32) + noise.mul_scalar(sched.sqrt_one_minus_alphas_cumprod[k] as f32), k)
            }
            None => (noise, n - 1),
        };
        let mut rng = step_rng(req.seed);
        let total = start + 1;
        for (done, i) in (0..=start).rev().enumerate() {
            let (eps, var_values) = model(x.clone(), i)?;
            let f = |v: &[f64]| v[i] as f32;
            // x̂₀ = √(1/ᾱ)·x − √(1/ᾱ − 1)·ε (no clipping: clip_denoised=False).
            let x0 = x.clone().mul_scalar(f(&sched.sqrt_recip_alphas_cumprod)) - eps.clone().mul_scalar(f(&sched.sqrt_recipm1_alphas_cumprod));
            x = match method {
                AdmMethod::Ancestral => {
                    let mean = x0.clone().mul_scalar(f(&sched.posterior_mean_coef1)) + x.clone().mul_scalar(f(&sched.posterior_mean_coef2));
                    // The step's noise is drawn at every step (the original's randn_like), used
                    // at all but the last.
                    let z = match &req.step_noise {
                        Some(sn) => sn[n - 1 - i].clone(),
                        None => {
                            let values: Vec<f32> = (0..shape.iter().product::<usize>()).map(|_| rng.sample(StandardNormal)).collect();
                            Tensor::from_data(TensorData::new(values, shape), &device)
                        }
                    };
                    if i == 0 {
                        mean
                    } else {
                        let (min_log, max_log) = (f(&sched.posterior_log_variance_clipped), f(&sched.log_betas));
                        let log_var = match var_values {
                            // frac·max + (1 − frac)·min with frac = (v + 1)/2.
                            Some(v) => {
                                let frac = (v + 1.0) / 2.0;
                                frac.clone().mul_scalar(max_log) + (frac.neg() + 1.0).mul_scalar(min_log)
                            }
                            None => Tensor::full(shape, max_log, &device),
                        };
                        mean + (log_var.mul_scalar(0.5f32).exp()) * z
                    }
                }
                AdmMethod::Ddim => {
                    // ε re-derived from x̂₀, then η = 0: x̂₀·√ᾱ_prev + √(1 − ᾱ_prev)·ε.
                    let eps = (x.clone().mul_scalar(f(&sched.sqrt_recip_alphas_cumprod)) - x0.clone()).div_scalar(f(&sched.sqrt_recipm1_alphas_cumprod));
                    let a_prev = f(&sched.alphas_cumprod_prev);
                    x0.clone().mul_scalar(a_prev.sqrt()) + eps.mul_scalar((1.0 - a_prev - 0.0).sqrt())
                }
            };
            let t = sched.timestep_map[i] as f64 / self.sampler.num_train_timesteps as f64;
            on_step(StepUpdate { step: done + 1, total, t, x: x.clone(), x0 });
        }
        Ok(GenerateOutput { latent: x, nfe, network_calls: calls })
    }
}
