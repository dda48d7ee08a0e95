//! Weights: where a model's tensors come from.
//!
//! Models are built *from* a [`WeightSource`]: each constructor asks for the tensors it needs, by
//! their key in the original (efficientvit) naming and with the shape it expects. A checkpoint
//! source checks every request and remembers every problem, so one load reports all the missing,
//! misshaped and unexpected keys at once instead of failing on the first.

pub mod cancel;
pub mod checkpoint;
pub mod half;
pub mod host_table;
pub mod hub;
pub mod keys;
pub mod tensor_file;

use burn::tensor::{backend::Backend, Tensor, TensorData};

pub use host_table::HostTable;
pub use checkpoint::{load_strict, Checkpoint, CheckpointLoader, Layout, LoadError, Problem};

/// Hands out a model's parameters, key by key.
pub trait WeightSource<B: Backend> {
    /// The tensor stored under `key` (original naming), which must have `shape`.
    fn tensor<const D: usize>(&mut self, key: &str, shape: [usize; D]) -> Tensor<B, D>;

    /// [`Self::tensor`] for a layer that computes from 16-bit weights where the backend can
    /// (see [`half`]): a bf16 / f16 stored tensor may then stay 16-bit.
    fn tensor_stored<const D: usize>(&mut self, key: &str, shape: [usize; D]) -> Tensor<B, D> {
        self.tensor(key, shape)
    }

    /// A Linear layer's weight, stored `[d_out, d_in]` (PyTorch), as burn's `[d_in, d_out]`,
    /// row-major; 16-bit as stored where the backend computes from that ([`Self::tensor_stored`]).
    fn linear_weight_stored(&mut self, key: &str, d_out: usize, d_in: usize) -> Tensor<B, 2> {
        let t = self.tensor(key, [d_out, d_in]).transpose();
        let device = t.device();
        Tensor::from_data(t.into_data(), &device)
    }

    /// [`Self::tensor`] cut along its first dimension into `parts` consecutive blocks
    /// ([`crate::model::limits::row_blocks`]), for a weight larger than the device's largest
    /// tensor: a source that can should never hold it whole on the device. Never empty; one
    /// block (the whole tensor) when `parts` ≤ 1.
    fn tensor_rows<const D: usize>(&mut self, key: &str, shape: [usize; D], parts: usize) -> Vec<Tensor<B, D>> {
        let t = self.tensor(key, shape);
        if parts <= 1 || D == 0 {
            return vec![t];
        }
        // Placeholders (key checks) have one row whatever the shape: nothing to cut.
        let rows = t.dims()[0];
        crate::model::limits::row_blocks(rows, parts).into_iter().map(|(start, len)| t.clone().narrow(0, start, len)).collect()
    }

    /// A table of rows kept in host memory (Gemma-2's token embeddings), of which a model
    /// uploads only the rows it looks up: see [`HostTable`].
    fn host_table(&mut self, key: &str, rows: usize, cols: usize) -> HostTable {
        let t = self.tensor(key, [rows, cols]);
        HostTable::from_tensor(t)
    }

    /// A normalization layer's scale (γ), as stored (Gemma's is an offset from 1). Its own
    /// method because a key does not always say it belongs to a norm (DC-AE's decoder head
    /// stores one as `project_out.op_list.0.weight`), and a random model with a zero γ there
    /// decodes every latent to a blank image.
    fn norm_scale(&mut self, key: &str, c: usize) -> Tensor<B, 1> {
        self.tensor(key, [c])
    }

    /// A key that may be stored but carries nothing the model uses (BatchNorm's
    /// `num_batches_tracked`). Listed so strict loading does not call it unexpected.
    fn ignored(&mut self, key: &str);

    fn device(&self) -> B::Device;
}

/// Random parameters for benchmarks and tests that need a model's cost, not its quality.
///
/// Scales follow PyTorch's defaults closely enough to keep activations finite through deep
/// networks: weights ~ N(0, 1/fan_in), norm scales 1, biases and shifts 0, variances 1.
pub struct RandomWeights<B: Backend> {
    device: B::Device,
    /// Hand out the weights of [`WeightSource::tensor_stored`] as a bf16 checkpoint would.
    bf16: bool,
}

impl<B: Backend> RandomWeights<B> {
    pub fn new(device: &B::Device) -> Self {
        Self { device: device.clone(), bf16: false }
    }

    /// As [`Self::new`], but what a layer loads with [`WeightSource::tensor_stored`] is what a
    /// bf16 checkpoint gives it (16-bit in memory where the backend keeps that): for measuring
    /// the memory of the published bf16 text encoders without them.
    pub fn stored_as_bf16(device: &B::Device) -> Self {
        Self { device: device.clone(), bf16: true }
    }

    fn as_bf16<const D: usize>(&self, t: Tensor<B, D>) -> Tensor<B, D> {
        if !self.bf16 || !half::keeps_16bit::<B>(&self.device, burn::tensor::DType::BF16) {
            return t;
        }
        let shape = t.dims();
        match t.into_data().to_vec::<f32>() {
            Ok(v) => half::HalfValues::Bf16(v.into_iter().map(::half::bf16::from_f32).collect())
                .into_tensor::<B, D>(shape, &self.device)
                .unwrap_or_else(|| Tensor::zeros(shape, &self.device)),
            Err(_) => Tensor::zeros(shape, &self.device),
        }
    }
}

