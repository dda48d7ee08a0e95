//! Tensors to and from plain `f32` values in host memory: images, latent files and previews all
//! cross the backend boundary here.

use burn::tensor::{backend::Backend, Tensor, TensorData};

/// A tensor on `device` holding `data` (row-major, `shape`).
pub fn upload<B: Backend, const D: usize>(data: Vec<f32>, shape: [usize; D], device: &B::Device) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// The tensor's values as f32, waiting for the device (GPU backends finish their work here).
pub fn read_back<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>, ReadBackError> {
    t.into_data().convert::<f32>().to_vec::<f32>().map_err(|e| ReadBackError(format!("{e:?}")))
}

#[derive(Debug, thiserror::Error)]
#[error("could not read a tensor back from the device: {0}")]
pub struct ReadBackError(String);

impl From<ReadBackError> for String {
    fn from(e: ReadBackError) -> Self {
        e.to_string()
    }
}
