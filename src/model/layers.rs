//! Building blocks shared by the model families: convolutions and Linear layers built from a
//! weight source (both through the CPU backend's own kernels where they apply), DC-AE's two
//! norms, activations, and the parameter-free resampling ops whose channel orders must match
//! PyTorch exactly for the pretrained weights to mean anything.

use burn::module::{Module, Param};
use burn::nn::conv::Conv2d;
use burn::nn::Linear;
use burn::nn::PaddingConfig2d;
use burn::tensor::activation::gelu;
use burn::tensor::{backend::Backend, DType, Tensor};

pub use super::act::Act;
use super::cpu_kernels::ConvWeights;
use super::precision::{as_f32, in_f32, to_dtype};
use crate::weights::WeightSource;

/// A "same"-padded convolution. Dense stride-1 ones take the fast CPU path of
/// [`super::cpu_kernels`] on the CPU backend; everything else is burn's `Conv2d`.
///
/// A weight larger than the device's largest tensor ([`super::limits`]) is held as several
/// convolutions over consecutive output channels, run one after the other and concatenated:
/// each output channel only reads its own weights, so the result is exactly the whole one's.
#[derive(Module, Debug)]
pub struct Conv<B: Backend> {
    inner: Conv2d<B>,
    /// The fast path's rearranged copies of the weights, made on first use.
    #[module(skip)]
    cpu_weights: ConvWeights,
    /// The output channels after `inner`'s, when the weight was split (else empty).
    rest: Vec<ConvPart<B>>,
}

/// One block of output channels of a split [`Conv`].
#[derive(Module, Debug)]
pub struct ConvPart<B: Backend> {
    inner: Conv2d<B>,
    #[module(skip)]
    cpu_weights: ConvWeights,
}

impl<B: Backend> Conv<B> {
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.forward_act(x, None)
    }

    /// The dtype the weights are in.
    pub fn dtype(&self) -> DType {
        self.inner.weight.val().dtype()
    }

    /// How many parts the weight is held in (1 unless it was larger than the device's cap).
    pub fn parts(&self) -> usize {
        1 + self.rest.len()
    }

    /// The convolution followed by `y · scale[c] + shift[c]`, as one convolution.
    pub fn then_affine(self, scale: Tensor<B, 1>, shift: Tensor<B, 1>) -> Self {
        let mut start = 0;
        let mut part = |c: Conv2d<B>| {
            let [c_out, ..] = c.weight.dims();
            let (scale, shift) = (scale.clone().narrow(0, start, c_out), shift.clone().narrow(0, start, c_out));
            start += c_out;
            let weight = c.weight.val() * scale.clone().reshape([c_out, 1, 1, 1]);
            let bias = match &c.bias {
                Some(b) => b.val() * scale + shift,
                None => shift,
            };
            Conv2d { weight: Param::from_tensor(weight), bias: Some(Param::from_tensor(bias)), ..c }
        };
        let inner = part(self.inner);
        let rest = self.rest.into_iter().map(|p| ConvPart { inner: part(p.inner), cpu_weights: ConvWeights::default() }).collect();
        Self { inner, cpu_weights: ConvWeights::default(), rest }
    }

    /// `act(conv(x))`; the fast path applies `act` while the tile is still in cache.
    pub fn forward_act(&self, x: Tensor<B, 4>, act: Option<Act>) -> Tensor<B, 4> {
        let first = conv_part(&self.inner, &self.cpu_weights, x.clone(), act);
        if self.rest.is_empty() {
            return first;
        }
        let mut outs = vec![first];
        outs.extend(self.rest.iter().map(|p| conv_part(&p.inner, &p.cpu_weights, x.clone(), act)));
        Tensor::cat(outs, 1)
    }
}

fn conv_part<B: Backend>(c: &Conv2d<B>, cpu_weights: &ConvWeights, x: Tensor<B, 4>, act: Option<Act>) -> Tensor<B, 4> {
    if c.groups == 1 && c.stride == [1, 1] {
        let bias = c.bias.as_ref().map(|b| b.val());
        if let Some(y) = super::cpu_kernels::conv2d_same(&x, &c.weight.val(), bias.as_ref(), act, cpu_weights) {
            return y;
        }
    }
    // A software GPU adapter runs the one kernel it can, untuned ([`super::gpu_kernels`]).
    let y = super::gpu_kernels::conv2d(c, &x).unwrap_or_else(|| c.forward(x));
    match act {
        Some(a) => a.apply(y),
        None => y,
    }
}

