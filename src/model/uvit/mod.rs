//! The class-conditional UViT of the DC-AE diffusion zoo (efficientvit
//! `diffusioncore/models/uvit.py`): a plain ViT over latent patches with long skip connections
//! between the first and second half of its blocks, and two extra tokens in front, the class
//! embedding and the raw sinusoidal time embedding.
//!
//! Parameters come from a [`WeightSource`] under the original key names (no prefix; the
//! combined checkpoints store them under `diffusion_model.`). PyTorch Linear weights are
//! `[out, in]`; burn's `Linear` multiplies by `[in, out]`, so each is transposed on load.

use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::tensor::activation::softmax;
use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

pub mod family;
pub mod ode;
pub mod usit;

use super::layers::{contiguous, lin, lin_gelu, linear};
use crate::weights::WeightSource;

pub use family::UvitFamily;
pub use usit::UsitFamily;

/// `UViTConfig` fields that shape the network (the rest of the original config is training
/// and sampling plumbing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UvitConfig {
    /// Total blocks excluding the middle one: `depth/2` in-blocks, 1 mid-block, `depth/2` out-blocks.
    pub depth: usize,
    pub hidden_size: usize,
    pub num_heads: usize,
    /// MLP width = `int(hidden_size · mlp_ratio)`.
    pub mlp_ratio: f64,
    /// Latent channels.
    pub in_channels: usize,
    pub patch_size: usize,
    /// Latent side length (the latent is square): resolution / autoencoder factor.
    pub input_size: usize,
    /// Real classes; the label table has one more row, the unconditional ("null") id `num_classes`.
    pub num_classes: usize,
}

impl UvitConfig {
    /// UViT-S (12 / 512 / 8 heads), as registered for the f32c32 autoencoder.
    pub fn uvit_s(in_channels: usize, input_size: usize) -> Self {
        Self::sized(12, 512, 8, in_channels, input_size)
    }

    /// UViT-H (28 / 1152 / 16 heads).
    pub fn uvit_h(in_channels: usize, input_size: usize) -> Self {
        Self::sized(28, 1152, 16, in_channels, input_size)
    }

    /// UViT-2B (28 / 2048 / 32 heads).
    pub fn uvit_2b(in_channels: usize, input_size: usize) -> Self {
        Self::sized(28, 2048, 32, in_channels, input_size)
    }

    fn sized(depth: usize, hidden_size: usize, num_heads: usize, in_channels: usize, input_size: usize) -> Self {
        Self { depth, hidden_size, num_heads, mlp_ratio: 4.0, in_channels, patch_size: 1, input_size, num_classes: 1000 }
    }

    /// The class id that means "no class" (classifier-free guidance's unconditional branch).
    pub fn null_class(&self) -> usize {
        self.num_classes
    }

    pub fn grid(&self) -> usize {
        self.input_size / self.patch_size
    }

    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }

    /// Label token + time token + patches.
    pub fn num_tokens(&self) -> usize {
        EXTRAS + self.num_patches()
    }

    /// `int(dim · mlp_ratio)`, truncated like Python's `int`.
    pub fn mlp_hidden(&self) -> usize {
        (self.hidden_size as f64 * self.mlp_ratio) as usize
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads.max(1)
    }

    /// Latent shape for a batch: `[batch, in_channels, input_size, input_size]`.
    pub fn latent_shape(&self, batch: usize) -> [usize; 4] {
        [batch, self.in_channels, self.input_size, self.input_size]
    }

    pub fn validate(&self) -> Result<(), String> {
        let c = self;
        let positive = [
            ("depth", c.depth),
            ("hidden_size", c.hidden_size),
            ("num_heads", c.num_heads),
            ("in_channels", c.in_channels),
            ("patch_size", c.patch_size),
            ("input_size", c.input_size),
            ("num_classes", c.num_classes),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("uvit.{name} must be positive"));
        }
        if !c.depth.is_multiple_of(2) {
            return Err(format!("uvit.depth must be even (depth/2 in- and out-blocks), got {}", c.depth));
        }
        if !c.hidden_size.is_multiple_of(c.num_heads) {
            return Err(format!("uvit.hidden_size {} is not a multiple of num_heads {}", c.hidden_size, c.num_heads));
        }
        if !c.input_size.is_multiple_of(c.patch_size) {
            return Err(format!("uvit.input_size {} is not a multiple of patch_size {}", c.input_size, c.patch_size));
        }
        if !(c.mlp_ratio.is_finite() && c.mlp_hidden() > 0) {
            return Err(format!("uvit.mlp_ratio {} gives no MLP width", c.mlp_ratio));
        }
        Ok(())
    }

    /// Parameter count (for checks against published sizes; UViT-H at 8×8×128 has 500,868,992).
    pub fn num_params(&self) -> usize {
        let (d, m, p) = (self.hidden_size, self.mlp_hidden(), self.patch_size);
        let block = 2 * 2 * d + 3 * d * d + d * d + d + d * m + m + m * d + d;
        let blocks = (self.depth + 1) * block + (self.depth / 2) * (2 * d * d + d);
        self.num_tokens() * d
            + d * self.in_channels * p * p
            + d
            + (self.num_classes + 1) * d
            + blocks
            + 2 * d
            + d * p * p * self.in_channels
            + p * p * self.in_channels
    }
}

