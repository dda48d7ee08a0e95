//! `SanaTransformer2DModel` (diffusers): the SANA diffusion transformer, for every published
//! family — SANA 1.0 (600M / 1.6B, 512 / 1024 px, 2K / 4K with a run-time sin-cos position
//! embedding), SANA 1.5 (qk-norm) and SANA-Sprint (qk-norm + guidance embedder).
//!
//! It predicts the flow velocity `v = ε − x₀` for `x_σ = (1 − σ)·x₀ + σ·ε`. Tokens are the
//! latent pixels in row-major order (patch size 1); self-attention is ReLU *linear* attention
//! (no softmax), cross-attention to the 300 caption tokens is ordinary softmax attention, and the
//! FFN is a GLU over a depthwise 3×3 convolution on the token grid.
//!
//! Parameters come from a [`WeightSource`] under the diffusers key names, which is also how the
//! module tree below is laid out (`transformer_blocks.{i}.attn1.to_q`, …). It computes in f32,
//! or on a GPU backend in the precision the checkpoint was trained in
//! ([`SanaTransformer::with_precision`]: f16 for the fp16-trained SANA 1.0, bf16 for SANA 1.5 and
//! Sprint), with the reference's f32 islands: the timestep sinusoid, the norms, the linear
//! attention and the cross-attention's softmax. Inputs and outputs are f32 either way.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::{relu, silu, softmax};
use burn::tensor::{backend::Backend, DType, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::cpu_kernels::sana as kernels;
use crate::model::layers::{contiguous, lin, linear};
use crate::model::precision::{all_finite, as_f32, cast_params, in_f32, to_dtype, F32Reruns, Precision};
use crate::model::uvit::timestep_embedding;
use crate::weights::WeightSource;

/// The fields of a diffusers `transformer/config.json` that shape the network; absent keys take
/// diffusers' defaults (the SANA 1.0 repos predate `qk_norm`, `guidance_embeds` and
/// `timestep_scale`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SanaTransformerConfig {
    pub in_channels: usize,
    pub out_channels: Option<usize>,
    /// Self-attention heads; their width is `attention_head_dim` (32 in every release).
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    pub num_layers: usize,
    pub num_cross_attention_heads: usize,
    pub cross_attention_head_dim: usize,
    pub cross_attention_dim: usize,
    /// Width of the text encoder's hidden states (Gemma-2-2B: 2304).
    pub caption_channels: usize,
    pub mlp_ratio: f64,
    pub dropout: f64,
    /// Biases on the self-attention q/k/v projections (false in every release).
    pub attention_bias: bool,
    /// Latent side at the training resolution; picks the resolution-bin table (16 → 512 px …).
    pub sample_size: usize,
    pub patch_size: usize,
    pub norm_elementwise_affine: bool,
    pub norm_eps: f64,
    /// Set only by the 2K / 4K models: adds a sin-cos position embedding computed at run time.
    pub interpolation_scale: Option<f64>,
    /// Sprint: a second timestep embedder for the guidance value.
    pub guidance_embeds: bool,
    pub guidance_embeds_scale: f64,
    /// `None` or `"rms_norm_across_heads"` (SANA 1.5, Sprint).
    pub qk_norm: Option<String>,
    /// The pipeline multiplies the scheduler's timestep by this before the model sees it.
    pub timestep_scale: f64,
}

impl Default for SanaTransformerConfig {
    fn default() -> Self {
        Self {
            in_channels: 32,
            out_channels: Some(32),
            num_attention_heads: 70,
            attention_head_dim: 32,
            num_layers: 20,
            num_cross_attention_heads: 20,
            cross_attention_head_dim: 112,
            cross_attention_dim: 2240,
            caption_channels: 2304,
            mlp_ratio: 2.5,
            dropout: 0.0,
            attention_bias: false,
            sample_size: 32,
            patch_size: 1,
            norm_elementwise_affine: false,
            norm_eps: 1e-6,
            interpolation_scale: None,
            guidance_embeds: false,
            guidance_embeds_scale: 0.1,
            qk_norm: None,
            timestep_scale: 1.0,
        }
    }
}

/// The one `qk_norm` value of the published models.
pub const QK_NORM_ACROSS_HEADS: &str = "rms_norm_across_heads";

/// Text-encoder tokens the pipelines condition on (`max_sequence_length`).
pub const MAX_SEQUENCE_LENGTH: usize = 300;

impl SanaTransformerConfig {
    /// From `transformer/config.json`; an error names the field that does not parse.
    pub fn from_json(v: &Value) -> Result<Self, String> {
        serde_json::from_value(v.clone()).map_err(|e| format!("transformer config: {e}"))
    }

    /// SANA 1.0 600M (28 blocks, 1152 wide): `Sana_600M_{512,1024}px`.
    pub fn sana_600m(sample_size: usize) -> Self {
        Self {
            num_attention_heads: 36,
            num_layers: 28,
            num_cross_attention_heads: 16,
            cross_attention_head_dim: 72,
            cross_attention_dim: 1152,
            sample_size,
            ..Self::default()
        }
    }

    /// SANA 1.0 1.6B (20 blocks, 2240 wide): `Sana_1600M_*`; 2K / 4K add `interpolation_scale`.
    pub fn sana_1600m(sample_size: usize) -> Self {
        Self { sample_size, ..Self::default() }
    }

    /// SANA 1.5: the 1.6B block with qk-norm, `layers` = 20 (1.6B) or 60 (4.8B).
    pub fn sana15(layers: usize) -> Self {
        Self { num_layers: layers, qk_norm: Some(QK_NORM_ACROSS_HEADS.into()), ..Self::default() }
    }

    /// SANA-Sprint: qk-norm and the guidance embedder on the 600M or 1.6B network.
    pub fn sprint(base: Self) -> Self {
        Self { qk_norm: Some(QK_NORM_ACROSS_HEADS.into()), guidance_embeds: true, sample_size: 32, ..base }
    }