/// A stride-`stride` "same"-padded convolution, `[out, in/groups, k, k]` weight, read from `key.weight`
/// (and `key.bias` when `bias`); in parts by output channel when the weight (as f32, which is
/// how it is uploaded) is larger than the device's largest tensor. A grouped convolution is
/// never split (no grouped weight in these models comes near a cap).
#[allow(clippy::too_many_arguments)]
pub fn conv2d<B: Backend, W: WeightSource<B>>(
    w: &mut W,
    key: &str,
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    groups: usize,
    bias: bool,
) -> Conv<B> {
    let shape = [c_out, c_in / groups, kernel, kernel];
    let row_bytes = 4 * (c_in / groups * kernel * kernel) as u64;
    let cap = super::limits::max_tensor_bytes::<B>(&w.device());
    // A single output channel over the cap cannot be split further: loaded whole, it fails in
    // the backend with the size named (no published model comes within 4 orders of that).
    let parts = if groups == 1 { super::limits::parts_for(c_out, row_bytes, cap).unwrap_or(1) } else { 1 };
    let weights = w.tensor_rows(&format!("{key}.weight"), shape, parts);
    let biases: Vec<Option<Tensor<B, 1>>> = if bias {
        let b = w.tensor(&format!("{key}.bias"), [c_out]);
        let mut start = 0;
        weights
            .iter()
            .map(|wt| {
                let n = wt.dims()[0];
                // A placeholder (key checks only) has 1 row whatever the shape.
                let part = if b.dims()[0] >= start + n { b.clone().narrow(0, start, n) } else { b.clone() };
                start += n;
                Some(part)
            })
            .collect()
    } else {
        vec![None; weights.len()]
    };
    let pad = kernel / 2;
    let make = |weight: Tensor<B, 4>, bias: Option<Tensor<B, 1>>| Conv2d {
        weight: Param::from_tensor(weight),
        bias: bias.map(Param::from_tensor),
        stride: [stride, stride],
        kernel_size: [kernel, kernel],
        dilation: [1, 1],
        groups,
        padding: PaddingConfig2d::Explicit(pad, pad, pad, pad),
    };
    let mut convs = weights.into_iter().zip(biases).map(|(wt, b)| make(wt, b));
    // `tensor_rows` always gives a part; were it ever to give none, the whole weight is asked
    // for instead (a source's own error names the key).
    let inner = convs.next().unwrap_or_else(|| make(w.tensor(&format!("{key}.weight"), shape), None));
    let rest = convs.map(|inner| ConvPart { inner, cpu_weights: ConvWeights::default() }).collect();
    Conv { inner, cpu_weights: ConvWeights::default(), rest }
}

/// A Linear layer from a PyTorch `[out, in]` weight (transposed to burn's `[in, out]`).
///
/// The transpose is materialised once here (a round trip through host memory, the only
/// backend-independent way burn 0.21 offers to make a tensor contiguous): a transposed *view*
/// made every UViT-H matmul on the CPU backend about 2× slower (a whole forward 8 s instead of
/// 2.6 s on 2 cores).
pub fn linear<B: Backend, W: WeightSource<B>>(w: &mut W, key: &str, d_in: usize, d_out: usize, bias: bool) -> Linear<B> {
    let weight = contiguous(w.tensor(&format!("{key}.weight"), [d_out, d_in]).transpose());
    let bias = bias.then(|| Param::from_tensor(w.tensor(&format!("{key}.bias"), [d_out])));
    Linear { weight: Param::from_tensor(weight), bias }
}

/// [`linear`] for a layer run only through [`lin`] / [`lin_gelu`], which compute from a 16-bit
/// weight as stored: such a weight then stays 16-bit in memory where the backend keeps it
/// ([`crate::weights::half`]).
pub fn linear_stored<B: Backend, W: WeightSource<B>>(w: &mut W, key: &str, d_in: usize, d_out: usize, bias: bool) -> Linear<B> {
    let weight = w.linear_weight_stored(&format!("{key}.weight"), d_out, d_in);
    let bias = bias.then(|| Param::from_tensor(w.tensor(&format!("{key}.bias"), [d_out])));
    Linear { weight: Param::from_tensor(weight), bias }
}

