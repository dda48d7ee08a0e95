//! DiT, the class-conditional transformer of the DC-AE zoo's `dc-ae-f32c32-in-1.0-dit-xl-in-512px`
//! (efficientvit `diffusioncore/models/dit.py` at commit de7d773, itself modified from
//! facebookresearch/DiT), and its sampler, ADM's Gaussian diffusion ([`adm`]).
//!
//! This folder is the family's room: the network here, the sampler in [`adm`], the engine
//! adapter ([`DitFamily`], a [`crate::model::diffusion::ClassDenoiser`]) in [`family`]. The
//! registry rows live in [`crate::model::registry`] with every other published model.
//!
//! Network: patch tokens plus a *fixed* 2-D sin-cos position table (stored in the checkpoint
//! as `pos_embed`), a condition vector `c = t_embed(t) + y_embed(y)`, and blocks conditioned
//! by adaLN-Zero: each block's LayerNorms have no affine of their own; `c` gives each a shift
//! and a scale and gates the residual branches. With `learn_sigma` the output has twice the
//! latent channels: the noise prediction, then the variance interpolation values.
//!
//! Parameters come from a [`WeightSource`] under the original key names (the combined
//! checkpoints store them under `diffusion_model.`).

pub mod adm;
pub mod family;

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::silu;
use burn::tensor::{backend::Backend, Int, Tensor};
use serde::{Deserialize, Serialize};

use super::cpu_kernels;
use super::layers::{contiguous, lin, lin_gelu_tanh, linear};
use super::uvit::{timestep_embedding, unpatchify, Attention};
use crate::weights::WeightSource;

pub use adm::{AdmConfig, AdmSchedule};
pub use family::DitFamily;

/// `DiTConfig` fields that shape the network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DitConfig {
    pub depth: usize,
    pub hidden_size: usize,
    pub num_heads: usize,
    /// MLP width = `int(hidden_size · mlp_ratio)`.
    pub mlp_ratio: f64,
    /// Latent channels.
    pub in_channels: usize,
    pub patch_size: usize,
    /// Latent side (the latent is square).
    pub input_size: usize,
    /// Real classes; the label table has one more row, the null id `num_classes`.
    pub num_classes: usize,
    /// The output also carries the variance interpolation values (`2·in_channels` channels).
    #[serde(default = "yes")]
    pub learn_sigma: bool,
}

fn yes() -> bool {
    true
}

/// Size of the sinusoid the timestep MLP starts from (`TimestepEmbedder`'s default).
pub const FREQUENCY_EMBEDDING_SIZE: usize = 256;

impl DitConfig {
    /// DiT-XL/1 as the zoo registers it (28 blocks, 1152 wide, 16 heads, patch 1).
    pub fn dit_xl(in_channels: usize, input_size: usize) -> Self {
        Self { depth: 28, hidden_size: 1152, num_heads: 16, mlp_ratio: 4.0, in_channels, patch_size: 1, input_size, num_classes: 1000, learn_sigma: true }
    }

    pub fn null_class(&self) -> usize {
        self.num_classes
    }

    pub fn grid(&self) -> usize {
        self.input_size / self.patch_size.max(1)
    }

    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }

    pub fn mlp_hidden(&self) -> usize {
        (self.hidden_size as f64 * self.mlp_ratio) as usize
    }

    pub fn out_channels(&self) -> usize {
        if self.learn_sigma { 2 * self.in_channels } else { self.in_channels }
    }

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
            return Err(format!("dit.{name} must be positive"));
        }
        let limits = [("depth", c.depth, 256), ("hidden_size", c.hidden_size, 16384), ("in_channels", c.in_channels, 4096), ("patch_size", c.patch_size, 64), ("input_size / patch_size", c.grid(), 512), ("num_classes", c.num_classes, 1 << 24)];
        if let Some((field, v, max)) = limits.iter().find(|(_, v, max)| v > max) {
            return Err(format!("dit.{field} = {v} is beyond any DiT (at most {max}); is the config.json damaged?"));
        }
        if !c.hidden_size.is_multiple_of(c.num_heads) {
            return Err(format!("dit.hidden_size {} is not a multiple of num_heads {}", c.hidden_size, c.num_heads));
        }
        // The sin-cos table splits the width into four quarters (h/w × sin/cos).
        if !c.hidden_size.is_multiple_of(4) {
            return Err(format!("dit.hidden_size {} is not a multiple of 4, which the 2-D sin-cos position table needs", c.hidden_size));
        }
        if !c.input_size.is_multiple_of(c.patch_size) {
            return Err(format!("dit.input_size {} is not a multiple of patch_size {}", c.input_size, c.patch_size));
        }
        if !(c.mlp_ratio.is_finite() && c.mlp_ratio <= 16.0 && c.mlp_hidden() > 0) {
            return Err(format!("dit.mlp_ratio {} gives no usable MLP width (0 < width, ratio ≤ 16)", c.mlp_ratio));
        }
        if c.num_params() > 1 << 33 {
            return Err(format!("the DiT has {} parameters, beyond any published model; is the config.json damaged?", c.num_params()));
        }
        Ok(())
    }

    /// Parameter count, `pos_embed` included (DiT-XL/1 at 16×16×32: 675,184,960, of which
    /// 294,912 are the fixed position table; without it 674,890,048, the README's 674.89 M).
    pub fn num_params(&self) -> usize {
        let (d, m, p, c) = (self.hidden_size, self.mlp_hidden(), self.patch_size, self.in_channels);
        let block = (3 * d * d + 3 * d) + (d * d + d) + (d * m + m) + (m * d + d) + (6 * d * d + 6 * d);
        let final_layer = (2 * d * d + 2 * d) + (d * p * p * self.out_channels() + p * p * self.out_channels());
        let t_embedder = FREQUENCY_EMBEDDING_SIZE * d + d + d * d + d;
        (d * c * p * p + d) + t_embedder + (self.num_classes + 1) * d + self.num_patches() * d + self.depth * block + final_layer
    }
}