    pub fn hidden(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    pub fn cross_inner(&self) -> usize {
        self.num_cross_attention_heads * self.cross_attention_head_dim
    }

    /// The largest single activation of one forward over `rows` latents (CFG rows included) of
    /// `tokens` positions with a caption of `caption_len` tokens, in bytes: the GLUMBConv
    /// expansion `[rows, N, 2·ffn_hidden]` at the activations' precision, or the
    /// cross-attention scores `[rows, heads, N, caption_len]`, an f32 island. What must stay under
    /// the device's largest tensor ([`crate::model::limits`]).
    pub fn largest_activation_bytes(&self, rows: usize, tokens: usize, caption_len: usize, precision: crate::model::precision::Precision) -> u64 {
        let ffn = (rows * tokens * 2 * self.ffn_hidden()) as u64 * precision.bytes();
        let scores = (rows * self.num_cross_attention_heads * tokens * caption_len) as u64 * 4;
        let qkv = (rows * tokens * 3 * self.hidden()) as u64 * precision.bytes();
        ffn.max(scores).max(qkv)
    }

    /// GLUMBConv's hidden width `int(mlp_ratio · D)` (2880 / 5600).
    pub fn ffn_hidden(&self) -> usize {
        (self.mlp_ratio * self.hidden() as f64) as usize
    }

    pub fn out_channels(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    pub fn qk_norm(&self) -> bool {
        self.qk_norm.is_some()
    }

    /// Refuses what this port does not implement, and numbers that make no network, naming
    /// the field, instead of guessing.
    pub fn validate(&self) -> Result<(), String> {
        let c = self;
        let positive = [
            ("in_channels", c.in_channels),
            ("num_attention_heads", c.num_attention_heads),
            ("attention_head_dim", c.attention_head_dim),
            ("num_layers", c.num_layers),
            ("num_cross_attention_heads", c.num_cross_attention_heads),
            ("cross_attention_head_dim", c.cross_attention_head_dim),
            ("cross_attention_dim", c.cross_attention_dim),
            ("caption_channels", c.caption_channels),
            ("sample_size", c.sample_size),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("transformer config: {name} must be positive"));
        }
        // Far beyond every release (the 4.8B model has 60 layers, 2240 wide): a typo, and
        // building it would try to allocate terabytes. The widths are products that overflowed
        // (2^40 heads of width 2^40), so they are taken checked.
        let width = |a: usize, b: usize| a.checked_mul(b).unwrap_or(usize::MAX);
        let limits = [
            ("num_layers", c.num_layers, 256),
            ("hidden width", width(c.num_attention_heads, c.attention_head_dim), 16384),
            ("cross-attention width", width(c.num_cross_attention_heads, c.cross_attention_head_dim), 16384),
            ("caption_channels", c.caption_channels, 16384),
            ("in_channels", c.in_channels, 4096),
            ("sample_size", c.sample_size, 4096),
        ];
        if let Some((name, v, max)) = limits.iter().find(|(_, v, max)| v > max) {
            return Err(format!("transformer config: {name} = {v} is beyond any SANA model (at most {max}); is the config.json damaged?"));
        }
        if c.patch_size != 1 {
            return Err(format!("transformer config: patch_size = {} is not supported (every published SANA model uses 1)", c.patch_size));
        }
        if c.norm_elementwise_affine {
            return Err("transformer config: norm_elementwise_affine = true is not supported (the published models use false)".into());
        }
        if let Some(q) = &c.qk_norm {
            if q != QK_NORM_ACROSS_HEADS {
                return Err(format!("transformer config: qk_norm = {q:?} is not supported (only {QK_NORM_ACROSS_HEADS:?} or null)"));
            }
        }
        if c.out_channels() != c.in_channels {
            return Err(format!(
                "transformer config: out_channels = {} differs from in_channels = {} (a learned-variance model, which no sampler here uses)",
                c.out_channels(),
                c.in_channels
            ));
        }
        if c.cross_attention_dim != c.hidden() {
            return Err(format!(
                "transformer config: cross_attention_dim = {} must equal the hidden width num_attention_heads × attention_head_dim = {}",
                c.cross_attention_dim,
                c.hidden()
            ));
        }
        if !(c.mlp_ratio.is_finite() && c.ffn_hidden() > 0 && c.mlp_ratio <= 16.0) {
            return Err(format!("transformer config: mlp_ratio = {} gives no usable FFN width", c.mlp_ratio));
        }
        if c.num_params() > 1 << 33 {
            return Err(format!("transformer config: {} parameters is beyond any SANA model (the largest has 4.8 billion); is the config.json damaged?", c.num_params()));
        }
        let finite = [("norm_eps", c.norm_eps), ("guidance_embeds_scale", c.guidance_embeds_scale), ("timestep_scale", c.timestep_scale)];
        if let Some((name, v)) = finite.iter().find(|(_, v)| !v.is_finite()) {
            return Err(format!("transformer config: {name} = {v} is not a finite number"));
        }
        if !(c.norm_eps > 0.0) {
            return Err(format!("transformer config: norm_eps = {} must be positive", c.norm_eps));
        }
        if let Some(s) = c.interpolation_scale {
            if !(s.is_finite() && s > 0.0) {
                return Err(format!("transformer config: interpolation_scale = {s} must be a positive number"));
            }
        }
        Ok(())
    }

    /// Parameter count (600M: 591,747,872; 1.6B: 1,604,462,752; Sprint-0.6B: 593,501,216).
    pub fn num_params(&self) -> usize {
        let (d, c, cap, f, x) = (self.hidden(), self.in_channels, self.caption_channels, self.ffn_hidden(), self.cross_inner());
        let embedder = 256 * d + d + d * d + d;
        let time = embedder * (1 + self.guidance_embeds as usize) + d * 6 * d + 6 * d;
        let qk = if self.qk_norm() { 2 * d + 2 * x } else { 0 };
        let attn1 = 3 * d * d + self.attention_bias as usize * 3 * d + d * d + d;
        let attn2 = d * x + x + 2 * (d * x + x) + x * d + d;
        let ff = d * 2 * f + 2 * f + 2 * f * 9 + 2 * f + f * d;
        let block = 6 * d + attn1 + attn2 + qk + ff;
        d * c + d + time + (cap * d + d + d * d + d) + d + self.num_layers * block + 2 * d + d * c + c
    }
}

/// A Linear layer from a 1×1 convolution's `[out, in, 1, 1]` weight: on token-major
/// activations the two are the same operation, and the Linear takes the fast CPU path.
fn linear_from_conv1x1<B: Backend, W: WeightSource<B>>(w: &mut W, key: &str, c_in: usize, c_out: usize, bias: bool) -> Linear<B> {
    let weight = w.tensor(&format!("{key}.weight"), [c_out, c_in, 1, 1]);
    let [o, i, _, _] = weight.dims(); // read back so that placeholder sources work too
    let weight = contiguous(weight.reshape([o, i]).transpose());
    let bias = bias.then(|| Param::from_tensor(w.tensor(&format!("{key}.bias"), [c_out])));
    Linear { weight: Param::from_tensor(weight), bias }
}

/// LayerNorm over the last axis without affine parameters.
fn layer_norm<B: Backend>(x: Tensor<B, 3>, eps: f64) -> Tensor<B, 3> {
    let mean = x.clone().mean_dim(2);
    let centred = x - mean;
    let var = centred.clone().square().mean_dim(2);
    centred * (var + eps).sqrt().recip()
}

/// `layer_norm(x) · (1 + scale) + shift`, the blocks' modulated norm (`x` `[B, N, D]`, `shift`
/// and `scale` `[B, 1, D]`).
/// One pass per row on the CPU backend ([`kernels::norm_modulate`]).
pub fn norm_modulate<B: Backend>(x: Tensor<B, 3>, shift: Tensor<B, 3>, scale: Tensor<B, 3>, eps: f64) -> Tensor<B, 3> {
    kernels::norm_modulate(&x, &shift, &scale, eps as f32).unwrap_or_else(|| norm_modulate_ops(x, shift, scale, eps))
}

/// `x + gate · y` (`x + y` without a gate), `gate` `[B, 1, D]`: the residual connections, one
/// pass on the CPU backend ([`kernels::add_gated`]).
pub fn add_gated<B: Backend>(x: Tensor<B, 3>, gate: Option<Tensor<B, 3>>, y: Tensor<B, 3>) -> Tensor<B, 3> {
    kernels::add_gated(&x, gate.as_ref(), &y).unwrap_or_else(|| match gate {
        Some(g) => x + g * y,
        None => x + y,
    })
}

/// [`norm_modulate`] in burn's ops, for every backend.
fn norm_modulate_ops<B: Backend>(x: Tensor<B, 3>, shift: Tensor<B, 3>, scale: Tensor<B, 3>, eps: f64) -> Tensor<B, 3> {
    // The statistics in f32 (a 16-bit mean over 1152 channels loses the variance).
    in_f32(x, |x| layer_norm(x, eps)) * (scale + 1.0) + shift
}

/// diffusers `RMSNorm` with a weight: `x · rsqrt(mean(x²) + eps) · w` over the last axis (SANA's
/// own norm: eps 1e-5 and a plain weight, unlike Gemma's `1 + w`).
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
}

