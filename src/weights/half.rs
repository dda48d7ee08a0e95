//! 16-bit weights kept as stored: Gemma-2's 2.6 billion parameters are 5.2 GB in bf16 and
//! 10.5 GB widened to f32, the difference between fitting a 16 GB laptop or not.
//!
//! Only where the backend computes from them: the CPU kernels' Linear layers widen a block of
//! columns at a time into a cache-sized scratch (`model::cpu_kernels::linear`). Elsewhere, and
//! with `DCAE_WEIGHTS=f32` (to measure what the 16-bit copy saves), weights are widened at load.

use std::any::{Any, TypeId};
use std::sync::OnceLock;

use burn::backend::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::{Bytes, DType, Shape, Tensor, TensorPrimitive};
use burn_flex::{FlexTensor, Layout};

/// Whether tensors loaded through [`crate::weights::WeightSource::tensor_stored`] may stay 16-bit on `B`.
pub fn keeps_16bit<B: Backend>() -> bool {
    static F32: OnceLock<bool> = OnceLock::new();
    TypeId::of::<B>() == TypeId::of::<Flex>() && !*F32.get_or_init(|| std::env::var("DCAE_WEIGHTS").as_deref() == Ok("f32"))
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

    /// A tensor of `B` holding the values as they are; `None` where `B` does not keep 16-bit
    /// weights ([`keeps_16bit`]).
    pub fn into_tensor<B: Backend, const D: usize>(self, shape: [usize; D]) -> Option<Tensor<B, D>> {
        if !keeps_16bit::<B>() {
            return None;
        }
        let (bytes, dtype) = match self {
            Self::Bf16(v) => (Bytes::from_elems(v), DType::BF16),
            Self::F16(v) => (Bytes::from_elems(v), DType::F16),
        };
        let t = FlexTensor::new(bytes, Layout::contiguous(Shape::from(shape)), dtype);
        let prim: Box<dyn Any> = Box::new(t);
        let prim = *prim.downcast::<B::FloatTensorPrimitive>().ok()?;
        Some(Tensor::from_primitive(TensorPrimitive::Float(prim)))
    }
}
