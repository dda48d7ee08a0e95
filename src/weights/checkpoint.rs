//! Strict loading of safetensors checkpoints, memory-mapped: one file, or the shards named by a
//! `*.safetensors.index.json` (how diffusers and transformers store models over a few GB).
//!
//! Files are mapped once; tensors are converted to f32 one at a time as the model asks for them,
//! so peak memory is the model plus one tensor, not the model plus the files.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, Tensor, TensorData};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use super::keys::{to_diffusers, Stored};
use super::WeightSource;

/// One tensor's place in the files.
#[derive(Debug, Clone)]
struct Entry {
    /// Index into [`Checkpoint::files`].
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range inside the mapped file (header included in the offset).
    start: usize,
    end: usize,
}

/// Mapped safetensors files and their joint table of contents.
pub struct Checkpoint {
    /// The file given to [`Checkpoint::open`], or the index of a sharded checkpoint.
    path: PathBuf,
    files: Vec<(PathBuf, std::sync::Arc<Mmap>)>,
    entries: BTreeMap<String, Entry>,
}

/// Bigger shard indexes than this are not real ones (the 4.8B transformer's is 110 kB).
const MAX_INDEX_BYTES: u64 = 64 << 20;

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
    #[error("{shard} is missing: the shard index {index} names it; download the model again (an interrupted download leaves shards out)")]
    MissingShard { index: PathBuf, shard: PathBuf },
    /// A weight the model holds whole is larger than the device's largest tensor (found by the
    /// key check, before any weight is read).
    #[error("{0}")]
    TooLarge(crate::model::limits::TooLarge),
    /// The job loading it was cancelled ([`super::cancel`]); nothing of it is kept.
    #[error("the load of {model} was cancelled")]
    Cancelled { model: String },
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
    /// Maps one safetensors file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LoadError> {
        let path = path.as_ref().to_path_buf();
        let mut ckpt = Self { path: path.clone(), files: Vec::new(), entries: BTreeMap::new() };
        ckpt.add_file(&path, None)?;
        Ok(ckpt)
    }

    /// Maps every shard a `*.safetensors.index.json` names (its `weight_map`: key → file name
    /// beside the index). The index must agree with the shards: a key it places in a shard
    /// that lacks it, or a shard that is not there, is an error naming both.
    pub fn open_index(index: impl AsRef<Path>) -> Result<Self, LoadError> {
        let index = index.as_ref().to_path_buf();
        let corrupt = |reason: String| LoadError::Corrupt { path: index.clone(), reason };
        let io = |source| LoadError::Io { path: index.clone(), source };
        let len = std::fs::metadata(&index).map_err(io)?.len();
        if len > MAX_INDEX_BYTES {
            return Err(corrupt(format!("the index is {len} bytes, far more than any shard index")));
        }
        let text = std::fs::read(&index).map_err(|source| LoadError::Io { path: index.clone(), source })?;
        let json: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| corrupt(format!("it is not valid JSON ({e})")))?;
        let Some(map) = json.get("weight_map").and_then(|m| m.as_object()) else {
            return Err(corrupt("it has no `weight_map` object".into()));
        };
        let dir = index.parent().map(Path::to_path_buf).unwrap_or_default();
        // Shards in the order they first appear, each with the keys the index puts there.
        let mut shards: Vec<(String, Vec<String>)> = Vec::new();
        for (key, file) in map {
            let Some(file) = file.as_str() else {
                return Err(corrupt(format!("`weight_map` entry `{key}` is not a file name")));
            };
            // A shard name is a plain file name beside the index: nothing that climbs out of it.
            if file.is_empty() || file.contains(['/', '\\']) || file == ".." || file == "." {
                return Err(corrupt(format!("`weight_map` entry `{key}` names `{file}`, which is not a file beside the index")));
            }
            match shards.iter_mut().find(|(f, _)| f == file) {
                Some((_, keys)) => keys.push(key.clone()),
                None => shards.push((file.to_string(), vec![key.clone()])),
            }
        }
        if shards.is_empty() {
            return Err(corrupt("its `weight_map` is empty".into()));
        }
        let mut ckpt = Self { path: index.clone(), files: Vec::new(), entries: BTreeMap::new() };
        for (file, keys) in &shards {
            let shard = dir.join(file);
            if !shard.is_file() {
                return Err(LoadError::MissingShard { index: index.clone(), shard });
            }
            ckpt.add_file(&shard, Some(&index))?;
            let n = ckpt.files.len() - 1;
            if let Some(key) = keys.iter().find(|k| ckpt.entries.get(k.as_str()).is_none_or(|e| e.file != n)) {
                return Err(corrupt(format!(
                    "it places `{key}` in {file}, which does not hold it: the index and the shards come from different downloads — delete the folder and download it again"
                )));
            }
        }
        Ok(ckpt)
    }

    /// Maps `path` and adds its tensors; a key already seen in another shard is an error.
    fn add_file(&mut self, path: &Path, index: Option<&Path>) -> Result<(), LoadError> {
        let file = File::open(path).map_err(|source| LoadError::Io { path: path.to_path_buf(), source })?;
        // SAFETY: the map is read-only; a file changed by another process while mapped is the one
        // case this cannot guard against, as with every mmap-based loader (PyTorch's included).
        let map = unsafe { Mmap::map(&file) }.map_err(|source| LoadError::Io { path: path.to_path_buf(), source })?;
        let corrupt = |reason: String| LoadError::Corrupt { path: path.to_path_buf(), reason };
        let (header_len, meta) = SafeTensors::read_metadata(&map[..]).map_err(|e| match e {
            safetensors::SafeTensorError::MetadataIncompleteBuffer => corrupt(format!(
                "its header describes more (or less) data than the {} bytes present: the file is truncated",
                map.len()
            )),
            other => corrupt(other.to_string()),
        })?;
        let data_start = 8 + header_len;
        let n = self.files.len();
        for (name, info) in meta.tensors() {
            let (a, b) = info.data_offsets;
            let (start, end) = (data_start.saturating_add(a), data_start.saturating_add(b));
            if end > map.len() {
                return Err(corrupt(format!(
                    "tensor `{name}` ends at byte {end} but the file has {} bytes (truncated?)",
                    map.len()
                )));
            }
            let elems = info.shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
            if elems.and_then(|e| e.checked_mul(info.dtype.bitsize())).map(|bits| bits / 8) != Some(b.wrapping_sub(a)) {
                return Err(corrupt(format!("tensor `{name}` has {} bytes for shape {:?}", b.wrapping_sub(a), info.shape)));
            }
            if let Some(prev) = self.entries.get(&name) {
                let other = self.files[prev.file].0.display().to_string();
                let what = index.map(|i| format!(" (shards of {})", i.display())).unwrap_or_default();
                return Err(corrupt(format!("tensor `{name}` is also stored in {other}{what}")));
            }
            self.entries.insert(name.clone(), Entry { file: n, dtype: info.dtype, shape: info.shape.clone(), start, end });
        }
        self.files.push((path.to_path_buf(), std::sync::Arc::new(map)));
        Ok(())
    }

    /// The dtype `key` is stored in, as safetensors names it (`F32`, `BF16`, …).
    pub fn dtype(&self, key: &str) -> Option<String> {
        self.entries.get(key).map(|e| format!("{:?}", e.dtype))
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
        let map = &self.files[e.file].1;
        let bytes = &map[e.start..e.end];
        let values = match e.dtype {
            Dtype::F32 => Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()),
            Dtype::F16 => Ok(bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()),
            Dtype::BF16 => Ok(bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()),
            Dtype::F64 => Ok(bytes.chunks_exact(8).map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32).collect()),
            other => Err(Problem::Dtype { key: key.to_string(), dtype: format!("{other:?}") }),
        };
        release_pages(map, e.start, e.end);
        Some(values)
    }

    /// The tensor's values as stored when they are bf16 or f16; `None` if absent or of another
    /// type.
    pub fn read_half(&self, key: &str) -> Option<super::half::HalfValues> {
        use super::half::HalfValues;
        let e = self.entries.get(key)?;
        let bytes = &self.files[e.file].1[e.start..e.end];
        let values = match e.dtype {
            Dtype::BF16 => HalfValues::Bf16(bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]])).collect()),
            Dtype::F16 => HalfValues::F16(bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]])).collect()),
            _ => return None,
        };
        release_pages(&self.files[e.file].1, e.start, e.end);
        Some(values)
    }

    /// The tensor as a [`super::HostTable`] over the mapped file (f32, f16 or bf16, as stored);
    /// `None` if absent, of another type or not 2-D.
    pub fn host_table(&self, key: &str) -> Option<super::HostTable> {
        use super::host_table::Stored as S;
        let e = self.entries.get(key)?;
        let stored = match e.dtype {
            Dtype::F32 => S::F32,
            Dtype::F16 => S::F16,
            Dtype::BF16 => S::Bf16,
            _ => return None,
        };
        let [rows, cols] = e.shape[..] else { return None };
        super::HostTable::mapped(self.files[e.file].1.clone(), e.start, stored, rows, cols)
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

/// Drops the pages of a tensor that has been read from the process's resident set: otherwise
/// the mapped file counts in full towards it while the model loads (a 5 GB bf16 text encoder
/// would hold 5 GB of file beside its 10 GB of f32 weights). The pages are the file's, so a
/// later read simply faults them in again.
#[cfg(unix)]
fn release_pages(map: &Mmap, start: usize, end: usize) {
    const PAGE: usize = 4096;
    let from = start / PAGE * PAGE;
    if end > from {
        // SAFETY: a read-only private mapping of a file; no reference into the range outlives
        // this call (the caller's slice is dead), and dropped pages read back the same bytes.
        let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, from, end - from) };
    }
}