impl<B: Backend> RmsNorm<B> {
    pub const EPS: f64 = 1e-5;

    fn load<W: WeightSource<B>>(w: &mut W, key: &str, d: usize) -> Self {
        Self { weight: Param::from_tensor(w.norm_scale(&format!("{key}.weight"), d)) }
    }

    /// In f32 whatever `x`'s dtype, returned in that dtype.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        in_f32(x, |x| {
            let inv_rms = (x.clone().square().mean_dim(D - 1) + Self::EPS).sqrt().recip();
            let [d] = self.weight.dims();
            let mut shape = [1usize; D];
            shape[D - 1] = d;
            x * inv_rms * as_f32(self.weight.val()).reshape(shape)
        })
    }
}

/// `TimestepEmbedding`: Linear 256 → D, SiLU, Linear D → D, over the 256 sinusoid features.
#[derive(Module, Debug)]
pub struct TimestepEmbedder<B: Backend> {
    pub linear_1: Linear<B>,
    pub linear_2: Linear<B>,
}

/// Sinusoid features of the timestep (and of Sprint's guidance value).
const TIME_FEATURES: usize = 256;

impl<B: Backend> TimestepEmbedder<B> {
    fn load<W: WeightSource<B>>(w: &mut W, key: &str, d: usize) -> Self {
        Self { linear_1: linear(w, &format!("{key}.linear_1"), TIME_FEATURES, d, true), linear_2: linear(w, &format!("{key}.linear_2"), d, d, true) }
    }

    /// `t` `[B]` (any real value: 0…1000 for the flow pipelines, 0…1 for Sprint) → `[B, D]`.
    pub fn forward(&self, t: Tensor<B, 1>) -> Tensor<B, 2> {
        // [cos | sin] with 128 frequencies exp(−ln(10⁴)·k/128), as diffusers' `Timesteps(256,
        // flip_sin_to_cos=True, downscale_freq_shift=0)`; the UViT uses the same features.
        let features = timestep_embedding(t, TIME_FEATURES); // f32, as the reference's `t.float()`
        let features = to_dtype(features, self.linear_1.weight.val().dtype());
        lin(&self.linear_2, silu(lin(&self.linear_1, features)))
    }
}

/// `AdaLayerNormSingle` (SANA 1.0 / 1.5: `time_embed.emb.timestep_embedder`, `time_embed.linear`)
/// or Sprint's `SanaCombinedTimestepGuidanceEmbeddings` (`time_embed.timestep_embedder`,
/// `time_embed.guidance_embedder`, `time_embed.linear`).
#[derive(Module, Debug)]
pub struct TimeEmbed<B: Backend> {
    pub timestep_embedder: TimestepEmbedder<B>,
    pub guidance_embedder: Option<TimestepEmbedder<B>>,
    /// D → 6D: the blocks' modulation.
    pub linear: Linear<B>,
}

impl<B: Backend> TimeEmbed<B> {
    fn load<W: WeightSource<B>>(w: &mut W, cfg: &SanaTransformerConfig) -> Self {
        let d = cfg.hidden();
        let (timestep_embedder, guidance_embedder) = if cfg.guidance_embeds {
            (
                TimestepEmbedder::load(w, "time_embed.timestep_embedder", d),
                Some(TimestepEmbedder::load(w, "time_embed.guidance_embedder", d)),
            )
        } else {
            (TimestepEmbedder::load(w, "time_embed.emb.timestep_embedder", d), None)
        };
        Self { timestep_embedder, guidance_embedder, linear: linear(w, "time_embed.linear", d, 6 * d, true) }
    }