/// Tokens in front of the patches: the class label and the time step.
const EXTRAS: usize = 2;

/// One published class-conditional diffusion model of the efficientvit zoo (UViT, USiT or
/// DiT on a DC-AE): what its family needs to build it without its files.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RegisteredUvit {
    /// Hub name under `mit-han-lab/`.
    pub name: &'static str,
    /// The DC-AE it was trained on (a name in [`crate::model::registry::PRETRAINED`]).
    pub autoencoder: &'static str,
    /// `latent_for_diffusion = encode(x) · scaling_factor`.
    pub scaling_factor: f32,
    pub net: ClassNet,
    pub latent_channels: usize,
    /// Latent side at the training resolution (512 px / autoencoder factor).
    pub input_size: usize,
}

/// The zoo's class-conditional networks, each with the sampler the original evaluates it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassNet {
    /// UViT + DPM-Solver.
    Uvit(UvitSize),
    /// UViT network + SiT transport, ODE sampler.
    Usit(UvitSize),
    /// DiT-XL/1 + ADM.
    DitXl,
}

impl RegisteredUvit {
    /// The family's config at latent side `input_size`.
    pub fn denoiser_config(&self, input_size: usize) -> crate::model::diffusion::DenoiserConfig {
        use crate::model::diffusion::DenoiserConfig;
        let c = self.latent_channels;
        let uvit = |size: UvitSize| match size {
            UvitSize::S => UvitConfig::uvit_s(c, input_size),
            UvitSize::H => UvitConfig::uvit_h(c, input_size),
            UvitSize::TwoB => UvitConfig::uvit_2b(c, input_size),
        };
        match self.net {
            ClassNet::Uvit(size) => DenoiserConfig::Uvit { uvit: uvit(size), sampler: crate::sampler::SamplerConfig::default() },
            ClassNet::Usit(size) => DenoiserConfig::Usit { uvit: uvit(size), sampler: usit::OdeConfig::default() },
            ClassNet::DitXl => DenoiserConfig::Dit { dit: crate::model::dit::DitConfig::dit_xl(c, input_size), sampler: crate::model::dit::AdmConfig::default() },
        }
    }

    /// The UViT network's config at the training resolution (UViT and USiT).
    pub fn uvit_config(&self) -> Option<UvitConfig> {
        match self.denoiser_config(self.input_size) {
            crate::model::diffusion::DenoiserConfig::Uvit { uvit, .. } | crate::model::diffusion::DenoiserConfig::Usit { uvit, .. } => Some(uvit),
            crate::model::diffusion::DenoiserConfig::Dit { .. } => None,
        }
    }

    /// "UViT", "USiT" or "DiT".
    pub fn family(&self) -> &'static str {
        match self.net {
            ClassNet::Uvit(_) => "UViT",
            ClassNet::Usit(_) => "USiT",
            ClassNet::DitXl => "DiT",
        }
    }
}