#[cfg(not(unix))]
fn release_pages(_map: &Mmap, _start: usize, _end: usize) {}

fn is_float(d: Dtype) -> bool {
    matches!(d, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64)
}

/// Builds a model strictly from `ckpt` (keys under `prefix`): first a pass that only checks
/// (see [`CheckpointLoader::check_only`]), so a mismatch is reported before any weight is
/// read, then the real load. `build` must ask for the same keys both times.
pub fn load_strict<B: Backend, T>(
    ckpt: &Checkpoint,
    prefix: &str,
    layout: Layout,
    device: &B::Device,
    model: &str,
    build: impl Fn(&mut CheckpointLoader<'_, B>) -> T,
) -> Result<T, LoadError> {
    let mut dry = CheckpointLoader::check_only(ckpt, prefix, layout, device);
    drop(build(&mut dry));
    dry.finish(model)?;
    let mut loader = CheckpointLoader::new(ckpt, prefix, layout, device);
    let built = build(&mut loader);
    loader.finish(model)?;
    Ok(built)
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
    /// Only check keys, shapes and dtypes; every tensor handed out is a one-element placeholder
    /// (as [`super::KeyRecorder`]'s), so the model built is good for nothing but the report.
    check_only: bool,
    /// The device's largest tensor ([`crate::model::limits::max_tensor_bytes`]).
    cap: Option<u64>,
    /// The largest weight asked for whole that is over `cap`.
    too_large: Option<crate::model::limits::TooLarge>,
    /// The job was cancelled ([`super::cancel`]): nothing more is read.
    cancelled: bool,
}

impl<'a, B: Backend> CheckpointLoader<'a, B> {
    pub fn new(ckpt: &'a Checkpoint, prefix: &str, layout: Layout, device: &B::Device) -> Self {
        Self {
            ckpt,
            prefix: prefix.to_string(),
            layout,
            device: device.clone(),
            used: HashSet::new(),
            problems: Vec::new(),
            check_only: false,
            cap: crate::model::limits::max_tensor_bytes::<B>(device),
            too_large: None,
            cancelled: false,
        }
    }

    /// Whether reading stops here: the load failed (it only goes on to report every problem)
    /// or was cancelled.
    fn stopped(&mut self) -> bool {
        if !self.check_only && !self.cancelled && super::cancel::requested() {
            self.cancelled = true;
        }
        self.cancelled || !self.problems.is_empty()
    }

    /// Records `key` when `elems` values of `bytes_per` bytes, held as one tensor, are over the
    /// device's largest tensor (the largest such weight is reported).
    fn check_size(&mut self, key: &str, elems: usize, bytes_per: u64) {
        let bytes = elems as u64 * bytes_per;
        let Some(cap) = self.cap.filter(|c| bytes > *c) else { return };
        if self.too_large.as_ref().is_some_and(|t| t.bytes >= bytes) {
            return;
        }
        self.too_large = Some(crate::model::limits::TooLarge {
            device: "this device".into(),
            limit: cap,
            what: format!("the weight `{}{key}`", self.prefix),
            bytes,
            advice: "run this model on the CPU (--backend cpu, or the backend in Settings), or on a GPU whose driver allows larger buffers".into(),
        });
    }

    /// A loader that reads nothing: building a model over it and calling [`Self::finish`] says
    /// whether the real load would succeed, with every problem named, at no memory cost.
    pub fn check_only(ckpt: &'a Checkpoint, prefix: &str, layout: Layout, device: &B::Device) -> Self {
        Self { check_only: true, ..Self::new(ckpt, prefix, layout, device) }
    }

    /// Ends the load: every key under the prefix that nobody asked for is unexpected.
    /// `model` names what was being loaded, for the message.
    pub fn finish(mut self, model: &str) -> Result<(), LoadError> {
        if self.cancelled {
            return Err(LoadError::Cancelled { model: model.to_string() });
        }
        for key in self.ckpt.keys() {
            if key.starts_with(&self.prefix) && !self.used.contains(key) && !key.ends_with("num_batches_tracked") {
                let shape = self.ckpt.shape(key).unwrap_or_default().to_vec();
                self.problems.push(Problem::Unexpected { key: key.to_string(), shape });
            }
        }
        if !self.problems.is_empty() {
            return Err(LoadError::Mismatch { path: self.ckpt.path().to_path_buf(), model: model.to_string(), problems: self.problems });
        }
        match self.too_large {
            Some(t) => Err(LoadError::TooLarge(t)),
            None => Ok(()),
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
        // Once the load has failed, reading the rest would only hold memory until the report:
        // a wrong config beside big weights could exhaust it first. Keys are still checked.
        if self.check_only || self.stopped() {
            if let Some(e) = self.ckpt.entries.get(key).filter(|e| !is_float(e.dtype)) {
                self.problems.push(Problem::Dtype { key: key.to_string(), dtype: format!("{:?}", e.dtype) });
            }
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

    /// A tensor kept 16-bit when it is stored so and the backend keeps such weights (see
    /// [`super::half`]), else widened; `transpose` for a Linear weight (`[out, in]` stored,
    /// `[in, out]` handed out).
    fn stored<const D: usize>(&mut self, key: &str, shape: [usize; D], transpose: bool) -> Tensor<B, D> {
        let full = format!("{}{key}", self.prefix);
        let half_ok = self.ckpt.dtype(&full).and_then(|d| super::half::dtype_named(&d)).is_some_and(|d| super::half::keeps_16bit::<B>(&self.device, d))
            && !self.check_only
            && !self.stopped()
            && self.layout == Layout::Original
            && self.ckpt.shape(&full) == Some(&shape[..]);
        if half_ok && (!transpose || D == 2) {
            self.check_size(key, shape.iter().product(), 2);
            if let Some(values) = self.ckpt.read_half(&full) {
                self.used.insert(full);
                let mut dims = shape;
                let values = if transpose {
                    dims.swap(0, 1);
                    values.transposed(shape[0], shape[1])
                } else {
                    values
                };
                if let Some(t) = values.into_tensor::<B, D>(dims, &self.device) {
                    return t;
                }
            }
        }
        let t = self.tensor(key, shape);
        if !transpose || D != 2 {
            return t;
        }
        let t = t.swap_dims(0, 1);
        let device = t.device();
        Tensor::from_data(t.into_data(), &device)
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
        self.check_size(key, shape.iter().product(), 4);
        match self.values(key, &shape) {
            Some(v) => Tensor::from_data(TensorData::new(v, shape), &self.device),
            None if self.check_only => Tensor::zeros([1; D], &self.device),
            // The load has failed and only goes on to report every problem: one zero broadcast
            // to the shape (a view, no allocation of the full size) keeps construction going.
            None => Tensor::<B, D>::zeros([1; D], &self.device).expand(shape),
        }
    }

    fn tensor_stored<const D: usize>(&mut self, key: &str, shape: [usize; D]) -> Tensor<B, D> {
        self.stored(key, shape, false)
    }

    fn linear_weight_stored(&mut self, key: &str, d_out: usize, d_in: usize) -> Tensor<B, 2> {
        self.stored(key, [d_out, d_in], true)
    }

    fn host_table(&mut self, key: &str, rows: usize, cols: usize) -> super::HostTable {
        let full = format!("{}{key}", self.prefix);
        let usable = self.layout == Layout::Original && !self.check_only && !self.stopped() && self.ckpt.shape(&full) == Some(&[rows, cols][..]);
        if usable {
            if let Some(t) = self.ckpt.host_table(&full) {
                self.used.insert(full);
                return t;
            }
        }
        // Checks, a failed load, another naming or dtype: through the ordinary read, which
        // records any problem.
        match self.values(key, &[rows, cols]) {
            Some(v) => super::HostTable::from_values(v, cols),
            None => super::HostTable::empty(cols),
        }
    }

    fn tensor_rows<const D: usize>(&mut self, key: &str, shape: [usize; D], parts: usize) -> Vec<Tensor<B, D>> {
        if parts <= 1 || D == 0 {
            return vec![self.tensor(key, shape)];
        }
        let largest_part = crate::model::limits::row_blocks(shape[0], parts).first().map_or(0, |b| b.1);
        self.check_size(key, largest_part * shape[1..].iter().product::<usize>(), 4);
        match self.values(key, &shape) {
            // Cut on the host: the whole never reaches the device.
            Some(v) => {
                let row: usize = shape[1..].iter().product();
                crate::model::limits::row_blocks(shape[0], parts)
                    .into_iter()
                    .map(|(start, len)| {
                        let mut s = shape;
                        s[0] = len;
                        Tensor::from_data(TensorData::new(v[start * row..(start + len) * row].to_vec(), s), &self.device)
                    })
                    .collect()
            }
            None if self.check_only => vec![Tensor::zeros([1; D], &self.device)],
            None => vec![Tensor::<B, D>::zeros([1; D], &self.device).expand(shape)],
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
