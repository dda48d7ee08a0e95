//! Strict loading of safetensors checkpoints, memory-mapped.
//!
//! A file is mapped once; tensors are converted to f32 one at a time as the model asks for them,
//! so peak memory is the model plus one tensor, not the model plus the file.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, Tensor, TensorData};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use super::keys::{to_diffusers, Stored};
use super::WeightSource;

/// One tensor's place in the file.
#[derive(Debug, Clone)]
struct Entry {
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range inside the mapped file (header included in the offset).
    start: usize,
    end: usize,
}

/// A mapped safetensors file and its table of contents.
pub struct Checkpoint {
    path: PathBuf,
    map: Mmap,
    entries: BTreeMap<String, Entry>,
}

/// What went wrong with one key.
#[derive(Debug, Clone, PartialEq)]
pub enum Problem {
    Missing { key: String, shape: Vec<usize> },
    Unexpected { key: String, shape: Vec<usize> },
    Shape { key: String, expected: Vec<usize>, found: Vec<usize> },
    Dtype { key: String, dtype: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing { key, shape } => write!(f, "missing key `{key}` (expected shape {shape:?})"),
            Problem::Unexpected { key, shape } => write!(f, "unexpected key `{key}` (shape {shape:?})"),
            Problem::Shape { key, expected, found } => {
                write!(f, "key `{key}` has shape {found:?}, expected {expected:?}")
            }
            Problem::Dtype { key, dtype } => write!(f, "key `{key}` has dtype {dtype}, which is not a float type"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot open checkpoint {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid safetensors file ({reason}); it may be truncated or corrupt — delete it and download it again")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{}", mismatch_message(.path, .model, .problems))]
    Mismatch { path: PathBuf, model: String, problems: Vec<Problem> },
    #[error("{path}: {reason}")]
    Layout { path: PathBuf, reason: String },
}

fn mismatch_message(path: &Path, model: &str, problems: &[Problem]) -> String {
    let count = |f: fn(&Problem) -> bool| problems.iter().filter(|p| f(p)).count();
    let missing = count(|p| matches!(p, Problem::Missing { .. }));
    let unexpected = count(|p| matches!(p, Problem::Unexpected { .. }));
    let shape = count(|p| matches!(p, Problem::Shape { .. }));
    let other = problems.len() - missing - unexpected - shape;
    let mut s = format!(
        "{} does not match {model}: {missing} missing, {unexpected} unexpected, {shape} misshaped key(s){}",
        path.display(),
        if other > 0 { format!(", {other} of a non-float dtype") } else { String::new() }
    );
    // Many keys wrong on both sides: most likely the file belongs to another architecture.
    if missing + shape > 5 && unexpected > 5 {
        s.push_str(" — is this a checkpoint of another model?");
    }
    const SHOWN: usize = 40;
    for p in problems.iter().take(SHOWN) {
        s.push_str("\n  - ");
        s.push_str(&p.to_string());
    }
    if problems.len() > SHOWN {
        s.push_str(&format!("\n  … and {} more", problems.len() - SHOWN));
    }
    s
}

impl Checkpoint {
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LoadError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| LoadError::Io { path: path.clone(), source })?;
        // SAFETY: the map is read-only; a file changed by another process while mapped is the one
        // case this cannot guard against, as with every mmap-based loader (PyTorch's included).
        let map = unsafe { Mmap::map(&file) }.map_err(|source| LoadError::Io { path: path.clone(), source })?;
        let corrupt = |reason: String| LoadError::Corrupt { path: path.clone(), reason };
        let (header_len, meta) = SafeTensors::read_metadata(&map[..]).map_err(|e| match e {
            safetensors::SafeTensorError::MetadataIncompleteBuffer => corrupt(format!(
                "its header describes more (or less) data than the {} bytes present: the file is truncated",
                map.len()
            )),
            other => corrupt(other.to_string()),
        })?;
        let data_start = 8 + header_len;
        let mut entries = BTreeMap::new();
        for (name, info) in meta.tensors() {
            let (a, b) = info.data_offsets;
            let (start, end) = (data_start + a, data_start + b);
            if end > map.len() {
                return Err(corrupt(format!(
                    "tensor `{name}` ends at byte {end} but the file has {} bytes (truncated?)",
                    map.len()
                )));
            }
            let elems: usize = info.shape.iter().product();
            if elems * info.dtype.bitsize() / 8 != b - a {
                return Err(corrupt(format!("tensor `{name}` has {} bytes for shape {:?}", b - a, info.shape)));
            }
            entries.insert(name.clone(), Entry { dtype: info.dtype, shape: info.shape.clone(), start, end });
        }
        Ok(Self { path, map, entries })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(|k| k.as_str())
    }

    pub fn shape(&self, key: &str) -> Option<&[usize]> {
        self.entries.get(key).map(|e| e.shape.as_slice())
    }

    /// The tensor's values as f32 (f16, bf16 and f64 are converted). `None` if absent.
    pub fn read_f32(&self, key: &str) -> Option<Result<Vec<f32>, Problem>> {
        let e = self.entries.get(key)?;
        let bytes = &self.map[e.start..e.end];
        Some(match e.dtype {
            Dtype::F32 => Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()),
            Dtype::F16 => Ok(bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()),
            Dtype::BF16 => Ok(bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()),
            Dtype::F64 => Ok(bytes
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8-byte chunk")) as f32)
                .collect()),
            other => Err(Problem::Dtype { key: key.to_string(), dtype: format!("{other:?}") }),
        })
    }

    /// The naming under `prefix`, told apart by keys only the one naming has.
    pub fn layout(&self, prefix: &str) -> Option<Layout> {
        let has = |p: &str| self.entries.keys().any(|k| k.strip_prefix(prefix).is_some_and(|r| r.starts_with(p)));
        if has("encoder.stages.") || has("decoder.stages.") || has("encoder.project_in.") {
            Some(Layout::Original)
        } else if has("encoder.down_blocks.") || has("decoder.up_blocks.") || has("encoder.conv_in.") {
            Some(Layout::Diffusers)
        } else {
            None
        }
    }
}