    /// → (modulation `m` `[B, 6D]`, embedding `e` `[B, D]`). The guidance value is used only by
    /// a model with a guidance embedder, and it must have one.
    pub fn forward(&self, t: Tensor<B, 1>, guidance: Option<Tensor<B, 1>>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let mut e = self.timestep_embedder.forward(t.clone());
        if let Some(g) = &self.guidance_embedder {
            let value = guidance.unwrap_or_else(|| t.zeros_like());
            e = e + g.forward(value);
        }
        (lin(&self.linear, silu(e.clone())), e)
    }
}

/// Self-attention: ReLU linear attention per head of width `attention_head_dim`.
#[derive(Module, Debug)]
pub struct LinearAttention<B: Backend> {
    pub to_q: Linear<B>,
    pub to_k: Linear<B>,
    pub to_v: Linear<B>,
    pub norm_q: Option<RmsNorm<B>>,
    pub norm_k: Option<RmsNorm<B>>,
    pub to_out: Linear<B>,
    pub heads: usize,
    /// Clamp the output to ±65504 as the fp16-trained checkpoints need (see [`SanaTransformer::clip_fp16_range`]).
    pub clip: bool,
}

/// The largest finite f16; diffusers clips the linear attention's output to it in fp16.
const F16_MAX: f64 = 65504.0;

/// The q / k / v projections and optional qk-norm that both attentions start with.
struct QkvProjection<B: Backend> {
    to_q: Linear<B>,
    to_k: Linear<B>,
    to_v: Linear<B>,
    norm_q: Option<RmsNorm<B>>,
    norm_k: Option<RmsNorm<B>>,
}

impl<B: Backend> QkvProjection<B> {
    /// `{key}.to_{q,k,v}` (queries from `q_in` channels, keys and values from `kv_in`, all to
    /// `inner`) and, with qk-norm, `{key}.norm_{q,k}` over all `inner` channels.
    fn load<W: WeightSource<B>>(w: &mut W, key: &str, [q_in, kv_in, inner]: [usize; 3], bias: bool, qk_norm: bool) -> Self {
        let norm = |w: &mut W, n: &str| qk_norm.then(|| RmsNorm::load(w, &format!("{key}.{n}"), inner));
        Self {
            to_q: linear(w, &format!("{key}.to_q"), q_in, inner, bias),
            to_k: linear(w, &format!("{key}.to_k"), kv_in, inner, bias),
            to_v: linear(w, &format!("{key}.to_v"), kv_in, inner, bias),
            norm_q: norm(w, "norm_q"),
            norm_k: norm(w, "norm_k"),
        }
    }
}

/// `(q, k, v)` of queries from `x` and keys and values from `context` (`[B, ·, inner]` each),
/// qk-normed when the layer has the norms.
fn project_qkv<B: Backend>(
    [to_q, to_k, to_v]: [&Linear<B>; 3],
    norms: (Option<&RmsNorm<B>>, Option<&RmsNorm<B>>),
    x: Tensor<B, 3>,
    context: Tensor<B, 3>,
) -> (Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 3>) {
    let mut q = lin(to_q, x);
    let mut k = lin(to_k, context.clone());
    let v = lin(to_v, context);
    if let (Some(nq), Some(nk)) = norms {
        q = nq.forward(q);
        k = nk.forward(k);
    }
    (q, k, v)
}

impl<B: Backend> LinearAttention<B> {
    fn load<W: WeightSource<B>>(w: &mut W, key: &str, cfg: &SanaTransformerConfig) -> Self {
        let d = cfg.hidden();
        let QkvProjection { to_q, to_k, to_v, norm_q, norm_k } = QkvProjection::load(w, key, [d, d, d], cfg.attention_bias, cfg.qk_norm());
        Self { to_q, to_k, to_v, norm_q, norm_k, to_out: linear(w, &format!("{key}.to_out.0"), d, d, true), heads: cfg.num_attention_heads, clip: false }
    }

    /// `x` `[B, N, D]` → `[B, N, D]`: for each query, Σₙ vₙ (kₙ·q) / (Σₙ kₙ·q + 1e-15), with
    /// ReLU features, no scaling, no mask and no softmax.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let (q, k, v) = project_qkv([&self.to_q, &self.to_k, &self.to_v], (self.norm_q.as_ref(), self.norm_k.as_ref()), x.clone(), x);
        // An f32 island, as the reference's `q, k, v .float()`: its sums run over every token.
        let dt = q.dtype();
        let out = kernels::relu_linear_attention(&q, &k, &v, self.heads).unwrap_or_else(|| to_dtype(linear_attention_ops(as_f32(q), as_f32(k), as_f32(v), self.heads), dt));
        let out = lin(&self.to_out, out);
        if self.clip {
            out.clamp(-F16_MAX, F16_MAX)
        } else {
            out
        }
    }
}

/// The linear attention between the projections, in burn's ops: `q`, `k`, `v` `[B, N, D]`
/// (before the ReLU) → `[B, N, D]`.
fn linear_attention_ops<B: Backend>(q: Tensor<B, 3>, k: Tensor<B, 3>, v: Tensor<B, 3>, h: usize) -> Tensor<B, 3> {
    let [b, n, d] = q.dims();
    let hd = d / h;
    // Channel c belongs to head c / hd.
    let heads = |t: Tensor<B, 3>| t.reshape([b, n, h, hd]).swap_dims(1, 2); // [B, H, N, hd]
    let (q, k, v) = (heads(relu(q)), heads(relu(k)), heads(v));
    let kv = k.clone().swap_dims(2, 3).matmul(v); // [B, H, hd, hd]: Σₙ kₙ vₙᵀ
    let k_sum = k.sum_dim(2); // [B, H, 1, hd]
    let num = q.clone().matmul(kv); // [B, H, N, hd]
    // The normaliser is its own product, not the last row of a padded one (an exporter
    // that sliced the padded row wrongly broke this).
    let den = q.matmul(k_sum.swap_dims(2, 3)); // [B, H, N, 1]
    (num / (den + 1e-15)).swap_dims(1, 2).reshape([b, n, d]) // [B, N, D]
}

/// Cross-attention from the image tokens to the caption tokens (with biases; qk-norm in 1.5 /
/// Sprint, including on the text keys).
#[derive(Module, Debug)]
pub struct CrossAttention<B: Backend> {
    pub to_q: Linear<B>,
    pub to_k: Linear<B>,
    pub to_v: Linear<B>,
    pub norm_q: Option<RmsNorm<B>>,
    pub norm_k: Option<RmsNorm<B>>,
    pub to_out: Linear<B>,
    pub heads: usize,
}

