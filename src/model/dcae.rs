//! The DC-AE autoencoder (Chen et al., "Deep Compression Autoencoder for Efficient
//! High-Resolution Diffusion Models", arXiv 2410.10733), as efficientvit's `dc_ae.py` computes it.
//!
//! Keys follow the original checkpoint layout (`encoder.stages.{s}.op_list.{j}…`); the
//! diffusers layout is translated by the weight loader. Shapes in comments are for
//! dc-ae-f64c128 at 512².

use burn::module::Module;
use burn::tensor::activation::relu;
use burn::tensor::{backend::Backend, DType, FloatDType, Tensor};

use super::config::{BlockType, DcaeConfig, Downsample, Upsample};
use super::layers::{
    channel_average, conv2d, pixel_shuffle, pixel_unshuffle, repeat_channels, upsample_nearest2, Act, Conv, Norm, NormKind,
    RmsNorm2d,
};
use super::precision::{all_finite, as_f32, cast_params, in_f32, F32Reruns, Precision};
use crate::weights::WeightSource;

pub use super::config::HEAD_DIM;

/// The linear-attention normaliser's epsilon; representable in f32, which the attention runs in.
const ATTN_EPS: f64 = 1e-15;

/// `y = x + norm(conv3x3(act(conv3x3(x) + b)))`.
#[derive(Module, Debug)]
pub struct ResBlock<B: Backend> {
    conv1: Conv<B>,
    conv2: Conv<B>,
    /// `None` when the norm was a BatchNorm, folded into `conv2` at load.
    norm: Option<Norm<B>>,
    #[module(skip)]
    act: Act,
}

impl<B: Backend> ResBlock<B> {
    fn load<W: WeightSource<B>>(w: &mut W, key: &str, c: usize, norm: NormKind, act: Act) -> Self {
        let conv1 = conv2d(w, &format!("{key}.main.conv1.conv"), c, c, 3, 1, 1, true);
        let conv2 = conv2d(w, &format!("{key}.main.conv2.conv"), c, c, 3, 1, 1, false);
        let (conv2, norm) = match Norm::load(w, &format!("{key}.main.conv2.norm"), norm, c) {
            // An eval-mode BatchNorm is a per-channel affine map: fold it into the conv, one
            // pass over the activations fewer.
            Norm::Batch(bn) => (conv2.then_affine(bn.scale.val(), bn.shift.val()), None),
            rms => (conv2, Some(rms)),
        };
        Self { conv1, conv2, norm, act }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let h = self.conv1.forward_act(x.clone(), Some(self.act));
        let h = self.conv2.forward(h);
        x + match &self.norm {
            Some(n) => n.forward(h),
            None => h,
        }
    }
}

/// Multi-scale aggregation branch: depthwise k×k, then a grouped 1×1 (one group per q/k/v head slice).
#[derive(Module, Debug)]
struct Aggregation<B: Backend> {
    depthwise: Conv<B>,
    pointwise: Conv<B>,
}

/// Lightweight multi-scale linear attention with ReLU kernels.
#[derive(Module, Debug)]
pub struct LiteMla<B: Backend> {
    qkv: Conv<B>,
    aggreg: Vec<Aggregation<B>>,
    proj: Conv<B>,
    norm: Norm<B>,
    #[module(skip)]
    heads: usize,
    /// Channels per head; LiteMLA also switches to its quadratic form when a stage has at most
    /// this many pixels.
    #[module(skip)]
    head_dim: usize,
}