/// `l.forward(x)`, through the CPU backend's own GEMM split when it applies
/// ([`super::cpu_kernels::linear`]).
pub fn lin<B: Backend, const D: usize>(l: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    let bias = l.bias.as_ref().map(|b| b.val());
    super::cpu_kernels::linear(&x, &l.weight.val(), bias.as_ref()).unwrap_or_else(|| like(l, x.dtype()).forward(x))
}

/// `gelu(l.forward(x))`, the GELU fused into the CPU kernel when it applies
/// ([`super::cpu_kernels::linear_gelu`]).
pub fn lin_gelu<B: Backend, const D: usize>(l: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    let bias = l.bias.as_ref().map(|b| b.val());
    super::cpu_kernels::linear_gelu(&x, &l.weight.val(), bias.as_ref()).unwrap_or_else(|| gelu(like(l, x.dtype()).forward(x)))
}

/// `gelu_tanh(l.forward(x))` (tanh-approximated GELU), fused into the CPU kernel when it applies.
pub fn lin_gelu_tanh<B: Backend, const D: usize>(l: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    let bias = l.bias.as_ref().map(|b| b.val());
    super::cpu_kernels::linear_gelu_tanh(&x, &l.weight.val(), bias.as_ref()).unwrap_or_else(|| burn::tensor::activation::gelu_approximate(like(l, x.dtype()).forward(x)))
}

/// `l` with its weight in `dtype`, the activations', for burn's own ops, which do not mix
/// float types: a 16-bit weight ([`linear_stored`]) under f32 activations is widened for this
/// one call (exactly), which keeps only the 16-bit copy resident.
fn like<B: Backend>(l: &Linear<B>, dtype: DType) -> std::borrow::Cow<'_, Linear<B>> {
    let weight = l.weight.val();
    if weight.dtype() == dtype {
        return std::borrow::Cow::Borrowed(l);
    }
    let weight = Param::from_tensor(to_dtype(weight, dtype));
    let bias = l.bias.as_ref().map(|b| Param::from_tensor(to_dtype(b.val(), dtype)));
    std::borrow::Cow::Owned(Linear { weight, bias })
}

/// The same values in a fresh row-major tensor.
pub fn contiguous<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    let device = t.device();
    Tensor::from_data(t.into_data(), &device)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NormKind {
    /// efficientvit `bn2d`: BatchNorm2d in eval mode.
    BatchNorm,
    /// efficientvit `trms2d`: RMS over channels per pixel, with weight *and* bias.
    RmsNorm,
}

/// RMSNorm over the channel axis of an NCHW tensor, eps 1e-5, with an affine bias
/// (efficientvit's `TritonRMSNorm2d` subclasses LayerNorm and so keeps its bias).
#[derive(Module, Debug)]
pub struct RmsNorm2d<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> RmsNorm2d<B> {
    pub const EPS: f64 = 1e-5;

    pub fn load<W: WeightSource<B>>(w: &mut W, key: &str, c: usize) -> Self {
        Self {
            weight: Param::from_tensor(w.norm_scale(&format!("{key}.weight"), c)),
            bias: Param::from_tensor(w.tensor(&format!("{key}.bias"), [c])),
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        if let Some(y) = super::cpu_kernels::rms_norm2d(&x, &self.weight.val(), &self.bias.val(), Self::EPS as f32) {
            return y;
        }
        // In f32 for a 16-bit model (the mean of squares overflows f16), as the reference's
        // autocast runs its norms.
        in_f32(x, |x| {
            let [_, c, _, _] = x.dims();
            let inv_rms = (x.clone().square().mean_dim(1) + Self::EPS).sqrt().recip(); // [B,1,H,W]
            let w = as_f32(self.weight.val()).reshape([1, c, 1, 1]);
            let b = as_f32(self.bias.val()).reshape([1, c, 1, 1]);
            x * inv_rms * w + b
        })
    }
}

/// BatchNorm2d with running statistics, folded into one scale and shift at load time.
#[derive(Module, Debug)]
pub struct BatchNorm2dEval<B: Backend> {
    pub scale: Param<Tensor<B, 1>>,
    pub shift: Param<Tensor<B, 1>>,
}

impl<B: Backend> BatchNorm2dEval<B> {
    pub const EPS: f64 = 1e-5;