impl<B: Backend> CrossAttention<B> {
    fn load<W: WeightSource<B>>(w: &mut W, key: &str, cfg: &SanaTransformerConfig) -> Self {
        let (d, x, c) = (cfg.hidden(), cfg.cross_inner(), cfg.cross_attention_dim);
        let QkvProjection { to_q, to_k, to_v, norm_q, norm_k } = QkvProjection::load(w, key, [d, c, x], true, cfg.qk_norm());
        Self { to_q, to_k, to_v, norm_q, norm_k, to_out: linear(w, &format!("{key}.to_out.0"), x, d, true), heads: cfg.num_cross_attention_heads }
    }

    /// The keys and values of caption tokens `text` `[B, L, D]` → `[B, L, inner]` each
    /// (qk-normed keys when the layer has the norm).
    pub fn keys_values(&self, text: Tensor<B, 3>) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let k = lin(&self.to_k, text.clone());
        let v = lin(&self.to_v, text);
        match &self.norm_k {
            Some(nk) => (nk.forward(k), v),
            None => (k, v),
        }
    }

    /// `x` `[B, N, D]` attending to keys and values from [`Self::keys_values`] with `bias`
    /// `[B, 1, 1, L]` (0 or −10000) → `[B, N, D]`.
    pub fn forward(&self, x: Tensor<B, 3>, (k, v): (&Tensor<B, 3>, &Tensor<B, 3>), bias: &Tensor<B, 4>) -> Tensor<B, 3> {
        let q = lin(&self.to_q, x);
        let q = match &self.norm_q {
            Some(nq) => nq.forward(q),
            None => q,
        };
        let out = kernels::cross_attention(&q, k, v, bias, self.heads)
            .unwrap_or_else(|| cross_attention_ops(q, k.clone(), v.clone(), bias.clone(), self.heads));
        lin(&self.to_out, out)
    }
}

/// Softmax attention between the projections, in burn's ops: `q` `[B, N, X]`, `k`, `v`
/// `[B, L, X]`, `bias` `[B, 1, 1, L]` → `[B, N, X]`.
fn cross_attention_ops<B: Backend>(q: Tensor<B, 3>, k: Tensor<B, 3>, v: Tensor<B, 3>, bias: Tensor<B, 4>, h: usize) -> Tensor<B, 3> {
    let [b, n, inner] = q.dims();
    let [_, l, _] = k.dims();
    let hd = inner / h;
    let q = q.reshape([b, n, h, hd]).swap_dims(1, 2); // [B, H, N, hd]
    let k = k.reshape([b, l, h, hd]).swap_dims(1, 2); // [B, H, L, hd]
    let v = v.reshape([b, l, h, hd]).swap_dims(1, 2); // [B, H, L, hd]
    let scores = q.matmul(k.swap_dims(2, 3)); // [B, H, N, L], in the activations' dtype
    let attn = in_f32(scores, |s| softmax(s.mul_scalar((hd as f64).powf(-0.5)) + bias, 3));
    attn.matmul(v).swap_dims(1, 2).reshape([b, n, inner]) // [B, N, inner]
}

/// GLUMBConv: 1×1 conv D → 2F + SiLU, depthwise 3×3 on the token grid, value ⊙ SiLU(gate),
/// 1×1 conv F → D without bias. Kept token-major (`[B, h, w, C]`), where the 1×1 convolutions
/// are Linear layers and the depthwise one nine shifted multiply-adds.
#[derive(Module, Debug)]
pub struct GluMbConv<B: Backend> {
    pub conv_inverted: Linear<B>,
    /// `[3, 3, 2F]`: the depthwise taps, channel-last.
    pub depth_weight: Param<Tensor<B, 3>>,
    pub depth_bias: Param<Tensor<B, 1>>,
    pub conv_point: Linear<B>,
}

impl<B: Backend> GluMbConv<B> {
    fn load<W: WeightSource<B>>(w: &mut W, key: &str, d: usize, f: usize) -> Self {
        let depth = w.tensor(&format!("{key}.conv_depth.weight"), [2 * f, 1, 3, 3]);
        let [c, _, kh, kw] = depth.dims();
        let depth_weight = contiguous(depth.reshape([c, kh * kw]).transpose().reshape([kh, kw, c]));
        Self {
            conv_inverted: linear_from_conv1x1(w, &format!("{key}.conv_inverted"), d, 2 * f, true),
            depth_weight: Param::from_tensor(depth_weight),
            depth_bias: Param::from_tensor(w.tensor(&format!("{key}.conv_depth.bias"), [2 * f])),
            conv_point: linear_from_conv1x1(w, &format!("{key}.conv_point"), f, d, false),
        }
    }

    /// `x` `[B, N, D]` with N = h·w tokens in row-major order → `[B, N, D]`.
    pub fn forward(&self, x: Tensor<B, 3>, h: usize, w: usize) -> Tensor<B, 3> {
        let [b, _, _] = x.dims();
        let inv = &self.conv_inverted;
        let bias = inv.bias.as_ref().map(|b| b.val());
        let y = kernels::linear_silu(&x, &inv.weight.val(), bias.as_ref()).unwrap_or_else(|| silu(lin(inv, x))); // [B, N, 2F]
        let [_, _, c2] = y.dims();
        let y = y.reshape([b, h, w, c2]);
        let (taps, bias) = (self.depth_weight.val(), self.depth_bias.val());
        let y = kernels::depthwise3x3_glu(&y, &taps, &bias).unwrap_or_else(|| depthwise3x3_glu_ops(y, taps, bias)); // [B, N, F]
        lin(&self.conv_point, y)
    }
}

