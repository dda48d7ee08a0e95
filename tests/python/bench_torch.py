"""PyTorch (CPU) side of the DC-AE Studio benchmarks; mirrors the Rust `dcae bench`.

usage:
  python tests/python/bench_torch.py --model dc-ae-f32c32-in-1.0 --task encode --res 256 --runs 5 --threads 2
  python tests/python/bench_torch.py --model dc-ae-f64c128-in-1.0 --task decode --res 512 --runs 3 --threads 2
  python tests/python/bench_torch.py --model uvit-h --task forward --runs 5 --threads 2 [--batch 1]
  python tests/python/bench_torch.py --model uvit-h --task generate --runs 1 --threads 2 [--steps 30] [--cfg 6.0] [--with-decode]

Prints ONE JSON line on stdout:
  {"impl":"pytorch","model":..,"task":..,"res":..,"runs":..,"threads":..,"median_s":..,"min_s":..,
   "mean_s":..,"peak_rss_mib":..,"torch":..., <extras: batch, warmup_s, setup_s, params, finite, ...>}

Weights are random (seeded; std 1/sqrt(fan_in) for conv/linear, small biases, norms near 1), so
no download is needed. Everything runs in float32 under torch.inference_mode() after
torch.set_num_threads(--threads). One untimed warm-up run precedes the --runs timed runs.

Tasks:
  encode    autoencoder: image [B,3,res,res] -> latent
  decode    autoencoder: latent [B,c,res/f,res/f] -> image
  forward   autoencoder: encode + decode;  uvit-h: one UViT forward (8x8x128 latent at res 512)
  generate  uvit-h: DPM-Solver, --steps solver steps (default 30) with CFG --cfg (default 6.0):
            2 UViT passes per step (1 when cfg == 1); --with-decode adds the final
            dc-ae-f64c128-in-1.0 decode of latent / 0.2889 (512x512 image for res 512)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# ----------------------------------------------------------------------------------------
# Model configs (diffusers AutoencoderDC kwargs; spec sections 1.2 and 3.3)
# ----------------------------------------------------------------------------------------

_W6 = [128, 256, 512, 512, 1024, 1024]


def _in_family(latent: int, n_evit: int, sf: float) -> dict:
    widths = _W6 + [2048] * (n_evit - 3)
    blocks = ["ResBlock"] * 3 + ["EfficientViTBlock"] * n_evit
    n = len(widths)
    return dict(
        in_channels=3,
        latent_channels=latent,
        attention_head_dim=32,
        encoder_block_types=blocks,
        decoder_block_types=blocks,
        encoder_block_out_channels=widths,
        decoder_block_out_channels=widths,
        encoder_layers_per_block=[0, 4, 8] + [2] * n_evit,
        decoder_layers_per_block=[0, 5, 10] + [2] * n_evit,
        encoder_qkv_multiscales=[[]] * n,
        decoder_qkv_multiscales=[[]] * n,
        upsample_block_type="pixel_shuffle",
        downsample_block_type="pixel_unshuffle",
        decoder_norm_types=["batch_norm"] * 3 + ["rms_norm"] * n_evit,
        decoder_act_fns=["relu"] * 3 + ["silu"] * n_evit,
        encoder_out_shortcut=True,
        decoder_in_shortcut=True,
        decoder_conv_act_fn="relu",
        scaling_factor=sf,
    )


def _sana(sf: float) -> dict:
    blocks = ["ResBlock"] * 3 + ["EfficientViTBlock"] * 3
    ms = [[], [], [], [5], [5], [5]]
    return dict(
        in_channels=3,
        latent_channels=32,
        attention_head_dim=32,
        encoder_block_types=blocks,
        decoder_block_types=blocks,
        encoder_block_out_channels=_W6,
        decoder_block_out_channels=_W6,
        encoder_layers_per_block=[2, 2, 2, 3, 3, 3],
        decoder_layers_per_block=[3, 3, 3, 3, 3, 3],
        encoder_qkv_multiscales=ms,
        decoder_qkv_multiscales=ms,
        upsample_block_type="interpolate",
        downsample_block_type="Conv",
        decoder_norm_types="rms_norm",
        decoder_act_fns="silu",
        encoder_out_shortcut=True,
        decoder_in_shortcut=True,
        decoder_conv_act_fn="relu",
        scaling_factor=sf,
    )


# name -> (diffusers config, spatial compression f)
AE_MODELS = {
    "dc-ae-f32c32-in-1.0": (_in_family(32, 3, 0.3189), 32),
    "dc-ae-f64c128-in-1.0": (_in_family(128, 4, 0.2889), 64),
    "dc-ae-f128c512-in-1.0": (_in_family(512, 5, 0.4883), 128),
    "dc-ae-f32c32-mix-1.0": (_in_family(32, 3, 0.4552), 32),
    "dc-ae-f64c128-mix-1.0": (_in_family(128, 4, 0.4538), 64),
    "dc-ae-f128c512-mix-1.0": (_in_family(512, 5, 0.3620), 128),
    "dc-ae-f32c32-sana-1.0": (_sana(0.41407), 32),
    "dc-ae-f32c32-sana-1.1": (_sana(0.41407), 32),
}

# parameter totals from the spec (state-dict elements, BN buffers included)
EXPECTED_PARAMS = {
    "dc-ae-f32c32-in-1.0": 323_369_275,
    "dc-ae-f64c128-in-1.0": 676_908_955,
    "dc-ae-f128c512-in-1.0": 1_120_695_067,
    "dc-ae-f32c32-sana-1.0": 312_250_275,
    "uvit-h": 500_868_992,
}

UVIT_ALIASES = {
    "uvit-h",
    "dc-ae-f64c128-in-1.0-uvit-h-in-512px",
    "dc-ae-f64c128-in-1.0-uvit-h-in-512px-train2000k",
}
UVIT_AE = "dc-ae-f64c128-in-1.0"
UVIT_SCALING_FACTOR = 0.2889
UVIT_F = 64
DEMO_LABELS = [279, 333, 979, 936, 933, 145, 497, 1, 248, 360, 793, 12, 387, 437, 938, 978]


def canonical_model(name: str) -> str:
    n = name.strip()
    if n.endswith("-diffusers"):
        n = n[: -len("-diffusers")]
    if n.startswith("mit-han-lab/"):
        n = n[len("mit-han-lab/") :]
    if n in UVIT_ALIASES:
        return "uvit-h"
    if n in AE_MODELS:
        return n
    if "dc-ae-" + n in AE_MODELS:
        return "dc-ae-" + n
    raise SystemExit(f"unknown model {name!r}; known: {sorted(AE_MODELS) + ['uvit-h']}")


# ----------------------------------------------------------------------------------------
# Random weights
# ----------------------------------------------------------------------------------------


def randomize_ae_(ae, seed: int):
    """Seeded random weights, written in place: conv/linear std 1/sqrt(fan_in), biases std 0.1,
    norm weights 1 + 0.1 N, norm biases 0.1 N, BN running_mean 0.1 N, running_var U[0.5,1.5)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    norm_types = (torch.nn.BatchNorm2d, torch.nn.LayerNorm, torch.nn.GroupNorm)
    with torch.no_grad():
        for _, mod in ae.named_modules():
            is_norm = isinstance(mod, norm_types) or type(mod).__name__.endswith("Norm")
            for pname, p in mod.named_parameters(recurse=False):
                if is_norm:
                    p.normal_(1.0 if pname == "weight" else 0.0, 0.1, generator=g)
                elif pname == "bias" or p.dim() == 1:
                    p.normal_(0.0, 0.1, generator=g)
                else:
                    p.normal_(0.0, 1.0 / math.sqrt(p[0].numel()), generator=g)
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0.0, 0.1, generator=g)
                mod.running_var.uniform_(0.5, 1.5, generator=g)
                mod.num_batches_tracked.zero_()
    return ae