/// The three UViT sizes of the zoo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UvitSize {
    /// 12 blocks, 512 wide, 8 heads.
    S,
    /// 28 blocks, 1152 wide, 16 heads.
    H,
    /// 28 blocks, 2048 wide, 32 heads.
    TwoB,
}

/// The registered UViT model called `name` (with or without the `mit-han-lab/` owner).
pub fn registered_uvit(name: &str) -> Option<&'static RegisteredUvit> {
    let base = name.trim_start_matches("mit-han-lab/");
    crate::model::registry::uvit_models().find(|m| m.name == base)
}

/// `nn.LayerNorm(d)`: affine, eps 1e-5 (burn's default, as in PyTorch).
fn layer_norm<B: Backend, W: WeightSource<B>>(w: &mut W, key: &str, d: usize) -> LayerNorm<B> {
    let mut norm = LayerNormConfig::new(d).with_epsilon(1e-5).init(&w.device());
    norm.gamma = Param::from_tensor(w.norm_scale(&format!("{key}.weight"), d));
    norm.beta = Some(Param::from_tensor(w.tensor(&format!("{key}.bias"), [d])));
    norm
}

/// Multi-head self-attention; `qkv` has no bias and its rows are `[q(all heads) | k | v]`
/// (einops `(K H D)`), unlike LiteMLA's per-head interleave.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub qkv: Linear<B>,
    pub proj: Linear<B>,
    pub num_heads: usize,
}

impl<B: Backend> Attention<B> {
    /// `qkv_bias`: the UViT's qkv has none, timm's `Attention` in DiT has one.
    pub(crate) fn load<W: WeightSource<B>>(w: &mut W, key: &str, d: usize, num_heads: usize, qkv_bias: bool) -> Self {
        Self {
            qkv: linear(w, &format!("{key}.qkv"), d, 3 * d, qkv_bias),
            proj: linear(w, &format!("{key}.proj"), d, d, true),
            num_heads,
        }
    }

    /// Softmax attention written out with matmuls. The model is f32 end to end, which is what
    /// the reference forces here (`.float()` before SDPA).
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, l, d] = x.dims();
        let h = self.num_heads;
        let hd = d / h;
        let qkv = lin(&self.qkv, x); // [B, L, 3D] = [B, L, (K H hd)]
        let heads = |k: usize| {
            qkv.clone()
                .narrow(2, k * d, d) // [B, L, D]
                .reshape([b, l, h, hd])
                .swap_dims(1, 2) // [B, H, L, hd]
        };
        let (q, k, v) = (heads(0), heads(1), heads(2));
        let scale = (hd as f64).powf(-0.5);
        let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale); // [B, H, L, L]
        let attn = softmax(scores, 3);
        let out = attn.matmul(v) // [B, H, L, hd]
            .swap_dims(1, 2) // [B, L, H, hd]
            .reshape([b, l, d]);
        lin(&self.proj, out) // [B, L, D]
    }
}

/// timm `Mlp`: fc1 → exact (erf) GELU → fc2.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        lin(&self.fc2, lin_gelu(&self.fc1, x))
    }
}

/// Pre-norm transformer block. Out-blocks first fuse the long skip:
/// `x = skip_linear(cat([x, skip], -1))`, then attention and MLP as usual.
#[derive(Module, Debug)]
pub struct UvitBlock<B: Backend> {
    pub norm1: LayerNorm<B>,
    pub attn: Attention<B>,
    pub norm2: LayerNorm<B>,
    pub mlp: Mlp<B>,
    pub skip_linear: Option<Linear<B>>,
}

impl<B: Backend> UvitBlock<B> {
    fn load<W: WeightSource<B>>(w: &mut W, key: &str, cfg: &UvitConfig, skip: bool) -> Self {
        let (d, m) = (cfg.hidden_size, cfg.mlp_hidden());
        Self {
            norm1: layer_norm(w, &format!("{key}.norm1"), d),
            attn: Attention::load(w, &format!("{key}.attn"), d, cfg.num_heads, false),
            norm2: layer_norm(w, &format!("{key}.norm2"), d),
            mlp: Mlp { fc1: linear(w, &format!("{key}.mlp.fc1"), d, m, true), fc2: linear(w, &format!("{key}.mlp.fc2"), m, d, true) },
            skip_linear: skip.then(|| linear(w, &format!("{key}.skip_linear"), 2 * d, d, true)),
        }
    }