impl<B: Backend> LiteMla<B> {
    fn load<W: WeightSource<B>>(w: &mut W, key: &str, c: usize, scales: &[usize], norm: NormKind, head_dim: usize) -> Self {
        let heads = c / head_dim.max(1);
        let aggreg = scales
            .iter()
            .enumerate()
            .map(|(i, &k)| Aggregation {
                depthwise: conv2d(w, &format!("{key}.aggreg.{i}.0"), 3 * c, 3 * c, k, 1, 3 * c, false),
                pointwise: conv2d(w, &format!("{key}.aggreg.{i}.1"), 3 * c, 3 * c, 1, 1, 3 * heads, false),
            })
            .collect();
        let branches = 1 + scales.len();
        Self {
            qkv: conv2d(w, &format!("{key}.qkv.conv"), c, 3 * c, 1, 1, 1, false),
            aggreg,
            proj: conv2d(w, &format!("{key}.proj.conv"), c * branches, c, 1, 1, 1, false),
            norm: Norm::load(w, &format!("{key}.proj.norm"), norm, c),
            heads,
            head_dim,
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, _, h, w] = x.dims();
        let n = h * w;
        let d = self.head_dim;
        let qkv = self.qkv.forward(x); // [B, 3C, H, W]
        let mut branches = Vec::with_capacity(1 + self.aggreg.len());
        for a in &self.aggreg {
            branches.push(a.pointwise.forward(a.depthwise.forward(qkv.clone())));
        }
        branches.insert(0, qkv);
        // Every 96 consecutive channels are one head laid out [q | k | v]; the multi-scale
        // branches simply add heads after the base ones.
        let heads = self.heads * branches.len();
        let qkv = Tensor::cat(branches, 1).reshape([b, heads, 3 * d, n]);
        // In f32 for a 16-bit model, as the reference casts it: the sums over all pixels of
        // k·v and k overflow f16 at a few thousand pixels.
        let out = in_f32(qkv, |qkv| {
            let q = relu(qkv.clone().narrow(2, 0, d)); // [B, h, d, N]
            let k = relu(qkv.clone().narrow(2, d, d));
            let v = qkv.narrow(2, 2 * d, d);
            if n > d { linear_attention(q, k, v) } else { quadratic_attention(q, k, v) }
        });
        let out = out.reshape([b, heads * d, h, w]);
        self.norm.forward(self.proj.forward(out))
    }
}

/// ReLU linear attention, `[B, h, d, N]` each (q and k already through the ReLU kernel):
/// `o_n = Σ_m v_m (k_m·q_n) / (Σ_m k_m·q_n + ε)`, computed as `(v kᵀ) q` — O(N·d²).
/// This is the reference's "pad v with a row of ones" trick with the ones-row product written
/// out as `(Σ_m k_m)·q_n`.
pub fn linear_attention<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 4> {
    let vk = v.matmul(k.clone().swap_dims(2, 3)); // [B, h, d, d]
    let num = vk.matmul(q.clone()); // [B, h, d, N]
    let k_sum = k.sum_dim(3).swap_dims(2, 3); // [B, h, 1, d]
    let den = k_sum.matmul(q); // [B, h, 1, N]
    num / (den + ATTN_EPS)
}

/// The same attention through the explicit `[N, N]` map, as the reference computes it when a
/// stage has at most 32 pixels (O(N²·d), cheaper there).
pub fn quadratic_attention<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 4> {
    let att = k.swap_dims(2, 3).matmul(q); // [B, h, N_key, N_query]
    let att = att.clone() / (att.sum_dim(2) + ATTN_EPS);
    v.matmul(att) // [B, h, d, N]
}

/// Gated inverted bottleneck: 1×1 expand ×8 (act) → depthwise 3×3 → value · act(gate) → 1×1 → norm.
#[derive(Module, Debug)]
pub struct GluMbConv<B: Backend> {
    inverted: Conv<B>,
    depthwise: Conv<B>,
    point: Conv<B>,
    norm: Norm<B>,
    #[module(skip)]
    act: Act,
}

impl<B: Backend> GluMbConv<B> {
    fn load<W: WeightSource<B>>(w: &mut W, key: &str, c: usize, norm: NormKind, act: Act) -> Self {
        let mid = 4 * c;
        Self {
            inverted: conv2d(w, &format!("{key}.inverted_conv.conv"), c, 2 * mid, 1, 1, 1, true),
            depthwise: conv2d(w, &format!("{key}.depth_conv.conv"), 2 * mid, 2 * mid, 3, 1, 2 * mid, true),
            point: conv2d(w, &format!("{key}.point_conv.conv"), mid, c, 1, 1, 1, false),
            norm: Norm::load(w, &format!("{key}.point_conv.norm"), norm, c),
            act,
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let h = self.inverted.forward_act(x, Some(self.act)); // [B, 8C, H, W], act on all channels
        let h = self.depthwise.forward(h);
        let mid = h.dims()[1] / 2;
        let value = h.clone().narrow(1, 0, mid);
        let gate = h.narrow(1, mid, mid);
        // The gate half goes through the activation a second time, as in the reference.
        self.norm.forward(self.point.forward(value * self.act.apply(gate)))
    }
}

#[derive(Module, Debug)]
pub struct EfficientVitBlock<B: Backend> {
    attn: LiteMla<B>,
    ffn: GluMbConv<B>,
}

impl<B: Backend> EfficientVitBlock<B> {
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = x.clone() + self.attn.forward(x);
        x.clone() + self.ffn.forward(x)
    }
}