/// The std of a random weight of `shape` under `key`: 1/√fan_in, where fan_in is everything
/// but the output dimension (conv `[O, I, kh, kw]`, linear `[O, I]`); 0.5 for embeddings.
fn random_std(key: &str, shape: &[usize]) -> f64 {
    let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
    if key.contains("pos_embed") || key.contains("embedding") {
        0.5
    } else {
        (1.0 / fan_in as f64).sqrt()
    }
}

/// Rows `rows` of a random N(0, std²) tensor of `shape` under `key`, made on the host from a
/// seed per (key, row): the same values on every backend and whether the tensor is made whole
/// or in parts ([`WeightSource::tensor_rows`]), so a GPU run can be compared with the CPU's.
fn random_rows(key: &str, shape: &[usize], rows: std::ops::Range<usize>, std: f64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    // FNV-1a: a hash that is the same in every build (std's hasher is not promised to be).
    let seed = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    let row: usize = shape.iter().skip(1).product::<usize>().max(1);
    let mut out = Vec::with_capacity(rows.len() * row);
    for r in rows {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (r as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        out.extend((0..row).map(|_| (rng.sample::<f32, _>(rand_distr::StandardNormal) as f64 * std) as f32));
    }
    out
}

impl<B: Backend> WeightSource<B> for RandomWeights<B> {
    fn tensor<const D: usize>(&mut self, key: &str, shape: [usize; D]) -> Tensor<B, D> {
        // A norm's γ comes through `norm_scale`; its BatchNorm variance is the other 1.
        if D == 1 && key.ends_with("running_var") {
            return Tensor::ones(shape, &self.device);
        }
        if D == 1 {
            return Tensor::zeros(shape, &self.device);
        }
        let values = random_rows(key, &shape, 0..shape[0], random_std(key, &shape));
        Tensor::from_data(TensorData::new(values, shape), &self.device)
    }

    fn tensor_stored<const D: usize>(&mut self, key: &str, shape: [usize; D]) -> Tensor<B, D> {
        let t = self.tensor(key, shape);
        self.as_bf16(t)
    }

    fn linear_weight_stored(&mut self, key: &str, d_out: usize, d_in: usize) -> Tensor<B, 2> {
        let t = self.tensor(key, [d_out, d_in]).transpose();
        let t = Tensor::from_data(t.into_data(), &self.device);
        self.as_bf16(t)
    }

    fn norm_scale(&mut self, _key: &str, c: usize) -> Tensor<B, 1> {
        Tensor::ones([c], &self.device)
    }

    fn tensor_rows<const D: usize>(&mut self, key: &str, shape: [usize; D], parts: usize) -> Vec<Tensor<B, D>> {
        if parts <= 1 || D < 2 {
            return vec![self.tensor(key, shape)];
        }
        // Each block made on its own, with the same values as the whole would have.
        let std = random_std(key, &shape);
        crate::model::limits::row_blocks(shape[0], parts)
            .into_iter()
            .map(|(start, len)| {
                let mut s = shape;
                s[0] = len;
                Tensor::from_data(TensorData::new(random_rows(key, &shape, start..start + len, std), s), &self.device)
            })
            .collect()
    }

    fn host_table(&mut self, key: &str, rows: usize, cols: usize) -> HostTable {
        // Drawn on the host (a device copy of a real-size table is what this avoids).
        let std = if key.contains("embed") { 0.5 } else { (1.0 / cols.max(1) as f64).sqrt() };
        HostTable::random(rows, cols, std as f32, 0x5eed)
    }

    fn ignored(&mut self, _key: &str) {}

    fn device(&self) -> B::Device {
        self.device.clone()
    }
}

/// Lists the keys and shapes a model asks for without holding its weights: every tensor it
/// hands out is a one-element placeholder, so the model it builds is only good for this list.
/// Used to check the loader's expectations against the manifests of the published checkpoints
/// (a billion-parameter model would not fit in a test's memory otherwise).
pub struct KeyRecorder<B: Backend> {
    device: B::Device,
    /// (key, shape) in request order; ignored keys have `None`.
    pub keys: Vec<(String, Option<Vec<usize>>)>,
}

impl<B: Backend> KeyRecorder<B> {
    pub fn new(device: &B::Device) -> Self {
        Self { device: device.clone(), keys: Vec::new() }
    }
}

impl<B: Backend> WeightSource<B> for KeyRecorder<B> {
    fn tensor<const D: usize>(&mut self, key: &str, shape: [usize; D]) -> Tensor<B, D> {
        self.keys.push((key.to_string(), Some(shape.to_vec())));
        Tensor::from_data(TensorData::new(vec![0.0f32], [1; D]), &self.device)
    }

    fn ignored(&mut self, key: &str) {
        self.keys.push((key.to_string(), None));
    }

    fn host_table(&mut self, key: &str, rows: usize, cols: usize) -> HostTable {
        self.keys.push((key.to_string(), Some(vec![rows, cols])));
        HostTable::empty(cols)
    }

    fn device(&self) -> B::Device {
        self.device.clone()
    }
}