    pub fn forward(&self, x: Tensor<B, 3>, skip: Option<Tensor<B, 3>>) -> Tensor<B, 3> {
        let x = match (&self.skip_linear, skip) {
            (Some(fuse), Some(skip)) => lin(fuse, Tensor::cat(vec![x, skip], 2)), // [B, T, 2D] → [B, T, D]
            _ => x,
        };
        let x = x.clone() + self.attn.forward(self.norm1.forward(x));
        x.clone() + self.mlp.forward(self.norm2.forward(x))
    }
}

/// The UViT noise predictor `ε̂(x_t, t, y)`.
#[derive(Module, Debug)]
pub struct Uvit<B: Backend> {
    /// `patch_embed.proj`, a stride-`p` `p×p` conv, applied as a Linear over `(C p1 p2)` patches.
    pub patch_embed: Linear<B>,
    /// `label_emb.embedding_table.weight`, `[num_classes + 1, D]`.
    pub label_table: Param<Tensor<B, 2>>,
    /// Learned `[1, 2 + patches, D]`, added to every token.
    pub pos_embed: Param<Tensor<B, 3>>,
    pub in_blocks: Vec<UvitBlock<B>>,
    pub mid_block: UvitBlock<B>,
    pub out_blocks: Vec<UvitBlock<B>>,
    pub norm: LayerNorm<B>,
    /// `[D] → [p·p·C]` per patch token, in `(p1 p2 C)` order.
    pub decoder_pred: Linear<B>,
    pub config: UvitConfig,
}

impl<B: Backend> Uvit<B> {
    /// Builds the network, asking `w` for every parameter by its original key. `cfg` should
    /// have passed [`UvitConfig::validate`].
    pub fn load<W: WeightSource<B>>(w: &mut W, cfg: &UvitConfig) -> Self {
        let (d, c, p) = (cfg.hidden_size, cfg.in_channels, cfg.patch_size);
        let half = cfg.depth / 2;
        // PatchEmbed's conv weight [D, C, p, p] is a Linear over flattened (C p1 p2) patches.
        let proj = w.tensor("patch_embed.proj.weight", [d, c, p, p]);
        let [o, i, kh, kw] = proj.dims(); // (read back so that placeholder sources work too)
        let proj = contiguous(proj.reshape([o, i * kh * kw]).transpose());
        let patch_embed = Linear {
            weight: Param::from_tensor(proj),
            bias: Some(Param::from_tensor(w.tensor("patch_embed.proj.bias", [d]))),
        };
        let label_table = Param::from_tensor(w.tensor("label_emb.embedding_table.weight", [cfg.num_classes + 1, d]));
        let pos_embed = Param::from_tensor(w.tensor("pos_embed", [1, cfg.num_tokens(), d]));
        let in_blocks = (0..half).map(|i| UvitBlock::load(w, &format!("in_blocks.{i}"), cfg, false)).collect();
        let mid_block = UvitBlock::load(w, "mid_block", cfg, false);
        let out_blocks = (0..half).map(|i| UvitBlock::load(w, &format!("out_blocks.{i}"), cfg, true)).collect();
        let norm = layer_norm(w, "norm", d);
        let decoder_pred = linear(w, "decoder_pred", d, p * p * c, true);
        Self { patch_embed, label_table, pos_embed, in_blocks, mid_block, out_blocks, norm, decoder_pred, config: cfg.clone() }
    }

    pub fn device(&self) -> B::Device {
        self.pos_embed.val().device()
    }