/// GLUMBConv's depthwise 3×3 (zero padding 1) over `y` `[B, h, w, 2F]` with channel-last
/// `taps` `[3, 3, 2F]` and `bias` `[2F]`, then value ⊙ SiLU(gate) → `[B, h·w, F]`, in burn's
/// ops: nine shifted multiply-adds.
fn depthwise3x3_glu_ops<B: Backend>(y: Tensor<B, 4>, taps: Tensor<B, 3>, bias: Tensor<B, 1>) -> Tensor<B, 3> {
    let [b, h, w, c2] = y.dims();
    // Zero padding 1, then the nine taps. (Written into zeros of `y`'s own dtype: burn's `pad`
    // fills in the default float type and fails on a 16-bit tensor.)
    let padded = Tensor::<B, 4>::zeros([b, h + 2, w + 2, c2], (&y.device(), y.dtype())).slice_assign([0..b, 1..h + 1, 1..w + 1, 0..c2], y); // [B, h+2, w+2, 2F]
    let mut acc = bias.reshape([1, 1, 1, c2]).expand([b, h, w, c2]);
    for di in 0..3 {
        for dj in 0..3 {
            let tap = taps.clone().slice([di..di + 1, dj..dj + 1, 0..c2]).reshape([1, 1, 1, c2]);
            let shifted = padded.clone().slice([0..b, di..di + h, dj..dj + w, 0..c2]);
            acc = acc + shifted * tap;
        }
    }
    let f = c2 / 2;
    let value = acc.clone().slice([0..b, 0..h, 0..w, 0..f]);
    let gate = acc.slice([0..b, 0..h, 0..w, f..c2]);
    (value * silu(gate)).reshape([b, h * w, f])
}

/// One `SanaTransformerBlock`.
#[derive(Module, Debug)]
pub struct SanaBlock<B: Backend> {
    /// `[6, D]`: shift₁, scale₁, gate₁, shift₂, scale₂, gate₂, added to the time modulation.
    pub scale_shift_table: Param<Tensor<B, 2>>,
    pub attn1: LinearAttention<B>,
    pub attn2: CrossAttention<B>,
    pub ff: GluMbConv<B>,
    pub norm_eps: f64,
}

impl<B: Backend> SanaBlock<B> {
    fn load<W: WeightSource<B>>(w: &mut W, key: &str, cfg: &SanaTransformerConfig) -> Self {
        let d = cfg.hidden();
        Self {
            scale_shift_table: Param::from_tensor(w.tensor(&format!("{key}.scale_shift_table"), [6, d])),
            attn1: LinearAttention::load(w, &format!("{key}.attn1"), cfg),
            attn2: CrossAttention::load(w, &format!("{key}.attn2"), cfg),
            ff: GluMbConv::load(w, &format!("{key}.ff"), d, cfg.ffn_hidden()),
            norm_eps: cfg.norm_eps,
        }
    }

    /// `x` `[B, N, D]`, modulation `m` `[B, 6D]`, this block's caption keys and values
    /// `[B, L, inner]` and their mask bias `[B, 1, 1, L]`.
    pub fn forward(&self, x: Tensor<B, 3>, m: Tensor<B, 2>, kv: (&Tensor<B, 3>, &Tensor<B, 3>), bias: &Tensor<B, 4>, hw: (usize, usize)) -> Tensor<B, 3> {
        let [shift1, scale1, gate1, shift2, scale2, gate2] = self.modulation(m);
        let a = norm_modulate(x.clone(), shift1, scale1, self.norm_eps);
        let x = add_gated(x, Some(gate1), self.attn1.forward(a));
        // No norm in front of the cross-attention, and no gate after it.
        let x = add_gated(x.clone(), None, self.attn2.forward(x, kv, bias));
        let f = norm_modulate(x.clone(), shift2, scale2, self.norm_eps);
        add_gated(x, Some(gate2), self.ff.forward(f, hw.0, hw.1))
    }

    /// The time modulation `m` `[B, 6D]` plus the block's table: shift₁, scale₁, gate₁, shift₂,
    /// scale₂, gate₂, each `[B, 1, D]`.
    pub fn modulation(&self, m: Tensor<B, 2>) -> [Tensor<B, 3>; 6] {
        let [b, d6] = m.dims();
        let d = d6 / 6;
        let mods = self.scale_shift_table.val().unsqueeze_dim::<3>(0) + m.reshape([b, 6, d]); // [B, 6, D]
        std::array::from_fn(|i| mods.clone().slice([0..b, i..i + 1, 0..d]))
    }
}

/// The caption's part of the network: its keys and values in every block's cross-attention
/// and the padding bias.
///
/// Why apart: they depend on the caption alone, yet diffusers recomputes them in every call.
/// Sana-600M at 512² with guidance spends about 15 % of a step's multiply-adds there (the
/// caption's 2 × 300 tokens through two 1152² projections in each of 28 blocks, against the
/// image's 2 × 256 tokens through the whole block), so a generation computes them once.
#[derive(Debug, Clone)]
pub struct Caption<B: Backend> {
    /// Per block: keys and values `[B, L, inner]`.
    keys_values: Vec<(Tensor<B, 3>, Tensor<B, 3>)>,
    /// `[B, 1, 1, L]`: 0 for a caption token, −10000 for padding.
    bias: Tensor<B, 4>,
    /// What it was computed from, for a 16-bit model's f32 rerun.
    text: Tensor<B, 3>,
    mask: Tensor<B, 2, Int>,
}

/// The SANA velocity network.
#[derive(Module, Debug)]
pub struct SanaTransformer<B: Backend> {
    /// `patch_embed.proj`: a 1×1 conv `in_channels` → D, as a Linear over latent pixels.
    pub patch_embed: Linear<B>,
    pub time_embed: TimeEmbed<B>,
    /// `caption_projection.linear_{1,2}`: caption_channels → D, GELU (tanh), D → D.
    pub caption_linear_1: Linear<B>,
    pub caption_linear_2: Linear<B>,
    pub caption_norm: RmsNorm<B>,
    pub transformer_blocks: Vec<SanaBlock<B>>,
    /// `[2, D]`: shift, scale of the output norm, added to the time embedding `e`.
    pub scale_shift_table: Param<Tensor<B, 2>>,
    pub proj_out: Linear<B>,
    #[module(skip)]
    pub config: SanaTransformerConfig,
    #[module(skip)]
    precision: Precision,
    #[module(skip)]
    reruns: F32Reruns,
}