#[derive(Module, Debug)]
pub enum Block<B: Backend> {
    Res(ResBlock<B>),
    EfficientVit(EfficientVitBlock<B>),
}

impl<B: Backend> Block<B> {
    #[allow(clippy::too_many_arguments)]
    fn load<W: WeightSource<B>>(w: &mut W, key: &str, kind: &BlockType, c: usize, norm: NormKind, act: Act, head_dim: usize) -> Self {
        match kind {
            BlockType::ResBlock => Block::Res(ResBlock::load(w, key, c, norm, act)),
            BlockType::EfficientVit { scales } => Block::EfficientVit(EfficientVitBlock {
                attn: LiteMla::load(w, &format!("{key}.context_module.main"), c, scales, norm, head_dim),
                ffn: GluMbConv::load(w, &format!("{key}.local_module.main"), c, norm, act),
            }),
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            Block::Res(b) => b.forward(x),
            Block::EfficientVit(b) => b.forward(x),
        }
    }
}

/// ×½ resolution, C_in → C_out, with the channel-averaging residual shortcut.
#[derive(Module, Debug)]
pub struct DownBlock<B: Backend> {
    conv: Conv<B>,
    /// The conv outputs C_out/4 channels that a pixel-unshuffle turns into C_out (in / mix);
    /// otherwise it is a stride-2 conv (sana).
    #[module(skip)]
    unshuffle: bool,
    #[module(skip)]
    shortcut_group: usize,
}

impl<B: Backend> DownBlock<B> {
    fn load<W: WeightSource<B>>(w: &mut W, key: &str, c_in: usize, c_out: usize, kind: Downsample) -> Self {
        let (conv, unshuffle) = match kind {
            Downsample::ConvPixelUnshuffle => (conv2d(w, &format!("{key}.main.conv.conv"), c_in, c_out / 4, 3, 1, 1, true), true),
            Downsample::StridedConv => (conv2d(w, &format!("{key}.main.conv"), c_in, c_out, 3, 2, 1, true), false),
        };
        Self { conv, unshuffle, shortcut_group: 4 * c_in / c_out }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let shortcut = channel_average(pixel_unshuffle(x.clone(), 2), self.shortcut_group);
        let main = self.conv.forward(x);
        let main = if self.unshuffle { pixel_unshuffle(main, 2) } else { main };
        main + shortcut
    }
}

/// ×2 resolution, C_in → C_out, with the channel-duplicating residual shortcut.
#[derive(Module, Debug)]
pub struct UpBlock<B: Backend> {
    conv: Conv<B>,
    /// Conv to 4·C_out then pixel-shuffle (in / mix); otherwise nearest ×2 then conv (sana).
    #[module(skip)]
    shuffle: bool,
    #[module(skip)]
    shortcut_repeats: usize,
}

impl<B: Backend> UpBlock<B> {
    fn load<W: WeightSource<B>>(w: &mut W, key: &str, c_in: usize, c_out: usize, kind: Upsample) -> Self {
        let shuffle = kind == Upsample::ConvPixelShuffle;
        let conv_out = if shuffle { 4 * c_out } else { c_out };
        Self {
            conv: conv2d(w, &format!("{key}.main.conv.conv"), c_in, conv_out, 3, 1, 1, true),
            shuffle,
            shortcut_repeats: 4 * c_out / c_in,
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let shortcut = pixel_shuffle(repeat_channels(x.clone(), self.shortcut_repeats), 2);
        let main = if self.shuffle {
            pixel_shuffle(self.conv.forward(x), 2)
        } else {
            self.conv.forward(upsample_nearest2(x))
        };
        main + shortcut
    }
}

#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    project_in: Conv<B>,
    #[module(skip)]
    project_in_unshuffle: bool,
    /// Blocks then (except in the last stage) the downsample, in run order.
    stages: Vec<Vec<Block<B>>>,
    downs: Vec<Option<DownBlock<B>>>,
    project_out: Conv<B>,
    #[module(skip)]
    out_group: usize,
}