/// `LayerNorm(d, elementwise_affine=False, eps=1e-6)` over the last axis.
fn layer_norm_plain<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 3> {
    let mean = x.clone().mean_dim(2);
    let centred = x - mean;
    let var = centred.clone().square().mean_dim(2);
    centred / (var + LN_EPS as f64).sqrt()
}

const LN_EPS: f32 = 1e-6;

/// `modulate(norm(x), shift, scale)` = `LN(x)·(1 + scale) + shift`, with `shift` / `scale`
/// `[B, D]` broadcast over the tokens; one pass on the CPU backend.
fn norm_modulate<B: Backend>(x: Tensor<B, 3>, shift: Tensor<B, 2>, scale: Tensor<B, 2>) -> Tensor<B, 3> {
    if let Some(y) = cpu_kernels::dit::modulated_layer_norm(&x, &shift, &scale, LN_EPS) {
        return y;
    }
    layer_norm_plain(x) * (scale.unsqueeze_dim::<3>(1) + 1.0) + shift.unsqueeze_dim::<3>(1)
}

/// `x + gate·h`, `gate` `[B, D]` broadcast over the tokens.
fn gated_add<B: Backend>(x: Tensor<B, 3>, gate: Tensor<B, 2>, h: Tensor<B, 3>) -> Tensor<B, 3> {
    if let Some(y) = cpu_kernels::dit::gated_add(&x, &gate, &h) {
        return y;
    }
    x + gate.unsqueeze_dim::<3>(1) * h
}

/// The `[B, k·D]` output of an adaLN modulation split into its `k` chunks of `[B, D]`.
fn chunks<B: Backend>(m: Tensor<B, 2>, k: usize) -> Vec<Tensor<B, 2>> {
    let d = m.dims()[1] / k;
    (0..k).map(|i| m.clone().narrow(1, i * d, d)).collect()
}

/// timm `Mlp` with tanh-approximated GELU (fc1 → GELU is one pass: [`lin_gelu_tanh`]).
#[derive(Module, Debug)]
pub struct DitMlp<B: Backend> {
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
}

/// A DiT block with adaLN-Zero conditioning (`post_norm=False`, the only form the zoo uses).
#[derive(Module, Debug)]
pub struct DitBlock<B: Backend> {
    pub attn: Attention<B>,
    pub mlp: DitMlp<B>,
    /// `adaLN_modulation.1`: `silu(c)` → shift/scale/gate for attention, then for the MLP.
    pub ada_ln: Linear<B>,
}

impl<B: Backend> DitBlock<B> {
    fn load<W: WeightSource<B>>(w: &mut W, key: &str, cfg: &DitConfig) -> Self {
        let (d, m) = (cfg.hidden_size, cfg.mlp_hidden());
        Self {
            attn: Attention::load(w, &format!("{key}.attn"), d, cfg.num_heads, true),
            mlp: DitMlp { fc1: linear(w, &format!("{key}.mlp.fc1"), d, m, true), fc2: linear(w, &format!("{key}.mlp.fc2"), m, d, true) },
            ada_ln: linear(w, &format!("{key}.adaLN_modulation.1"), d, 6 * d, true),
        }
    }

    /// `x` `[B, T, D]`, `c_act = silu(c)` `[B, D]`.
    pub fn forward(&self, x: Tensor<B, 3>, c_act: Tensor<B, 2>) -> Tensor<B, 3> {
        let m = chunks(lin(&self.ada_ln, c_act), 6);
        let (shift_msa, scale_msa, gate_msa) = (m[0].clone(), m[1].clone(), m[2].clone());
        let (shift_mlp, scale_mlp, gate_mlp) = (m[3].clone(), m[4].clone(), m[5].clone());
        let h = self.attn.forward(norm_modulate(x.clone(), shift_msa, scale_msa));
        let x = gated_add(x, gate_msa, h);
        let h = norm_modulate(x.clone(), shift_mlp, scale_mlp);
        let h = lin(&self.mlp.fc2, lin_gelu_tanh(&self.mlp.fc1, h));
        gated_add(x, gate_mlp, h)
    }
}

