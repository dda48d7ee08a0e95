//! A table of rows that stays in host memory while a model looks rows up: Gemma-2's token
//! embeddings, `[256000, 2304]`.
//!
//! Why: on wgpu the bf16 table would be widened to one 2.36 GB f32 tensor, over the largest
//! tensor of every Vulkan / DX12 adapter (2 GiB − 4) and 2.36 GB of device memory for a lookup
//! of a few hundred rows per prompt. Held here, as the checkpoint stores it (memory-mapped,
//! never widened whole), only the gathered `tokens × hidden` rows go to the device, as f32 —
//! the exact values of the stored 16-bit ones. llama.cpp keeps its input embedding on the CPU
//! for the same reason.

use std::fmt;
use std::sync::Arc;

use burn::tensor::{backend::Backend, Tensor};
use memmap2::Mmap;

/// The element type of a mapped table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    F32,
    F16,
    Bf16,
}

impl Stored {
    fn bytes(self) -> usize {
        match self {
            Stored::F32 => 4,
            Stored::F16 | Stored::Bf16 => 2,
        }
    }
}

#[derive(Clone)]
enum Data {
    /// Values read into memory (a small table, or one a random model drew).
    Owned(Arc<Vec<f32>>),
    /// The checkpoint's bytes, little-endian, row-major from `start`.
    Mapped { map: Arc<Mmap>, start: usize, stored: Stored },
    /// N(0, std²) values made from (seed, row) on each lookup: a real-size random table costs
    /// no memory (benchmarks of the published architectures).
    Random { std: f32, seed: u64 },
}

/// `rows × cols` values in host memory; see the module documentation.
#[derive(Clone)]
pub struct HostTable {
    rows: usize,
    cols: usize,
    data: Data,
}

impl fmt::Debug for HostTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.data {
            Data::Owned(_) => "owned f32".to_string(),
            Data::Mapped { stored, .. } => format!("mapped {stored:?}"),
            Data::Random { .. } => "random".to_string(),
        };
        write!(f, "HostTable([{}, {}], {kind})", self.rows, self.cols)
    }
}

impl HostTable {
    /// A table read back from a tensor (sources that only hand out tensors).
    pub fn from_tensor<B: Backend>(t: Tensor<B, 2>) -> Self {
        let [rows, cols] = t.dims();
        let values = t.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_else(|_| vec![0.0; rows * cols]);
        // A placeholder (key checks) is smaller than its shape says: keep what it is.
        let rows = if values.len() == rows * cols { rows } else { values.len() / cols.max(1) };
        Self { rows, cols, data: Data::Owned(Arc::new(values)) }
    }

    /// `values` (row-major) as a `[values.len() / cols, cols]` table.
    pub fn from_values(values: Vec<f32>, cols: usize) -> Self {
        let rows = values.len() / cols.max(1);
        Self { rows, cols, data: Data::Owned(Arc::new(values)) }
    }

    /// No rows (a key check's placeholder, or a failed load that goes on to report the rest).
    pub fn empty(cols: usize) -> Self {
        Self { rows: 0, cols, data: Data::Owned(Arc::new(Vec::new())) }
    }

    /// A random N(0, std²) table, the same values for the same seed, made row by row as looked up.
    pub fn random(rows: usize, cols: usize, std: f32, seed: u64) -> Self {
        Self { rows, cols, data: Data::Random { std, seed } }
    }

