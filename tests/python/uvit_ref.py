"""PyTorch reference of the DC-AE class-conditional UViT and its DPM-Solver sampler.

Written from the project spec (shared/docs/dcae-arch.md, sections 4.2 and 4.3); it is used
to cross-check the Rust port against the golden files and as the PyTorch side of the
UViT benchmarks (bench_torch.py --task forward|generate).

Parameter names match the original checkpoint keys (without the `diffusion_model.` prefix),
so `UViT.load_state_dict` accepts a stripped checkpoint directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


# ----------------------------------------------------------------------------------------
# Network
# ----------------------------------------------------------------------------------------


@dataclass
class UViTConfig:
    depth: int = 28
    hidden_size: int = 1152
    num_heads: int = 16
    mlp_ratio: float = 4.0
    in_channels: int = 128
    patch_size: int = 1
    input_size: int = 8
    num_classes: int = 1000

    @property
    def null_class(self) -> int:
        return self.num_classes

    @classmethod
    def uvit_h(cls) -> "UViTConfig":
        """dc-ae-f64c128-in-1.0-uvit-h-in-512px: depth 28, hidden 1152, 16 heads, 8x8x128 latent."""
        return cls()

    @classmethod
    def from_dict(cls, d: dict) -> "UViTConfig":
        keys = cls.__dataclass_fields__.keys()
        return cls(**{k: d[k] for k in keys if k in d})


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Raw sinusoidal embedding of the (already x1000) continuous time, cos half first."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2 == 1:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, l, c = x.shape
        h = self.num_heads
        # Linear output columns are laid out (K, H, D): all q heads, then all k, then all v.
        qkv = self.qkv(x).reshape(b, l, 3, h, c // h).permute(2, 0, 3, 1, 4).float()
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, L, D)
        o = F.scaled_dot_product_attention(q, k, v)  # fp32, default scale 1/sqrt(D)
        o = o.transpose(1, 2).reshape(b, l, c)
        return self.proj(o)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact erf GELU
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, skip: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


class PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, h*w, dim), row-major tokens


class LabelEmbedder(nn.Module):
    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        # one extra row: the null / unconditional class id == num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(y)


class UViT(nn.Module):
    def __init__(self, cfg: UViTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        p = cfg.patch_size
        n_patches = (cfg.input_size // p) ** 2
        self.extras = 2  # [label, time]
        self.patch_embed = PatchEmbed(cfg.in_channels, d, p)
        self.label_emb = LabelEmbedder(cfg.num_classes, d)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.extras + n_patches, d))
        n_side = cfg.depth // 2
        self.in_blocks = nn.ModuleList(
            [Block(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(n_side)]
        )
        self.mid_block = Block(d, cfg.num_heads, cfg.mlp_ratio)
        self.out_blocks = nn.ModuleList(
            [Block(d, cfg.num_heads, cfg.mlp_ratio, skip=True) for _ in range(n_side)]
        )
        self.norm = nn.LayerNorm(d, eps=1e-5)
        self.decoder_pred = nn.Linear(d, p * p * cfg.in_channels)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        # "B (h w) (p1 p2 C) -> B C (h p1) (w p2)"
        b, n, _ = x.shape
        p = self.cfg.patch_size
        c = self.cfg.in_channels
        h = w = int(round(math.sqrt(n)))
        x = x.reshape(b, h, w, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, c, h * p, w * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """eps prediction; t is the continuous model time (already multiplied by 1000)."""
        tok = self.patch_embed(x)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        temb = timestep_embedding(t, self.cfg.hidden_size).to(tok.dtype)
        lab = self.label_emb(y)
        h = torch.cat([lab[:, None, :], temb[:, None, :], tok], dim=1) + self.pos_embed
        skips = []
        for blk in self.in_blocks:
            h = blk(h)
            skips.append(h)
        h = self.mid_block(h)
        for blk in self.out_blocks:
            h = blk(h, skips.pop())  # LIFO
        h = self.decoder_pred(self.norm(h))
        return self.unpatchify(h[:, self.extras :, :])


# ----------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------


@torch.no_grad()
def randomize_(model: UViT, seed: int = 0) -> UViT:
    """Random weights that keep activations in a sane range (no checkpoint needed):
    Linear/Conv std 1/sqrt(fan_in), biases std 0.1, LayerNorm 1 + 0.1 N / 0.1 N,
    pos_embed std 0.5, label table std 1."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name == "pos_embed":
            std, mean = 0.5, 0.0
        elif name.endswith("embedding_table.weight"):
            std, mean = 1.0, 0.0
        elif ".norm" in name or name.startswith("norm"):
            std, mean = 0.1, 1.0 if name.endswith("weight") else 0.0
        elif name.endswith("bias"):
            std, mean = 0.1, 0.0
        else:
            fan_in = p[0].numel()
            std, mean = 1.0 / math.sqrt(fan_in), 0.0
        p.normal_(mean, std, generator=g)
    return model