    /// `forward_without_cfg(x, t, y)`: the noise prediction for latents `x` `[B, C, S, S]` at
    /// model times `t` `[B]` (continuous, already ×1000, e.g. 1.0 … 999.0) with class ids `y`
    /// `[B]` (`num_classes` = unconditional). Shapes must match the config.
    pub fn forward(&self, x: Tensor<B, 4>, t: Tensor<B, 1>, y: Tensor<B, 1, Int>) -> Tensor<B, 4> {
        let cfg = &self.config;
        let [_, c, _, _] = x.dims();
        let (p, g, d) = (cfg.patch_size, cfg.grid(), cfg.hidden_size);

        let tokens = self.embed_patches(x); // [B, L, D]
        let time = timestep_embedding(t, d).unsqueeze_dim::<3>(1); // [B, 1, D]
        let label = self.label_table.val().select(0, y).unsqueeze_dim::<3>(1); // [B, 1, D]
        let mut h = Tensor::cat(vec![label, time, tokens], 1) + self.pos_embed.val(); // [B, 2+L, D]

        // Long skips pair in-block i with out-block depth/2−1−i (last in, first out).
        let mut skips = Vec::with_capacity(self.in_blocks.len());
        for block in &self.in_blocks {
            h = block.forward(h, None);
            skips.push(h.clone());
        }
        h = self.mid_block.forward(h, None);
        for block in &self.out_blocks {
            h = block.forward(h, skips.pop());
        }

        let out = lin(&self.decoder_pred, self.norm.forward(h)); // [B, 2+L, p·p·C]
        unpatchify(out.narrow(1, EXTRAS, g * g), c, p) // [B, C, S, S]
    }

    /// `patch_embed`: `[B, C, S, S]` → tokens `[B, L, D]`, row-major over the patch grid
    /// (the conv's `flatten(2).transpose(1, 2)`).
    pub fn embed_patches(&self, x: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, c, h, w] = x.dims();
        let p = self.config.patch_size;
        let (gh, gw) = (h / p, w / p);
        let patches = x
            .reshape([b, c, gh, p, gw, p]) // [B, C, gh, p1, gw, p2]
            .permute([0, 2, 4, 1, 3, 5]) // [B, gh, gw, C, p1, p2]
            .reshape([b, gh * gw, c * p * p]); // [B, L, (C p1 p2)]
        lin(&self.patch_embed, patches)
    }
}

/// einops `B (h w) (p1 p2 C) -> B C (h p1) (w p2)` for a square patch grid: `[B, L, p·p·C]` →
/// `[B, C, √L·p, √L·p]`.
pub fn unpatchify<B: Backend>(x: Tensor<B, 3>, channels: usize, patch_size: usize) -> Tensor<B, 4> {
    let [b, l, _] = x.dims();
    let (c, p) = (channels, patch_size);
    let g = (1..=l).find(|g| g * g >= l).unwrap_or(1);
    x.reshape([b, g, g, p, p, c]) // [B, gh, gw, p1, p2, C]
        .permute([0, 5, 1, 3, 2, 4]) // [B, C, gh, p1, gw, p2]
        .reshape([b, c, g * p, g * p])
}

/// The sinusoidal time token, `cat([cos(t·f), sin(t·f)])` with `f_k = exp(−ln(10000)·k/half)`:
/// cosine first, no MLP after it (`mlp_time_embed=False`). The frequencies are computed in f32
/// as the reference does; an odd `dim` gets a zero last column.
pub fn timestep_embedding<B: Backend>(t: Tensor<B, 1>, dim: usize) -> Tensor<B, 2> {
    let half = dim / 2;
    let [b] = t.dims();
    let device = t.device();
    let neg_ln = -(10000f64.ln()) as f32;
    let freqs: Vec<f32> = (0..half).map(|k| (neg_ln * k as f32 / half as f32).exp()).collect();
    let freqs = Tensor::<B, 1>::from_data(TensorData::new(freqs, [half]), &device);
    let args = t.unsqueeze_dim::<2>(1) * freqs.unsqueeze_dim::<2>(0); // [B, half]
    let mut parts = vec![args.clone().cos(), args.sin()];
    if dim % 2 == 1 {
        parts.push(Tensor::zeros([b, 1], &device));
    }
    Tensor::cat(parts, 1) // [B, dim]
}
