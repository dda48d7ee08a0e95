//! Named tensors in safetensors files: the CLI's `latent`, `recon`, `noise` and text-embedding files.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

#[derive(Debug, thiserror::Error)]
pub enum TensorFileError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("{path} is not a valid safetensors file: {reason}. It may be truncated or written by another tool: write it again (`dcae encode --latent-out` writes latents `dcae decode` reads)")]
    Format { path: String, reason: String },
    #[error("{path} has no tensor named `{name}` (it holds: {available})")]
    NoSuchTensor { path: String, name: String, available: String },
    #[error("tensor `{name}` in {path} has shape {shape:?}; expected 4 dimensions (NCHW)")]
    NotNchw { path: String, name: String, shape: Vec<usize> },
    #[error("tensor `{name}` in {path} has shape {shape:?}: a dimension of length 0 holds nothing to work on. Write the file again with at least one image (batch) and non-empty sides")]
    EmptyDimension { path: String, name: String, shape: Vec<usize> },
}

/// A tensor read from a file: f32 values and an NCHW shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Nchw {
    pub data: Vec<f32>,
    pub shape: [usize; 4],
}

/// Reads tensor `name` as f32 (f16/bf16/f64 converted), which must be 4-D.
pub fn read_nchw(path: &Path, name: &str) -> Result<Nchw, TensorFileError> {
    let (data, shape) = read_f32(path, name)?;
    let Ok(shape4) = <[usize; 4]>::try_from(shape.as_slice()) else {
        return Err(TensorFileError::NotNchw { path: path.display().to_string(), name: name.into(), shape });
    };
    Ok(Nchw { data, shape: shape4 })
}

/// Reads tensor `name` of any rank as f32 values (f16/bf16/f64 converted) and its shape.
pub fn read_f32(path: &Path, name: &str) -> Result<(Vec<f32>, Vec<usize>), TensorFileError> {
    let p = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| TensorFileError::Read { path: p.clone(), source })?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| TensorFileError::Format { path: p.clone(), reason: e.to_string() })?;
    let view = st.tensor(name).map_err(|_| {
        let mut names: Vec<_> = st.names();
        names.sort();
        TensorFileError::NoSuchTensor { path: p.clone(), name: name.into(), available: names.join(", ") }
    })?;
    let shape = view.shape().to_vec();
    // Every CLI path reads its tensors here: an empty one is refused before it reaches burn,
    // whose broadcasts panic on a zero-length batch.
    if shape.contains(&0) {
        return Err(TensorFileError::EmptyDimension { path: p, name: name.into(), shape });
    }
    let b = view.data();
    let data = match view.dtype() {
        Dtype::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::BF16 => b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::F64 => b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32).collect(),
        other => {
            return Err(TensorFileError::Format { path: p, reason: format!("tensor `{name}` has dtype {other:?}, not a float type") })
        }
    };
    Ok((data, shape))
}

/// f32 and i64 tensors (name, values, shape) in one file; the masks of `--text-embeds-out` are
/// int64, as diffusers' `encode_prompt` returns them.
pub fn write_f32_i64(path: &Path, floats: &[(&str, &[f32], &[usize])], ints: &[(&str, &[i64], &[usize])]) -> Result<(), TensorFileError> {
    let p = path.display().to_string();
    let mut bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, v, shape) in floats {
        bytes.push((name.to_string(), Dtype::F32, shape.to_vec(), v.iter().flat_map(|x| x.to_le_bytes()).collect()));
    }
    for (name, v, shape) in ints {
        bytes.push((name.to_string(), Dtype::I64, shape.to_vec(), v.iter().flat_map(|x| x.to_le_bytes()).collect()));
    }
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(name, dtype, shape, b)| {
            let view = TensorView::new(*dtype, shape.clone(), b).map_err(|e| TensorFileError::Format { path: p.clone(), reason: e.to_string() })?;
            Ok((name.clone(), view))
        })
        .collect::<Result<_, TensorFileError>>()?;
    let out = safetensors::serialize(views, None).map_err(|e| TensorFileError::Format { path: p.clone(), reason: e.to_string() })?;
    std::fs::write(path, out).map_err(|source| TensorFileError::Write { path: p, source })
}

/// Writes f32 tensors (name, values, shape) with optional string metadata.
pub fn write_f32(
    path: &Path,
    tensors: &[(&str, &[f32], &[usize])],
    metadata: &[(&str, String)],
) -> Result<(), TensorFileError> {
    let p = path.display().to_string();
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, v, _)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, _, shape), b)| {
            let view = TensorView::new(Dtype::F32, shape.to_vec(), b)
                .map_err(|e| TensorFileError::Format { path: p.clone(), reason: e.to_string() })?;
            Ok((name.to_string(), view))
        })
        .collect::<Result<_, TensorFileError>>()?;
    let meta: HashMap<String, String> = metadata.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let meta = (!meta.is_empty()).then_some(meta);
    let out = safetensors::serialize(views, meta)
        .map_err(|e| TensorFileError::Format { path: p.clone(), reason: e.to_string() })?;
    std::fs::write(path, out).map_err(|source| TensorFileError::Write { path: p, source })
}