def load_uvit(path: str, cfg: UViTConfig, prefix: str = "diffusion_model.") -> UViT:
    """Build a UViT and load its weights (strict) from a safetensors file."""
    from safetensors.torch import load_file

    sd = load_file(path)
    own = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    model = UViT(cfg)
    model.load_state_dict(own, strict=True)
    return model.eval()


# ----------------------------------------------------------------------------------------
# Noise schedule (discrete VP, scaled-linear betas) and DPM-Solver (data prediction, "fast")
# ----------------------------------------------------------------------------------------


def interp_linear(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation through (xp, fp); xp increasing; outside the range the
    first / last segment is extended linearly."""
    k = xp.numel()
    idx = torch.searchsorted(xp, x.contiguous(), right=False)
    lo = (idx - 1).clamp(0, k - 2)
    x0, x1 = xp[lo], xp[lo + 1]
    y0, y1 = fp[lo], fp[lo + 1]
    return y0 + (x - x0) * (y1 - y0) / (x1 - x0)


class NoiseScheduleVP:
    def __init__(
        self,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        num_train_timesteps: int = 1000,
    ):
        betas = (
            torch.linspace(
                beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64
            )
            ** 2
        ).to(torch.float32)
        self.total_n = num_train_timesteps
        self.log_alpha_array = 0.5 * torch.cumsum(torch.log(1.0 - betas), dim=0)  # fp32
        self.t_array = torch.linspace(0.0, 1.0, num_train_timesteps + 1, dtype=torch.float32)[1:]
        self.T = 1.0
        # decreasing in t -> flip for the inverse lookup
        self._la_flip = torch.flip(self.log_alpha_array, [0])
        self._t_flip = torch.flip(self.t_array, [0])

    def marginal_log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        return interp_linear(t, self.t_array, self.log_alpha_array)

    def marginal_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.marginal_log_mean_coeff(t))

    def marginal_std(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(1.0 - torch.exp(2.0 * self.marginal_log_mean_coeff(t)))

    def marginal_lambda(self, t: torch.Tensor) -> torch.Tensor:
        la = self.marginal_log_mean_coeff(t)
        log_std = 0.5 * torch.log(1.0 - torch.exp(2.0 * la))
        return la - log_std

    def inverse_lambda(self, lamb: torch.Tensor) -> torch.Tensor:
        la = -0.5 * torch.logaddexp(torch.zeros_like(lamb), -2.0 * lamb)
        return interp_linear(la, self._la_flip, self._t_flip)


def fast_orders(steps: int, order: int = 3) -> list[int]:
    if order == 3:
        k = steps // 3 + 1
        if steps % 3 == 0:
            return [3] * (k - 2) + [2, 1]
        if steps % 3 == 1:
            return [3] * (k - 1) + [1]
        return [3] * (k - 1) + [2]
    if order == 2:
        k = steps // 2
        return [2] * k if steps % 2 == 0 else [2] * k + [1]
    return [1] * steps


class DPMSolver:
    """Single-step DPM-Solver in data-prediction mode ("fast" method, time-uniform grid)."""

    def __init__(self, eps_fn, ns: NoiseScheduleVP):
        self.eps_fn = eps_fn  # eps_fn(x, t_continuous[B]) -> eps
        self.ns = ns
        self.nfe = 0

    def data_pred(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        eps = self.eps_fn(x, t)
        a = self.ns.marginal_alpha(t)[:, None, None, None]
        s = self.ns.marginal_std(t)[:, None, None, None]
        return (x - s * eps) / a

    def update(self, x, s, t, order, r1=None, r2=None):
        ns = self.ns
        e = lambda v: v[:, None, None, None]  # noqa: E731
        lam_s, lam_t = ns.marginal_lambda(s), ns.marginal_lambda(t)
        h = lam_t - lam_s
        sigma_s, sigma_t = ns.marginal_std(s), ns.marginal_std(t)
        alpha_t = torch.exp(ns.marginal_log_mean_coeff(t))
        d0 = self.data_pred(x, s)
        if order == 1:
            phi_1 = torch.expm1(-h)
            return e(sigma_t / sigma_s) * x - e(alpha_t * phi_1) * d0
        s1 = ns.inverse_lambda(lam_s + r1 * h)
        sigma_s1 = ns.marginal_std(s1)
        alpha_s1 = torch.exp(ns.marginal_log_mean_coeff(s1))
        if order == 2:
            phi_11 = torch.expm1(-r1 * h)
            phi_1 = torch.expm1(-h)
            x_s1 = e(sigma_s1 / sigma_s) * x - e(alpha_s1 * phi_11) * d0
            d1 = self.data_pred(x_s1, s1)
            return (
                e(sigma_t / sigma_s) * x
                - e(alpha_t * phi_1) * d0
                - (0.5 / r1) * e(alpha_t * phi_1) * (d1 - d0)
            )
        if order == 3:
            s2 = ns.inverse_lambda(lam_s + r2 * h)
            sigma_s2 = ns.marginal_std(s2)
            alpha_s2 = torch.exp(ns.marginal_log_mean_coeff(s2))
            phi_11 = torch.expm1(-r1 * h)
            phi_12 = torch.expm1(-r2 * h)
            phi_1 = torch.expm1(-h)
            phi_22 = torch.expm1(-r2 * h) / (r2 * h) + 1.0
            phi_2 = phi_1 / h + 1.0
            x_s1 = e(sigma_s1 / sigma_s) * x - e(alpha_s1 * phi_11) * d0
            d1 = self.data_pred(x_s1, s1)
            x_s2 = (
                e(sigma_s2 / sigma_s) * x
                - e(alpha_s2 * phi_12) * d0
                + (r2 / r1) * e(alpha_s2 * phi_22) * (d1 - d0)
            )
            d2 = self.data_pred(x_s2, s2)
            return (
                e(sigma_t / sigma_s) * x
                - e(alpha_t * phi_1) * d0
                + (1.0 / r2) * e(alpha_t * phi_2) * (d2 - d0)
            )
        raise ValueError(f"unsupported order {order}")

    def sample(
        self,
        x: torch.Tensor,
        steps: int = 30,
        t_start: float = 1.0,
        t_end: float = 1e-3,
        order: int = 3,
        callback=None,
    ) -> torch.Tensor:
        ns = self.ns
        b = x.shape[0]
        timesteps = torch.linspace(t_start, t_end, steps + 1, dtype=torch.float32)
        lam = lambda i: ns.marginal_lambda(timesteps[i : i + 1])  # noqa: E731
        i = 0
        for o in fast_orders(steps, order):
            vec_s = torch.ones(b) * timesteps[i]
            vec_t = torch.ones(b) * timesteps[i + o]
            h = lam(i + o) - lam(i)
            r1 = (lam(i + 1) - lam(i)) / h if o >= 2 else None
            r2 = (lam(i + 2) - lam(i)) / h if o >= 3 else None
            x = self.update(x, vec_s, vec_t, o, r1, r2)
            i += o
            if callback is not None:
                callback(x)
        return x


def make_eps_fn(model: UViT, labels: torch.Tensor, cfg_scale: float, null_class: int):
    """eps(x, t_cont) with t fed to the network as t*1000; CFG in two separate passes."""
    null = torch.full_like(labels, null_class)

    def eps_fn(x: torch.Tensor, t_cont: torch.Tensor) -> torch.Tensor:
        t = t_cont * 1000.0
        eps_c = model(x, t, labels)
        if cfg_scale == 1.0:
            return eps_c
        eps_u = model(x, t, null)
        return eps_c + (cfg_scale - 1.0) * (eps_c - eps_u)

    return eps_fn


@torch.no_grad()
def generate(
    model: UViT,
    noise: torch.Tensor,
    labels: torch.Tensor,
    cfg_scale: float = 6.0,
    steps: int = 30,
    callback=None,
) -> torch.Tensor:
    """Sampled latent (still multiplied by the AE scaling factor)."""
    solver = DPMSolver(
        make_eps_fn(model, labels, cfg_scale, model.cfg.null_class), NoiseScheduleVP()
    )
    return solver.sample(noise, steps=steps, callback=callback)