impl<B: Backend> SanaTransformer<B> {
    /// Builds the network, asking `w` for every parameter by its diffusers key. `cfg` should
    /// have passed [`SanaTransformerConfig::validate`].
    pub fn load<W: WeightSource<B>>(w: &mut W, cfg: &SanaTransformerConfig) -> Self {
        let (d, c) = (cfg.hidden(), cfg.in_channels);
        Self {
            patch_embed: linear_from_conv1x1(w, "patch_embed.proj", c, d, true),
            time_embed: TimeEmbed::load(w, cfg),
            caption_linear_1: linear(w, "caption_projection.linear_1", cfg.caption_channels, d, true),
            caption_linear_2: linear(w, "caption_projection.linear_2", d, d, true),
            caption_norm: RmsNorm::load(w, "caption_norm", d),
            transformer_blocks: (0..cfg.num_layers).map(|i| SanaBlock::load(w, &format!("transformer_blocks.{i}"), cfg)).collect(),
            scale_shift_table: Param::from_tensor(w.tensor("scale_shift_table", [2, d])),
            proj_out: linear(w, "proj_out", d, cfg.out_channels(), true),
            config: cfg.clone(),
            precision: Precision::F32,
            reruns: F32Reruns::default(),
        }
    }

    /// The network with every parameter, and so its activations, in `precision`: f16 for the
    /// fp16-trained checkpoints and bf16 for the bf16-trained ones, on GPU backends that have
    /// them (see [`crate::model::precision`]); the f32 islands stay f32. Callers still hand in
    /// and get back f32 tensors.
    pub fn with_precision(self, precision: Precision) -> Self {
        if self.precision == precision {
            return self;
        }
        let mut model = cast_params(self, precision.dtype());
        model.precision = precision;
        model
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// How many 16-bit calls gave a NaN or an infinity and were run again in f32.
    pub fn f32_reruns(&self) -> usize {
        self.reruns.count()
    }

    /// Clamps every self-attention output to ±65504, as diffusers does in fp16. The
    /// fp16-trained checkpoints (SANA 1.0 600M and 1.6B 512 / 1024 px) rely on it: in f32
    /// without it their images are unusable (diffusers issue #10336). Not for bf16-trained ones.
    pub fn clip_fp16_range(mut self, on: bool) -> Self {
        for block in &mut self.transformer_blocks {
            block.attn1.clip = on;
        }
        self
    }

    pub fn device(&self) -> B::Device {
        self.scale_shift_table.val().device()
    }

    /// The velocity for latents `x` `[B, C, h, w]` at model timesteps `t` `[B]` (already ×
    /// `timestep_scale`), conditioned on caption states `text` `[B, L, caption_channels]` with
    /// `mask` `[B, L]` (1 keep, 0 pad); `guidance` `[B]` for Sprint (guidance scale ×
    /// `guidance_embeds_scale`).
    pub fn forward(&self, x: Tensor<B, 4>, t: Tensor<B, 1>, text: Tensor<B, 3>, mask: Tensor<B, 2, Int>, guidance: Option<Tensor<B, 1>>) -> Tensor<B, 4> {
        let caption = self.caption(text, mask);
        self.forward_with(x, t, &caption, guidance)
    }

    /// What the blocks take from caption states `text` `[B, L, caption_channels]` with `mask`
    /// `[B, L]`: see [`Caption`]. A sampler computes it once and calls [`Self::forward_with`]
    /// at every step.
    pub fn caption(&self, text: Tensor<B, 3>, mask: Tensor<B, 2, Int>) -> Caption<B> {
        let [b, l] = mask.dims();
        let (source, source_mask) = (as_f32(text.clone()), mask.clone());
        let text = to_dtype(text, self.precision.dtype().into());
        let text = lin(&self.caption_linear_2, gelu_tanh(lin(&self.caption_linear_1, text))); // [B, L, D]
        let text = self.caption_norm.forward(text);
        // Padded keys get −10000 (not −∞), as the reference's additive mask; f32, it is added
        // inside the softmax's f32 island.
        let bias = (mask.float().neg() + 1.0).mul_scalar(-10000.0).reshape([b, 1, 1, l]); // [B, 1, 1, L]
        let keys_values = self.transformer_blocks.iter().map(|block| block.attn2.keys_values(text.clone())).collect();
        Caption { keys_values, bias, text: source, mask: source_mask }
    }

    /// [`Self::forward`] with the caption's part already computed by [`Self::caption`] for the
    /// same batch size as `x`.
    ///
    /// A 16-bit network whose result holds a NaN or an infinity runs the call again with its
    /// weights widened to f32 (counted in [`Self::f32_reruns`]).
    pub fn forward_with(&self, x: Tensor<B, 4>, t: Tensor<B, 1>, caption: &Caption<B>, guidance: Option<Tensor<B, 1>>) -> Tensor<B, 4> {
        if self.precision == Precision::F32 {
            return self.velocity(x, t, caption, guidance);
        }
        let v = self.velocity(x.clone(), t.clone(), caption, guidance.clone());
        if all_finite(&v) {
            return v;
        }
        self.reruns.add();
        let wide = self.clone().with_precision(Precision::F32);
        let caption = wide.caption(caption.text.clone(), caption.mask.clone());
        wide.velocity(x, t, &caption, guidance)
    }

    /// [`Self::forward_with`] in the network's precision, f32 in and out.
    fn velocity(&self, x: Tensor<B, 4>, t: Tensor<B, 1>, caption: &Caption<B>, guidance: Option<Tensor<B, 1>>) -> Tensor<B, 4> {
        let cfg = &self.config;
        let [b, c, h, w] = x.dims();
        let d = cfg.hidden();
        let n = h * w;
        let dt: DType = self.precision.dtype().into();

        let tokens = to_dtype(x, dt).reshape([b, c, n]).swap_dims(1, 2); // [B, N, C], row-major over the grid
        let mut hs = lin(&self.patch_embed, tokens); // [B, N, D]
        if let Some(scale) = cfg.interpolation_scale {
            hs = hs + to_dtype(sincos_position_embedding::<B>(d, h, w, cfg.sample_size, scale, &self.device()), dt);
        }
        let (m, e) = self.time_embed.forward(t, guidance); // [B, 6D], [B, D]

        for (block, (k, v)) in self.transformer_blocks.iter().zip(&caption.keys_values) {
            hs = block.forward(hs, m.clone(), (k, v), &caption.bias, (h, w));
        }

        // The output norm is modulated by `e` itself, not by the projected `m`.
        let mods = self.scale_shift_table.val().unsqueeze_dim::<3>(0) + e.unsqueeze_dim::<3>(1); // [B, 2, D]
        let shift = mods.clone().slice([0..b, 0..1, 0..d]);
        let scale = mods.slice([0..b, 1..2, 0..d]);
        let hs = norm_modulate(hs, shift, scale, cfg.norm_eps);
        let out = as_f32(lin(&self.proj_out, hs)); // [B, N, C]
        out.swap_dims(1, 2).reshape([b, cfg.out_channels(), h, w])
    }
}

/// GELU with the tanh approximation (`gelu_pytorch_tanh`), which the caption projection uses:
/// the exact GELU differs by 4e-4 on the goldens, more than their tolerance.
pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let cube = x.clone() * x.clone() * x.clone();
    let inner = (x.clone() + cube.mul_scalar(0.044715)).mul_scalar(c);
    x.clone().mul_scalar(0.5) * (inner.tanh() + 1.0)
}