/// The DiT noise (and variance) predictor.
#[derive(Module, Debug)]
pub struct Dit<B: Backend> {
    /// `x_embedder.proj`, a stride-`p` conv, as a Linear over `(C p1 p2)` patches.
    pub x_embedder: Linear<B>,
    /// `t_embedder.mlp.{0,2}`: 256-frequency sinusoid → Linear → SiLU → Linear.
    pub t_mlp0: Linear<B>,
    pub t_mlp2: Linear<B>,
    /// `y_embedder.embedding_table.weight`, `[num_classes + 1, D]`.
    pub label_table: Param<Tensor<B, 2>>,
    /// The fixed 2-D sin-cos table `[1, patches, D]`, as stored.
    pub pos_embed: Param<Tensor<B, 3>>,
    pub blocks: Vec<DitBlock<B>>,
    /// `final_layer.adaLN_modulation.1` (shift, scale) and `final_layer.linear`.
    pub final_ada_ln: Linear<B>,
    pub final_linear: Linear<B>,
    pub config: DitConfig,
}

impl<B: Backend> Dit<B> {
    /// Builds the network, asking `w` for every parameter by its original key. `cfg` should have
    /// passed [`DitConfig::validate`].
    pub fn load<W: WeightSource<B>>(w: &mut W, cfg: &DitConfig) -> Self {
        let (d, c, p) = (cfg.hidden_size, cfg.in_channels, cfg.patch_size);
        let proj = w.tensor("x_embedder.proj.weight", [d, c, p, p]);
        let [o, i, kh, kw] = proj.dims();
        let x_embedder = Linear {
            weight: Param::from_tensor(contiguous(proj.reshape([o, i * kh * kw]).transpose())),
            bias: Some(Param::from_tensor(w.tensor("x_embedder.proj.bias", [d]))),
        };
        let t_mlp0 = linear(w, "t_embedder.mlp.0", FREQUENCY_EMBEDDING_SIZE, d, true);
        let t_mlp2 = linear(w, "t_embedder.mlp.2", d, d, true);
        let label_table = Param::from_tensor(w.tensor("y_embedder.embedding_table.weight", [cfg.num_classes + 1, d]));
        let pos_embed = Param::from_tensor(w.tensor("pos_embed", [1, cfg.num_patches(), d]));
        let blocks = (0..cfg.depth).map(|i| DitBlock::load(w, &format!("blocks.{i}"), cfg)).collect();
        let final_ada_ln = linear(w, "final_layer.adaLN_modulation.1", d, 2 * d, true);
        let final_linear = linear(w, "final_layer.linear", d, p * p * cfg.out_channels(), true);
        Self { x_embedder, t_mlp0, t_mlp2, label_table, pos_embed, blocks, final_ada_ln, final_linear, config: cfg.clone() }
    }

    pub fn device(&self) -> B::Device {
        self.pos_embed.val().device()
    }

    /// `forward_without_cfg(x, t, y)`: latents `[B, C, S, S]`, the diffusion step `t` `[B]`
    /// (the original 0…999 index, as a float) and class ids `y` `[B]` (`num_classes` =
    /// unconditional) → `[B, out_channels, S, S]`: the noise prediction, then (with
    /// `learn_sigma`) the variance values in [−1, 1]-ish.
    pub fn forward(&self, x: Tensor<B, 4>, t: Tensor<B, 1>, y: Tensor<B, 1, Int>) -> Tensor<B, 4> {
        let cfg = &self.config;
        let [b, c, h, w] = x.dims();
        let p = cfg.patch_size;
        let (gh, gw) = (h / p, w / p);
        let patches = x
            .reshape([b, c, gh, p, gw, p]) // [B, C, gh, p1, gw, p2]
            .permute([0, 2, 4, 1, 3, 5]) // [B, gh, gw, C, p1, p2]
            .reshape([b, gh * gw, c * p * p]); // [B, T, (C p1 p2)]
        let mut x = lin(&self.x_embedder, patches) + self.pos_embed.val(); // [B, T, D]

        let t_freq = timestep_embedding(t, FREQUENCY_EMBEDDING_SIZE); // [B, 256], cos first
        let t_emb = lin(&self.t_mlp2, silu(lin(&self.t_mlp0, t_freq))); // [B, D]
        let y_emb = self.label_table.val().select(0, y); // [B, D]
        // Every adaLN starts with SiLU(c): computed once for all blocks.
        let c_act = silu(t_emb + y_emb); // [B, D]

        for block in &self.blocks {
            x = block.forward(x, c_act.clone());
        }
        let m = chunks(lin(&self.final_ada_ln, c_act), 2);
        let x = norm_modulate(x, m[0].clone(), m[1].clone());
        let x = lin(&self.final_linear, x); // [B, T, p·p·out]
        unpatchify(x, cfg.out_channels(), p) // [B, out, S, S]
    }
}