def count_state(model) -> int:
    return sum(t.numel() for t in model.state_dict().values())


def build_ae(name: str, seed: int):
    import torch
    from diffusers import AutoencoderDC

    cfg, f = AE_MODELS[name]
    with torch.device("meta"):  # no default init: every tensor is written by randomize_ae_
        ae = AutoencoderDC(**cfg)
    ae = ae.to_empty(device="cpu")
    randomize_ae_(ae, seed)
    return ae.eval(), cfg, f  # float32 parameters (default dtype)


def build_uvit(input_size: int, seed: int):
    import torch
    import uvit_ref

    cfg = uvit_ref.UViTConfig.uvit_h()
    cfg.input_size = input_size
    with torch.device("meta"):
        m = uvit_ref.UViT(cfg)
    m = m.to_empty(device="cpu")
    uvit_ref.randomize_(m, seed)
    return m.eval(), cfg


# ----------------------------------------------------------------------------------------
# Benchmark
# ----------------------------------------------------------------------------------------


def peak_rss_mib() -> float:
    # Linux: ru_maxrss is in KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--model", required=True)
    ap.add_argument("--task", required=True, choices=["encode", "decode", "forward", "generate"])
    ap.add_argument("--res", type=int, default=None,
                    help="image side in pixels (default 256 for AE tasks, 512 for uvit-h)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=30, help="generate: solver steps")
    ap.add_argument("--cfg", type=float, default=6.0, help="generate: classifier-free guidance scale")
    ap.add_argument("--with-decode", action="store_true",
                    help="generate: include the final dc-ae-f64c128-in-1.0 decode")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs (default 1)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    if not args.model.startswith("uvit") and "uvit" not in args.model:
        import diffusers  # noqa: F401  (import cost counted in the baseline, not in setup)
    baseline_rss = peak_rss_mib()
    t_setup = time.perf_counter()
    model_name = canonical_model(args.model)
    is_uvit = model_name == "uvit-h"
    task = args.task
    if is_uvit and task not in ("forward", "generate"):
        raise SystemExit("uvit-h supports --task forward|generate")
    if not is_uvit and task == "generate":
        raise SystemExit("--task generate needs --model uvit-h")
    res = args.res if args.res is not None else (512 if is_uvit else 256)
    b = args.batch
    gen = torch.Generator().manual_seed(args.seed + 1)
    extras: dict = {"batch": b, "baseline_rss_mib": round(baseline_rss, 1)}

    if is_uvit:
        import uvit_ref

        if res % UVIT_F:
            raise SystemExit(f"--res must be a multiple of {UVIT_F} for uvit-h")
        side = res // UVIT_F
        model, ucfg = build_uvit(side, args.seed)
        extras["params"] = count_state(model)
        extras["latent"] = [b, ucfg.in_channels, side, side]
        x = torch.randn(b, ucfg.in_channels, side, side, generator=gen)
        labels = torch.tensor([DEMO_LABELS[i % len(DEMO_LABELS)] for i in range(b)])
        if task == "forward":
            t = torch.full((b,), 500.5)

            def run():
                return model(x, t, labels)

        else:
            extras.update(steps=args.steps, cfg=args.cfg, with_decode=args.with_decode,
                          uvit_passes=args.steps * (1 if args.cfg == 1.0 else 2))
            ae = None
            if args.with_decode:
                ae, _, _ = build_ae(UVIT_AE, args.seed + 7)
                extras["ae_params"] = count_state(ae)

            def run():
                z = uvit_ref.generate(model, x.clone(), labels, args.cfg, args.steps)
                if ae is not None:
                    return ae.decode(z / UVIT_SCALING_FACTOR).sample
                return z

    else:
        ae, acfg, f = build_ae(model_name, args.seed)
        extras["params"] = count_state(ae)
        if res % f:
            raise SystemExit(f"--res must be a multiple of {f} for {model_name}")
        c = acfg["latent_channels"]
        img = torch.rand(b, 3, res, res, generator=gen) * 2.0 - 1.0
        z = torch.randn(b, c, res // f, res // f, generator=gen)
        if task == "encode":
            extras["input"] = list(img.shape)

            def run():
                return ae.encode(img).latent

        elif task == "decode":
            extras["input"] = list(z.shape)

            def run():
                return ae.decode(z).sample

        else:  # forward = encode + decode

            extras["input"] = list(img.shape)

            def run():
                return ae.decode(ae.encode(img).latent).sample

    exp = EXPECTED_PARAMS.get(model_name)
    if exp is not None and extras["params"] != exp:
        print(f"warning: {model_name} has {extras['params']} state elements, spec says {exp}",
              file=sys.stderr)
    extras["setup_s"] = round(time.perf_counter() - t_setup, 3)

    times = []
    finite = True
    out = None
    with torch.inference_mode():
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            out = run()
            finite &= bool(torch.isfinite(out).all())
        extras["warmup_s"] = round(time.perf_counter() - t0, 4)
        for _ in range(args.runs):
            t0 = time.perf_counter()
            out = run()
            times.append(time.perf_counter() - t0)
        if out is not None:
            finite &= bool(torch.isfinite(out).all())
    if out is not None:
        extras["output"] = list(out.shape)
        extras["finite"] = finite

    rec = {
        "impl": "pytorch",
        "model": model_name,
        "task": task,
        "res": res,
        "runs": args.runs,
        "threads": torch.get_num_threads(),
        "median_s": round(statistics.median(times), 6) if times else None,
        "min_s": round(min(times), 6) if times else None,
        "mean_s": round(statistics.fmean(times), 6) if times else None,
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "torch": torch.__version__,
    }
    rec.update(extras)
    print(json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