/// The 2K / 4K models' 2-D sin-cos position embedding `[1, h·w, D]`, computed in f64 and added
/// in f32: token (i, j) sits at p_w = j·base/(w·s), p_h = i·base/(h·s), and its vector is
/// [sin(p_w ω), cos(p_w ω), sin(p_h ω), cos(p_h ω)] with ω_k = 10000^(−k/(D/4)) — the w
/// coordinate first.
pub fn sincos_position_embedding<B: Backend>(d: usize, h: usize, w: usize, base: usize, scale: f64, device: &B::Device) -> Tensor<B, 3> {
    let q = d / 4;
    let omega: Vec<f64> = (0..q).map(|k| 1.0 / 10000f64.powf(k as f64 / q as f64)).collect();
    let mut out = vec![0.0f32; h * w * d];
    for i in 0..h {
        for j in 0..w {
            let pw = j as f64 / (w as f64 / base as f64) / scale;
            let ph = i as f64 / (h as f64 / base as f64) / scale;
            let row = &mut out[(i * w + j) * d..(i * w + j + 1) * d];
            for (k, om) in omega.iter().enumerate() {
                row[k] = (pw * om).sin() as f32;
                row[q + k] = (pw * om).cos() as f32;
                row[2 * q + k] = (ph * om).sin() as f32;
                row[3 * q + k] = (ph * om).cos() as f32;
            }
        }
    }
    Tensor::from_data(TensorData::new(out, [1, h * w, d]), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::Distribution;

    fn rnd<const D: usize>(shape: [usize; D], r: f64) -> Tensor<Flex, D> {
        Tensor::random(shape, Distribution::Uniform(-r, r), &Default::default())
    }

    fn max_err<const D: usize>(a: Tensor<Flex, D>, b: Tensor<Flex, D>) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b).abs().max().into_scalar()
    }

    // Each CPU kernel against the burn ops it replaces, on the CPU backend itself, at odd
    // sizes: two images, a token count that is not a multiple of the kernels' blocks.

    #[test]
    fn norm_modulate_kernel_agrees_with_burn_ops() {
        let (x, shift, scale) = (rnd([2, 37, 72], 3.0), rnd([2, 1, 72], 1.0), rnd([2, 1, 72], 1.0));
        let fast = kernels::norm_modulate(&x, &shift, &scale, 1e-6).expect("the CPU backend must take the fast path");
        let err = max_err(fast, norm_modulate_ops(x, shift, scale, 1e-6));
        assert!(err < 1e-5, "max error {err}");
    }

    #[test]
    fn add_gated_kernel_agrees_with_burn_ops() {
        let (x, g, y) = (rnd([2, 37, 72], 3.0), rnd([2, 1, 72], 1.0), rnd([2, 37, 72], 1.0));
        let fast = kernels::add_gated(&x, Some(&g), &y).expect("the CPU backend must take the fast path");
        assert!(max_err(fast, x.clone() + g * y.clone()) < 1e-6);
        let fast = kernels::add_gated(&x, None, &y).expect("the CPU backend must take the fast path");
        assert!(max_err(fast, x + y) < 1e-6);
    }

    #[test]
    fn depthwise_glu_kernel_agrees_with_burn_ops() {
        for [h, w] in [[5, 7], [1, 1], [3, 1]] {
            let (y, taps, bias) = (rnd([2, h, w, 40], 2.0), rnd([3, 3, 40], 1.0), rnd([40], 1.0));
            let fast = kernels::depthwise3x3_glu(&y, &taps, &bias).expect("the CPU backend must take the fast path");
            let err = max_err(fast, depthwise3x3_glu_ops(y, taps, bias));
            assert!(err < 1e-5, "{h}×{w}: max error {err}");
        }
    }

    #[test]
    fn linear_silu_kernel_agrees_with_burn_ops() {
        let (x, w, b) = (rnd([2, 37, 24], 1.0), rnd([24, 150], 1.0), rnd([150], 1.0));
        let fast = kernels::linear_silu(&x, &w, Some(&b)).expect("the CPU backend must take the fast path");
        let reference = silu(x.matmul(w.unsqueeze::<3>()) + b.reshape([1, 1, 150]));
        let err = max_err(fast, reference);
        assert!(err < 1e-5, "max error {err}");
    }

    #[test]
    fn linear_attention_kernel_agrees_with_burn_ops() {
        // Three heads of 8; q and k of both signs, so that the ReLU matters.
        let (q, k, v) = (rnd([2, 70, 24], 1.0), rnd([2, 70, 24], 1.0), rnd([2, 70, 24], 1.0));
        let fast = kernels::relu_linear_attention(&q, &k, &v, 3).expect("the CPU backend must take the fast path");
        let err = max_err(fast, linear_attention_ops(q, k, v, 3));
        assert!(err < 1e-5, "max error {err}");
    }

    #[test]
    fn cross_attention_kernel_agrees_with_burn_ops() {
        // 150 queries (two full blocks of 64 and a short one), 13 keys, the last 4 of the
        // second image masked as the model masks padding.
        let (q, k, v) = (rnd([2, 150, 24], 2.0), rnd([2, 13, 24], 2.0), rnd([2, 13, 24], 1.0));
        let mut mask = vec![1.0f32; 26];
        mask[22..].fill(0.0);
        let mask = Tensor::<Flex, 2>::from_data(TensorData::new(mask, [2, 13]), &Default::default());
        let bias = (mask.neg() + 1.0).mul_scalar(-10000.0).reshape([2, 1, 1, 13]);
        let fast = kernels::cross_attention(&q, &k, &v, &bias, 3).expect("the CPU backend must take the fast path");
        let err = max_err(fast, cross_attention_ops(q, k, v, bias, 3));
        assert!(err < 1e-5, "max error {err}");
    }
}
