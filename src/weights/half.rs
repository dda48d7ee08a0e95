//! 16-bit weights kept as stored: Gemma-2's 2.6 billion parameters are 5.2 GB in bf16 and
//! 10.5 GB widened to f32, the difference between fitting a 16 GB laptop or not.
//!
//! Only where the backend computes from them:
//! - on the CPU, the kernels' Linear layers widen a block of columns at a time into a
//!   cache-sized scratch (`model::cpu_kernels::linear`);
//! - on a GPU backend with bf16 arithmetic (CUDA), bf16 weights stay bf16 on the device, and
//!   the text encoder computes in bf16 (`model::precision`) or, asked for f32, widens one
//!   layer's weight per call.
//!
//! Elsewhere (wgpu, f16 weights on a GPU), and with `DCAE_WEIGHTS=f32` (to measure what the
//! 16-bit copy saves), weights are widened at load.

use std::any::{Any, TypeId};
use std::sync::OnceLock;

use burn::backend::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::{Bytes, DType, Shape, Tensor, TensorData, TensorPrimitive};
use burn_flex::{FlexTensor, Layout};

/// Whether a tensor stored as `stored` and loaded through
/// [`crate::weights::WeightSource::tensor_stored`] stays 16-bit on `B`'s `device`.
pub fn keeps_16bit<B: Backend>(device: &B::Device, stored: DType) -> bool {
    static F32: OnceLock<bool> = OnceLock::new();
    if *F32.get_or_init(|| std::env::var("DCAE_WEIGHTS").as_deref() == Ok("f32")) {
        return false;
    }
    match stored {
        DType::BF16 | DType::F16 if TypeId::of::<B>() == TypeId::of::<Flex>() => true,
        DType::BF16 => crate::model::precision::bf16_available::<B>(device),
        _ => false,
    }
}

/// The 16-bit dtype a safetensors dtype name (`BF16`, `F16`) stands for.
pub fn dtype_named(name: &str) -> Option<DType> {
    match name {
        "BF16" => Some(DType::BF16),
        "F16" => Some(DType::F16),
        _ => None,
    }
}

/// 16-bit values as a checkpoint stores them.
pub enum HalfValues {
    Bf16(Vec<half::bf16>),
    F16(Vec<half::f16>),
}

impl HalfValues {
    /// The `[rows, cols]` matrix transposed to `[cols, rows]` (PyTorch's Linear `[out, in]` to
    /// burn's `[in, out]`).
    pub fn transposed(self, rows: usize, cols: usize) -> Self {
        // In 64 × 64 blocks: a column-at-a-time gather of a 9216 × 2304 matrix misses the
        // cache on every element.
        fn t<T: Copy + Default>(v: &[T], rows: usize, cols: usize) -> Vec<T> {
            const BLOCK: usize = 64;
            let mut out = vec![T::default(); v.len()];
            for r0 in (0..rows).step_by(BLOCK) {
                for c0 in (0..cols).step_by(BLOCK) {
                    for r in r0..(r0 + BLOCK).min(rows) {
                        for c in c0..(c0 + BLOCK).min(cols) {
                            out[c * rows + r] = v[r * cols + c];
                        }
                    }
                }
            }
            out
        }
        match self {
            Self::Bf16(v) => Self::Bf16(t(&v, rows, cols)),
            Self::F16(v) => Self::F16(t(&v, rows, cols)),
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            Self::Bf16(_) => DType::BF16,
            Self::F16(_) => DType::F16,
        }
    }

    /// A tensor of `B` on `device` holding the values as they are; `None` where `B` does not
    /// keep such weights ([`keeps_16bit`]).
    pub fn into_tensor<B: Backend, const D: usize>(self, shape: [usize; D], device: &B::Device) -> Option<Tensor<B, D>> {
        let dtype = self.dtype();
        if !keeps_16bit::<B>(device, dtype) {
            return None;
        }
        if TypeId::of::<B>() != TypeId::of::<Flex>() {
            // Uploaded as they are: a GPU backend with bf16 arithmetic.
            let data = match self {
                Self::Bf16(v) => TensorData::new(v, shape),
                Self::F16(v) => TensorData::new(v, shape),
            };
            return Some(Tensor::from_data(data, (device, dtype)));
        }
        // The CPU backend takes the buffer itself, no copy.
        let bytes = match self {
            Self::Bf16(v) => Bytes::from_elems(v),
            Self::F16(v) => Bytes::from_elems(v),
        };
        let t = FlexTensor::new(bytes, Layout::contiguous(Shape::from(shape)), dtype);
        let prim: Box<dyn Any> = Box::new(t);
        let prim = *prim.downcast::<B::FloatTensorPrimitive>().ok()?;
        Some(Tensor::from_primitive(TensorPrimitive::Float(prim)))
    }
}