impl<B: Backend> Encoder<B> {
    pub fn load<W: WeightSource<B>>(w: &mut W, cfg: &DcaeConfig) -> Self {
        let e = &cfg.encoder;
        let (widths, depths, n) = (&e.width_list, &e.depth_list, e.width_list.len());
        // in / mix: stage 0 is empty and the head already halves the resolution.
        let project_in_unshuffle = depths[0] == 0;
        let project_in = if project_in_unshuffle {
            conv2d(w, "encoder.project_in.conv.conv", cfg.in_channels, widths[1] / 4, 3, 1, 1, true)
        } else {
            conv2d(w, "encoder.project_in.conv", cfg.in_channels, widths[0], 3, 1, 1, true)
        };
        let mut stages = Vec::new();
        let mut downs = Vec::new();
        for s in 0..n {
            let blocks = (0..depths[s])
                .map(|j| {
                    let key = format!("encoder.stages.{s}.op_list.{j}");
                    Block::load(w, &key, &e.block_type[s], widths[s], NormKind::RmsNorm, Act::Silu, cfg.attention_head_dim)
                })
                .collect();
            stages.push(blocks);
            downs.push((s < n - 1 && depths[s] > 0).then(|| {
                let key = format!("encoder.stages.{s}.op_list.{}", depths[s]);
                DownBlock::load(w, &key, widths[s], widths[s + 1], e.downsample)
            }));
        }
        let last = widths[n - 1];
        Self {
            project_in,
            project_in_unshuffle,
            stages,
            downs,
            project_out: conv2d(w, "encoder.project_out.main.op_list.0.conv", last, cfg.latent_channels, 3, 1, 1, true),
            out_group: last / cfg.latent_channels,
        }
    }

    /// `[B, 3, H, W]` in [-1, 1] → latent `[B, c, H/f, W/f]` (raw, no scaling factor).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut x = self.project_in.forward(x); // [B, 64, 512, 512]
        if self.project_in_unshuffle {
            x = pixel_unshuffle(x, 2); // [B, 256, 256, 256]
        }
        for (blocks, down) in self.stages.iter().zip(&self.downs) {
            for b in blocks {
                x = b.forward(x);
            }
            if let Some(d) = down {
                x = d.forward(x);
            }
        } // [B, 2048, 8, 8]
        self.project_out.forward(x.clone()) + channel_average(x, self.out_group) // [B, 128, 8, 8]
    }
}

#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    project_in: Conv<B>,
    #[module(skip)]
    in_repeats: usize,
    /// In run order (last stage first): the upsample (if any), then the blocks.
    ups: Vec<Option<UpBlock<B>>>,
    stages: Vec<Vec<Block<B>>>,
    out_norm: RmsNorm2d<B>,
    out_conv: Conv<B>,
    #[module(skip)]
    out_shuffle: bool,
}

impl<B: Backend> Decoder<B> {
    pub fn load<W: WeightSource<B>>(w: &mut W, cfg: &DcaeConfig) -> Self {
        let d = &cfg.decoder;
        let (widths, depths, n) = (&d.width_list, &d.depth_list, d.width_list.len());
        let last = widths[n - 1];
        let project_in = conv2d(w, "decoder.project_in.main.conv", cfg.latent_channels, last, 3, 1, 1, true);
        let mut ups = Vec::new();
        let mut stages = Vec::new();
        for s in (0..n).rev() {
            let has_up = s < n - 1 && depths[s] > 0;
            ups.push(has_up.then(|| {
                UpBlock::load(w, &format!("decoder.stages.{s}.op_list.0"), widths[s + 1], widths[s], d.upsample)
            }));
            let first = usize::from(has_up);
            let blocks = (0..depths[s])
                .map(|j| {
                    let key = format!("decoder.stages.{s}.op_list.{}", first + j);
                    Block::load(w, &key, &d.block_type[s], widths[s], d.norm[s], d.act[s], cfg.attention_head_dim)
                })
                .collect();
            stages.push(blocks);
        }
        // in / mix: stage 0 is empty and the head doubles the resolution itself.
        let out_shuffle = depths[0] == 0;
        let c = if out_shuffle { widths[1] } else { widths[0] };
        let out_conv = if out_shuffle {
            conv2d(w, "decoder.project_out.op_list.2.conv.conv", c, 3 * 4, 3, 1, 1, true)
        } else {
            conv2d(w, "decoder.project_out.op_list.2.conv", c, 3, 3, 1, 1, true)
        };
        Self {
            project_in,
            in_repeats: last / cfg.latent_channels,
            ups,
            stages,
            out_norm: RmsNorm2d::load(w, "decoder.project_out.op_list.0", c),
            out_conv,
            out_shuffle,
        }
    }