    /// The bytes `map[start..]` of a `[rows, cols]` table stored as `stored`; `None` when the
    /// map is too short for it.
    pub fn mapped(map: Arc<Mmap>, start: usize, stored: Stored, rows: usize, cols: usize) -> Option<Self> {
        let len = rows.checked_mul(cols)?.checked_mul(stored.bytes())?;
        (start.checked_add(len)? <= map.len()).then_some(Self { rows, cols, data: Data::Mapped { map, start, stored } })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// What the table is stored as, for reports ("bf16, memory-mapped").
    pub fn describe(&self) -> String {
        match &self.data {
            Data::Owned(_) => "f32 in memory".into(),
            Data::Mapped { stored, .. } => format!("{}, memory-mapped", format!("{stored:?}").to_lowercase()),
            Data::Random { .. } => "random, made per row".into(),
        }
    }

    /// The rows `ids` (each clamped to the last row) as `ids.len() × cols` f32 values; an empty
    /// table gives zeros.
    pub fn gather(&self, ids: &[usize]) -> Vec<f32> {
        let c = self.cols;
        let mut out = vec![0.0f32; ids.len() * c];
        if self.rows == 0 {
            return out;
        }
        for (dst, &id) in out.chunks_exact_mut(c.max(1)).zip(ids) {
            let r = id.min(self.rows - 1);
            match &self.data {
                Data::Owned(v) => dst.copy_from_slice(&v[r * c..(r + 1) * c]),
                Data::Mapped { map, start, stored } => {
                    let b = stored.bytes();
                    let bytes = &map[start + r * c * b..start + (r + 1) * c * b];
                    match stored {
                        Stored::F32 => {
                            for (d, x) in dst.iter_mut().zip(bytes.chunks_exact(4)) {
                                *d = f32::from_le_bytes([x[0], x[1], x[2], x[3]]);
                            }
                        }
                        Stored::F16 => {
                            for (d, x) in dst.iter_mut().zip(bytes.chunks_exact(2)) {
                                *d = half::f16::from_le_bytes([x[0], x[1]]).to_f32();
                            }
                        }
                        Stored::Bf16 => {
                            for (d, x) in dst.iter_mut().zip(bytes.chunks_exact(2)) {
                                *d = half::bf16::from_le_bytes([x[0], x[1]]).to_f32();
                            }
                        }
                    }
                }
                Data::Random { std, seed } => {
                    use rand::{Rng, SeedableRng};
                    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (r as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                    for d in dst.iter_mut() {
                        let n: f32 = rng.sample(rand_distr::StandardNormal);
                        *d = n * std;
                    }
                }
            }
        }
        out
    }

    /// The rows `ids` as a `[ids.len(), cols]` f32 tensor on `device`: the only part of the
    /// table that reaches it.
    pub fn lookup<B: Backend>(&self, ids: &[usize], device: &B::Device) -> Tensor<B, 2> {
        crate::model::host::upload(self.gather(ids), [ids.len(), self.cols], device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_rows_are_the_stored_values() {
        let vals = [1.5f32, -2.0, 0.25, 3.0, -0.5, 7.0];
        let mut bytes = vec![0u8; 3]; // an offset, as a safetensors header gives
        for v in vals {
            bytes.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes());
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.bin");
        std::fs::write(&p, &bytes).unwrap();
        let map = Arc::new(unsafe { Mmap::map(&std::fs::File::open(&p).unwrap()) }.unwrap());
        let t = HostTable::mapped(map.clone(), 3, Stored::Bf16, 3, 2).unwrap();
        assert_eq!(t.gather(&[2, 0, 99]), vec![-0.5, 7.0, 1.5, -2.0, -0.5, 7.0]);
        // A table that would run past the end of the file is refused.
        assert!(HostTable::mapped(map, 4, Stored::Bf16, 3, 2).is_none());
    }

    #[test]
    fn random_rows_are_repeatable_and_distinct() {
        let t = HostTable::random(1000, 64, 0.5, 7);
        let a = t.gather(&[5, 6]);
        assert_eq!(a, t.gather(&[5, 6]));
        assert_ne!(a[..64], a[64..]);
        let var = a.iter().map(|x| x * x).sum::<f32>() / a.len() as f32;
        assert!((0.1..0.5).contains(&var), "{var}");
        assert_eq!(HostTable::empty(4).gather(&[3]), vec![0.0; 4]);
    }
}
