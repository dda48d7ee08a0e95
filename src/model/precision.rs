//! The precision a model computes in: f32 everywhere; f16 for the autoencoders on GPU backends
//! whose device has it; bf16 for the bf16-trained text encoder (Gemma-2) where the backend has
//! bf16 arithmetic (CUDA), never f16, whose ±65504 range its activations exceed.
//!
//! Why: a DC-AE decoder's full-resolution activations are what runs a laptop GPU out of memory
//! (SANA's users met it after the whole denoising loop); in f16 the weights and every
//! activation take half the bytes. What stays in f32, as the reference's autocast keeps it
//! there: the norms (RMSNorm2d, an unfolded BatchNorm) and LiteMLA's attention, whose sums over
//! all pixels overflow f16 (see [`crate::model::dcae`]). A call whose f16 result still holds a
//! NaN or an infinity is run again with f32 activations and counted ([`F32Reruns`]), so a
//! caller can say so.
//!
//! The CPU backend computes in f32 only: its kernels are f32, and 16-bit activations there
//! would only add conversions (the stored-precision weights of the text encoder are another
//! matter, see [`crate::weights::half`]).

use std::any::TypeId;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use burn::backend::Flex;
use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::backend::Backend;
use burn::tensor::cast::ToElement;
use burn::tensor::{DType, FloatDType, Tensor};

/// The precision asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum PrecisionChoice {
    /// f16 on a GPU backend whose device computes in it, else f32.
    #[default]
    Auto,
    F32,
    F16,
}

/// The precision a model runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Precision {
    F32,
    F16,
    Bf16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        }
    }

    /// Bytes of one value.
    pub fn bytes(self) -> u64 {
        match self {
            Precision::F32 => 4,
            Precision::F16 | Precision::Bf16 => 2,
        }
    }

    pub fn dtype(self) -> FloatDType {
        match self {
            Precision::F32 => FloatDType::F32,
            Precision::F16 => FloatDType::F16,
            Precision::Bf16 => FloatDType::BF16,
        }
    }
}

/// Whether `B` on `device` computes in f16: a GPU backend (not the CPU's) whose device has f16
/// arithmetic (wgpu: the adapter's `SHADER_F16`).
pub fn f16_available<B: Backend>(device: &B::Device) -> bool {
    TypeId::of::<B>() != TypeId::of::<Flex>() && B::supports_dtype(device, DType::F16)
}

/// Whether `B` on `device` computes in bf16: a GPU backend with bf16 arithmetic (CUDA on
/// Ampere and later; wgpu has none, WGSL lacks the type).
pub fn bf16_available<B: Backend>(device: &B::Device) -> bool {
    TypeId::of::<B>() != TypeId::of::<Flex>() && B::supports_dtype(device, DType::BF16)
}

impl PrecisionChoice {
    /// The precision for a model trained in bf16 (Gemma-2): `auto` and `f16` mean bf16 where
    /// the backend has it ([`bf16_available`]) and f32 elsewhere, never f16.
    pub fn resolve_bf16_trained<B: Backend>(self, device: &B::Device) -> Precision {
        match self {
            PrecisionChoice::F32 => Precision::F32,
            PrecisionChoice::Auto | PrecisionChoice::F16 if bf16_available::<B>(device) => Precision::Bf16,
            PrecisionChoice::Auto | PrecisionChoice::F16 => Precision::F32,
        }
    }

    /// The precision this choice means on `B`, or why it cannot run there.
    pub fn resolve<B: Backend>(self, device: &B::Device) -> Result<Precision, String> {
        match self {
            PrecisionChoice::F32 => Ok(Precision::F32),
            PrecisionChoice::Auto if f16_available::<B>(device) => Ok(Precision::F16),
            PrecisionChoice::Auto => Ok(Precision::F32),
            PrecisionChoice::F16 if f16_available::<B>(device) => Ok(Precision::F16),
            PrecisionChoice::F16 if TypeId::of::<B>() == TypeId::of::<Flex>() => {
                Err("f16 runs on the GPU backends (wgpu, cuda); the CPU backend computes in f32: use --precision f32 or auto".into())
            }
            PrecisionChoice::F16 => Err(format!("this {} device has no f16 arithmetic: use --precision f32 or auto", B::name(device))),
        }
    }
}

/// Casts every float parameter of `module` to `dtype`.
pub fn cast_params<B: Backend, M: Module<B>>(module: M, dtype: FloatDType) -> M {
    struct Cast(FloatDType);
    impl<B: Backend> ModuleMapper<B> for Cast {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, tensor, mapper) = param.consume();
            Param::from_mapped_value(id, tensor.cast(self.0), mapper)
        }
    }
    module.map(&mut Cast(dtype))
}

/// `f(x)` computed in f32 and returned in `x`'s dtype: the f32 islands of a 16-bit forward
/// (no cast at all when `x` is f32).
pub fn in_f32<B: Backend, const D: usize, const E: usize>(x: Tensor<B, D>, f: impl FnOnce(Tensor<B, D>) -> Tensor<B, E>) -> Tensor<B, E> {
    match x.dtype() {
        DType::F32 => f(x),
        dt => to_dtype(f(x.cast(FloatDType::F32)), dt),
    }
}

/// `t` cast to the float `dtype` (f32 for anything else).
pub fn to_dtype<B: Backend, const D: usize>(t: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    match dtype {
        _ if t.dtype() == dtype => t,
        DType::F16 => t.cast(FloatDType::F16),
        DType::BF16 => t.cast(FloatDType::BF16),
        _ => t.cast(FloatDType::F32),
    }
}

/// `t` as f32 (a no-op for f32 tensors), for parameters used inside an f32 island.
pub fn as_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    if t.dtype() == DType::F32 {
        t
    } else {
        t.cast(FloatDType::F32)
    }
}

/// Whether every value of `t` is finite (reads one value back). A read that fails counts as
/// not finite, so the caller's f32 rerun meets the error where it can report it.
pub fn all_finite<B: Backend, const D: usize>(t: &Tensor<B, D>) -> bool {
    let t = as_f32(t.clone());
    let bad = t.clone().is_nan().bool_or(t.is_inf()).any().int();
    bad.try_into_scalar().is_ok_and(|v| v.to_i64() == 0)
}

/// How many calls of a 16-bit model had a non-finite result and were run again in f32,
/// shared by the model's clones.
#[derive(Debug, Clone, Default)]
pub struct F32Reruns(Arc<AtomicUsize>);

impl F32Reruns {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    pub(crate) fn add(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}