/// The two namings of DC-AE weights (see [`super::keys`]); UViT weights have one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Original,
    Diffusers,
}

/// A strict [`WeightSource`] over one part (a key prefix) of a checkpoint.
pub struct CheckpointLoader<'a, B: Backend> {
    ckpt: &'a Checkpoint,
    prefix: String,
    layout: Layout,
    device: B::Device,
    used: HashSet<String>,
    problems: Vec<Problem>,
}

impl<'a, B: Backend> CheckpointLoader<'a, B> {
    pub fn new(ckpt: &'a Checkpoint, prefix: &str, layout: Layout, device: &B::Device) -> Self {
        Self { ckpt, prefix: prefix.to_string(), layout, device: device.clone(), used: HashSet::new(), problems: Vec::new() }
    }

    /// Ends the load: every key under the prefix that nobody asked for is unexpected.
    /// `model` names what was being loaded, for the message.
    pub fn finish(mut self, model: &str) -> Result<(), LoadError> {
        for key in self.ckpt.keys() {
            if key.starts_with(&self.prefix) && !self.used.contains(key) && !key.ends_with("num_batches_tracked") {
                let shape = self.ckpt.shape(key).unwrap_or_default().to_vec();
                self.problems.push(Problem::Unexpected { key: key.to_string(), shape });
            }
        }
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(LoadError::Mismatch { path: self.ckpt.path().to_path_buf(), model: model.to_string(), problems: self.problems })
        }
    }

    /// Reads one stored tensor, checking its shape. On any problem, records it and returns zeros
    /// so construction can go on and report the rest.
    fn read(&mut self, key: &str, shape: &[usize]) -> Option<Vec<f32>> {
        self.used.insert(key.to_string());
        let Some(found) = self.ckpt.shape(key) else {
            self.problems.push(Problem::Missing { key: key.to_string(), shape: shape.to_vec() });
            return None;
        };
        if found != shape {
            self.problems.push(Problem::Shape { key: key.to_string(), expected: shape.to_vec(), found: found.to_vec() });
            return None;
        }
        match self.ckpt.read_f32(key)? {
            Ok(v) => Some(v),
            Err(p) => {
                self.problems.push(p);
                None
            }
        }
    }

    fn values(&mut self, key: &str, shape: &[usize]) -> Option<Vec<f32>> {
        let prefix = self.prefix.clone();
        let full = |k: &str| format!("{prefix}{k}");
        match self.layout {
            Layout::Original => self.read(&full(key), shape),
            Layout::Diffusers => match to_diffusers(key) {
                None => {
                    self.problems.push(Problem::Missing { key: full(key), shape: shape.to_vec() });
                    None
                }
                Some(Stored::Copy(k)) => self.read(&full(&k), shape),
                Some(Stored::Squeezed(k)) => self.read(&full(&k), &shape[..2]),
                Some(Stored::QkvThirds(ks)) => {
                    // [3C, C, 1, 1] from three [C, C] row blocks, concatenated in order.
                    let third = [shape[0] / 3, shape[1]];
                    let parts: Vec<_> = ks.iter().map(|k| self.read(&full(k), &third)).collect();
                    let parts: Option<Vec<_>> = parts.into_iter().collect();
                    parts.map(|p| p.concat())
                }
            },
        }
    }
}

impl<B: Backend> WeightSource<B> for CheckpointLoader<'_, B> {
    fn tensor<const D: usize>(&mut self, key: &str, shape: [usize; D]) -> Tensor<B, D> {
        match self.values(key, &shape) {
            Some(v) => Tensor::from_data(TensorData::new(v, shape), &self.device),
            None => Tensor::zeros(shape, &self.device),
        }
    }

    fn ignored(&mut self, key: &str) {
        let stored = match self.layout {
            Layout::Original => Some(key.to_string()),
            Layout::Diffusers => match to_diffusers(key) {
                Some(Stored::Copy(k)) => Some(k),
                _ => None,
            },
        };
        if let Some(k) = stored {
            self.used.insert(format!("{}{}", self.prefix, k));
        }
    }

    fn device(&self) -> B::Device {
        self.device.clone()
    }
}
