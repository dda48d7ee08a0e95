//! The activations DC-AE's config names (`relu`, `silu`). A leaf module: the layers and the CPU
//! kernels both apply them, and neither may depend on the other for it.

use burn::tensor::activation::{relu, silu};
use burn::tensor::{backend::Backend, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Act {
    Relu,
    Silu,
}

impl Act {
    pub fn apply<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Act::Relu => relu(x),
            Act::Silu => silu(x),
        }
    }

    /// The same, in place on plain values (the CPU convolution's epilogue).
    pub fn apply_slice(self, v: &mut [f32]) {
        match self {
            Act::Relu => v.iter_mut().for_each(|x| *x = x.max(0.0)),
            Act::Silu => v.iter_mut().for_each(|x| *x /= 1.0 + (-*x).exp()),
        }
    }
}

