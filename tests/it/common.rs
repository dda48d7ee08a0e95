//! Shared test helpers: fixture paths, tensors from safetensors files, error measures.

use std::path::PathBuf;

use burn::tensor::{Tensor, TensorData};
use dcae::engine::backend::Cpu;
use dcae::weights::tensor_file::read_nchw;

pub type B = Cpu;

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

pub fn device() -> burn::tensor::Device<B> {
    Default::default()
}

/// A 4-D tensor from a safetensors file, as values and shape.
pub fn read4(rel: &str, name: &str) -> (Vec<f32>, [usize; 4]) {
    let t = read_nchw(&fixture(rel), name).unwrap_or_else(|e| panic!("{e}"));
    (t.data, t.shape)
}

pub fn tensor4(rel: &str, name: &str) -> Tensor<B, 4> {
    let (v, s) = read4(rel, name);
    Tensor::from_data(TensorData::new(v, s), &device())
}

pub fn values<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().expect("f32 tensor")
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

pub fn max_abs(a: &[f32]) -> f32 {
    a.iter().map(|x| x.abs()).fold(0.0, f32::max)
}

/// max |a − b| / max |b|: the measure the golden README's tolerances are stated in.
pub fn rel_err(a: &[f32], reference: &[f32]) -> f32 {
    max_abs_diff(a, reference) / max_abs(reference).max(f32::MIN_POSITIVE)
}