    pub fn load<W: WeightSource<B>>(w: &mut W, key: &str, c: usize) -> Self {
        let weight = w.norm_scale(&format!("{key}.weight"), c);
        let bias = w.tensor(&format!("{key}.bias"), [c]);
        let mean = w.tensor(&format!("{key}.running_mean"), [c]);
        let var = w.tensor(&format!("{key}.running_var"), [c]);
        w.ignored(&format!("{key}.num_batches_tracked"));
        // y = (x - mean) / sqrt(var + eps) * weight + bias = x * scale + shift
        let scale = weight * (var + Self::EPS).sqrt().recip();
        let shift = bias - mean * scale.clone();
        Self { scale: Param::from_tensor(scale), shift: Param::from_tensor(shift) }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        in_f32(x, |x| {
            let [_, c, _, _] = x.dims();
            x * as_f32(self.scale.val()).reshape([1, c, 1, 1]) + as_f32(self.shift.val()).reshape([1, c, 1, 1])
        })
    }
}

#[derive(Module, Debug)]
pub enum Norm<B: Backend> {
    Batch(BatchNorm2dEval<B>),
    Rms(RmsNorm2d<B>),
}

impl<B: Backend> Norm<B> {
    pub fn load<W: WeightSource<B>>(w: &mut W, key: &str, kind: NormKind, c: usize) -> Self {
        match kind {
            NormKind::BatchNorm => Norm::Batch(BatchNorm2dEval::load(w, key, c)),
            NormKind::RmsNorm => Norm::Rms(RmsNorm2d::load(w, key, c)),
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            Norm::Batch(n) => n.forward(x),
            Norm::Rms(n) => n.forward(x),
        }
    }
}

/// PyTorch `pixel_unshuffle`: `[B, C, H·r, W·r] → [B, C·r², H, W]`, output channel `c·r² + i·r + j`
/// holding the pixel at row offset `i`, column offset `j`.
pub fn pixel_unshuffle<B: Backend>(x: Tensor<B, 4>, r: usize) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    let (ho, wo) = (h / r, w / r);
    x.reshape([b * c, ho, r, wo, r]) // [BC, H, i, W, j]
        .permute([0, 2, 4, 1, 3]) // [BC, i, j, H, W]
        .reshape([b, c * r * r, ho, wo])
}

/// PyTorch `pixel_shuffle`, the inverse of [`pixel_unshuffle`].
pub fn pixel_shuffle<B: Backend>(x: Tensor<B, 4>, r: usize) -> Tensor<B, 4> {
    let [b, crr, h, w] = x.dims();
    let c = crr / (r * r);
    x.reshape([b * c, r, r, h, w]) // [BC, i, j, H, W]
        .permute([0, 3, 1, 4, 2]) // [BC, H, i, W, j]
        .reshape([b, c, h * r, w * r])
}

/// Mean over groups of `g` *consecutive* channels: `[B, C·g, H, W] → [B, C, H, W]`.
pub fn channel_average<B: Backend>(x: Tensor<B, 4>, g: usize) -> Tensor<B, 4> {
    if g == 1 {
        return x;
    }
    let [b, cg, h, w] = x.dims();
    x.reshape([b, cg / g, g, h * w]).mean_dim(2).reshape([b, cg / g, h, w])
}

/// `repeat_interleave(x, r, dim=1)`: each channel repeated `r` times in a row (not tiled).
pub fn repeat_channels<B: Backend>(x: Tensor<B, 4>, r: usize) -> Tensor<B, 4> {
    if r == 1 {
        return x;
    }
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, 1, h * w]).expand([b, c, r, h * w]).reshape([b, c * r, h, w])
}

/// Nearest-neighbour ×2 upsampling (each pixel becomes a 2×2 block). Exact in any precision,
/// so unlike the reference's interpolation it needs no f32 island in a 16-bit model.
pub fn upsample_nearest2<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b * c, h, 1, w, 1]).expand([b * c, h, 2, w, 2]).reshape([b, c, h * 2, w * 2])
}
