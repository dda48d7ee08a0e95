//! The UViT family's engine adapter: the UViT network ([`super::Uvit`]) sampled with
//! DPM-Solver exactly as the original `UViT.generate` does (guidance in two passes, computed
//! here as one batch). The solver itself is [`crate::sampler::dpm_solver`], kept beside SANA's
//! flow samplers because it is a general noise-prediction solver with its own schedule module.

use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

use super::Uvit;
use crate::model::diffusion::{checked_start, chosen_sampler, class_ids, ClassDenoiser, GenerateError, GenerateOutput, GenerateRequest, StepUpdate};
use crate::sampler::{DpmSolver, SamplerConfig};

/// A UViT with its DPM-Solver settings.
#[derive(Debug)]
pub struct UvitFamily<B: Backend> {
    pub net: Uvit<B>,
    pub sampler: SamplerConfig,
}

impl<B: Backend> ClassDenoiser<B> for UvitFamily<B> {
    fn family(&self) -> &'static str {
        "UViT"
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

    /// DPM-Solver from t = 1 to `t_end` with guidance `ε_c + (s − 1)(ε_c − ε_u)`, one pass
    /// when `cfg_scale == 1`.
    fn sample(&self, req: &GenerateRequest<B>, on_step: &mut dyn FnMut(StepUpdate<B>), cancel: &AtomicBool) -> Result<GenerateOutput<B>, GenerateError> {
        sample_uvit(&self.net, &self.sampler, req, on_step, cancel)
    }
}

/// Samples latents with a bare UViT (no autoencoder): the loop shared by
/// [`crate::model::diffusion::DiffusionModel::generate`] and the benchmarks. See there for the semantics.
pub fn sample_uvit<B: Backend>(
    uvit: &Uvit<B>,
    sampler: &SamplerConfig,
    req: &GenerateRequest<B>,
    on_step: &mut dyn FnMut(StepUpdate<B>),
    cancel: &AtomicBool,
) -> Result<GenerateOutput<B>, GenerateError> {
    let cfg = &uvit.config;
    let batch = req.labels.len();
    chosen_sampler(req.sampler.as_deref(), &["dpm_solver"], "UViT")?;
    let device = uvit.device();
    let expected = cfg.latent_shape(batch);
    let noise = checked_start(req, cfg.num_classes, expected, &device)?;
    let mut solver = DpmSolver::<f32>::new(sampler)?;

    let (y, y_null) = class_ids::<B>(&req.labels, cfg.null_class(), &device);
    let guided = req.cfg_scale != 1.0;
    // `scale − 1` in double, as Python computes it before it meets the f32 tensor.
    let gain = req.cfg_scale as f64 - 1.0;
    let n_train = solver.schedule.total_n() as f64;
    let mut calls = 0usize;
    let mut nfe = 0usize;

    // ε̂(x, t): the network sees t·N (t is an f32 value, so the f64 product rounds to f32 exactly
    // as the reference's float32 multiplication does).
    let mut eps_model = |x: Tensor<B, 4>, t: f64| -> Result<Tensor<B, 4>, GenerateError> {
        let t_model = Tensor::<B, 1>::from_data(TensorData::new(vec![(t * n_train) as f32; batch], [batch]), &device);
        if cancel.load(Ordering::Relaxed) {
            return Err(GenerateError::Cancelled);
        }
        nfe += 1;
        if !guided {
            calls += 1;
            return Ok(uvit.forward(x, t_model, y.clone()));
        }
        // The conditional and unconditional predictions as one batch: each Linear layer then
        // reads its weights once for both. With 66 tokens an image, the UViT-H forward is bound
        // by streaming its 2 GB of f32 weights, not by arithmetic.
        calls += 2;
        let both = uvit.forward(Tensor::cat(vec![x.clone(), x], 0), Tensor::cat(vec![t_model.clone(), t_model], 0), Tensor::cat(vec![y.clone(), y_null.clone()], 0));
        let cond = both.clone().narrow(0, 0, batch);
        let uncond = both.narrow(0, batch, batch);
        Ok(cond.clone() + (cond - uncond).mul_scalar(gain))
    };
    let (x, steps) = match &req.init {
        Some((z, strength)) => {
            // q(x_t | x_0) = N(α_t x_0, σ_t² I) at t = t_end + strength·(t_start − t_end).
            let t0 = solver.t_end + strength * (solver.t_start - solver.t_end);
            let (a, s) = (solver.schedule.alpha(t0), solver.schedule.sigma(t0));
            solver.t_start = t0;
            let steps = ((req.steps as f32 * strength).round() as usize).clamp(1, req.steps);
            (z.clone().mul_scalar(a as f64) + noise.mul_scalar(s as f64), steps)
        }
        None => (noise, req.steps),
    };
    let latent = solver.sample(x, steps, &mut eps_model, on_step)?;
    Ok(GenerateOutput { latent, nfe, network_calls: calls })
}

