//! An autoencoder on the run's device or on the CPU backend, behind one surface.
//!
//! Why: a GPU backend may have too little memory for the autoencoder beside the denoiser, or an
//! adapter too small for its decoder's activations (lavapipe: 128 MiB a tensor, so SANA's decoder
//! goes in 362-px tiles); the CPU backend has the system's memory and fast kernels. A placed
//! autoencoder takes and gives tensors on the run's device either way: on the CPU the input
//! crosses to the host once per call, and the output comes back, so the sampler, the previews
//! and the callers never know where it ran.
//!
//! Contact points: [`super::diffusion::DiffusionModel`] and [`super::sana::pipeline::SanaPipeline`]
//! hold one; `engine::memory::autoencoder_budget_for` gives the budget of the side it is on; the
//! user's choice arrives as `engine::backend::Placement` (Settings, `--vae-device`).

use burn::backend::Flex;
use burn::tensor::{backend::Backend, Tensor};

use super::precision::Precision;
use super::tiling::{self, Budget, Stage, TileConfigError};
use super::{Dcae, DcaeConfig};

/// A DC-AE on the run's backend (`Here`) or on the CPU backend.
#[derive(Debug, Clone)]
pub enum PlacedAe<B: Backend> {
    Here(Dcae<B>),
    Cpu(Dcae<Flex>),
}

impl<B: Backend> PlacedAe<B> {
    /// Whether it runs on the CPU backend while the run is elsewhere. (On the CPU backend itself
    /// an autoencoder is always `Here`.)
    pub fn on_cpu(&self) -> bool {
        matches!(self, Self::Cpu(_))
    }

    pub fn precision(&self) -> Precision {
        match self {
            Self::Here(ae) => ae.precision(),
            Self::Cpu(ae) => ae.precision(),
        }
    }

    pub fn num_params(&self) -> usize {
        match self {
            Self::Here(ae) => burn::module::Module::num_params(ae),
            Self::Cpu(ae) => burn::module::Module::num_params(ae),
        }
    }

    /// The bytes its weights take where they are held.
    pub fn weight_bytes(&self) -> u64 {
        self.precision().bytes() * self.num_params() as u64
    }

    /// Calls of a 16-bit model run again in f32 ([`Dcae::f32_reruns`]).
    pub fn f32_reruns(&self) -> usize {
        match self {
            Self::Here(ae) => ae.f32_reruns(),
            Self::Cpu(ae) => ae.f32_reruns(),
        }
    }

    /// [`tiling::encode_within`] where the autoencoder is; `budget` is that side's
    /// (`engine::memory::autoencoder_budget_for`). The latent is on `x`'s device.
    pub fn encode_within(
        &self,
        cfg: &DcaeConfig,
        x: Tensor<B, 4>,
        budget: Option<Budget>,
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Option<Tensor<B, 4>>, TileConfigError> {
        self.within(Stage::Encode, cfg, x, budget, progress)
    }

    /// [`tiling::decode_within`] where the autoencoder is (see [`Self::encode_within`]).
    pub fn decode_within(
        &self,
        cfg: &DcaeConfig,
        z: Tensor<B, 4>,
        budget: Option<Budget>,
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Option<Tensor<B, 4>>, TileConfigError> {
        self.within(Stage::Decode, cfg, z, budget, progress)
    }

    fn within(
        &self,
        stage: Stage,
        cfg: &DcaeConfig,
        x: Tensor<B, 4>,
        budget: Option<Budget>,
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Option<Tensor<B, 4>>, TileConfigError> {
        fn on<E: Backend>(
            ae: &Dcae<E>,
            stage: Stage,
            cfg: &DcaeConfig,
            x: Tensor<E, 4>,
            budget: Option<Budget>,
            progress: &mut dyn FnMut(usize, usize) -> bool,
        ) -> Result<Option<Tensor<E, 4>>, TileConfigError> {
            match stage {
                Stage::Encode => tiling::encode_within(ae, cfg, x, budget, progress),
                Stage::Decode => tiling::decode_within(ae, cfg, x, budget, progress),
            }
        }
        match self {
            Self::Here(ae) => on(ae, stage, cfg, x, budget, progress),
            Self::Cpu(ae) => {
                let device = x.device();
                Ok(on(ae, stage, cfg, to_cpu(x), budget, progress)?.map(|y| from_cpu(y, &device)))
            }
        }
    }

    /// The whole batch at once, untiled (tests and the reference paths).
    pub fn decode(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            Self::Here(ae) => ae.decode(z),
            Self::Cpu(ae) => {
                let device = z.device();
                from_cpu(ae.decode(to_cpu(z)), &device)
            }
        }
    }
}

fn to_cpu<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<Flex, D> {
    Tensor::from_data(t.into_data(), &Default::default())
}

fn from_cpu<B: Backend, const D: usize>(t: Tensor<Flex, D>, device: &B::Device) -> Tensor<B, D> {
    Tensor::from_data(t.into_data(), device)
}