    /// Latent `[B, c, h, w]` (raw, already divided by the scaling factor) → image `[B, 3, h·f, w·f]`
    /// in about [-1, 1], unclamped.
    pub fn forward(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut x = self.project_in.forward(z.clone()) + repeat_channels(z, self.in_repeats); // [B, 2048, 8, 8]
        for (up, blocks) in self.ups.iter().zip(&self.stages) {
            if let Some(u) = up {
                x = u.forward(x);
            }
            for b in blocks {
                x = b.forward(x);
            }
        } // [B, 256, 256, 256]
        let x = self.out_conv.forward(relu(self.out_norm.forward(x)));
        if self.out_shuffle {
            pixel_shuffle(x, 2) // [B, 3, 512, 512]
        } else {
            x
        }
    }
}

/// A DC-AE: deterministic encoder and decoder, no posterior, no quantisation.
#[derive(Module, Debug)]
pub struct Dcae<B: Backend> {
    pub encoder: Encoder<B>,
    pub decoder: Decoder<B>,
    /// Calls of a 16-bit model run again in f32 (see [`Self::with_precision`]).
    #[module(skip)]
    reruns: F32Reruns,
}

impl<B: Backend> Dcae<B> {
    /// Builds the model from `cfg`, asking `w` for every tensor (original key names).
    pub fn load<W: WeightSource<B>>(w: &mut W, cfg: &DcaeConfig) -> Self {
        Self { encoder: Encoder::load(w, cfg), decoder: Decoder::load(w, cfg), reruns: F32Reruns::default() }
    }

    /// The model with its weights, and so its activations, in `precision` (f16 for GPU
    /// backends that have it: see [`crate::model::precision`]). Callers still hand in and get
    /// back f32 tensors.
    pub fn with_precision(self, precision: Precision) -> Self {
        if self.precision() == precision {
            return self;
        }
        cast_params(self, precision.dtype())
    }

    /// The precision the weights are in.
    pub fn precision(&self) -> Precision {
        match self.encoder.project_in.dtype() {
            DType::F16 => Precision::F16,
            DType::BF16 => Precision::Bf16,
            _ => Precision::F32,
        }
    }

    /// How many calls gave a NaN or an infinity in f16 and were run again in f32.
    pub fn f32_reruns(&self) -> usize {
        self.reruns.count()
    }

    /// `[B, 3, H, W]` in [-1, 1] → latent `[B, c, H/f, W/f]` (raw, no scaling factor), f32.
    pub fn encode(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.guarded(x, |m, x| m.encoder.forward(x))
    }

    /// Latent `[B, c, h, w]` (raw) → image `[B, 3, h·f, w·f]`, f32.
    pub fn decode(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        self.guarded(z, |m, z| m.decoder.forward(z))
    }

    /// `run(self, x)` in the model's precision. A 16-bit result with a NaN or an infinity
    /// (f16 ends at 65504) is computed again with the same weights widened to f32, so the
    /// activations that overflowed have room, and counted in [`Self::f32_reruns`].
    fn guarded(&self, x: Tensor<B, 4>, run: impl Fn(&Self, Tensor<B, 4>) -> Tensor<B, 4>) -> Tensor<B, 4> {
        let precision = self.precision();
        if precision == Precision::F32 {
            return run(self, x);
        }
        let y = as_f32(run(self, x.clone().cast(precision.dtype())));
        if all_finite(&y) {
            return y;
        }
        self.reruns.add();
        let wide = cast_params(self.clone(), FloatDType::F32);
        run(&wide, as_f32(x))
    }
}
