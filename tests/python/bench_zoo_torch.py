"""PyTorch (CPU) timings of the ORIGINAL efficientvit DiT-XL / USiT networks of the DC-AE zoo;
mirrors bench_torch.py's CLI and its one-JSON-line output.

usage:
  EFFICIENTVIT_DIR=/tmp/efficientvit /tmp/dcae-torch/bin/python tests/python/bench_zoo_torch.py \
      --model dit-xl --task forward --runs 5 --threads 2 [--batch 1]
  ... --model usit-h --task forward --runs 5
  ... --model dit-xl --task generate --runs 1 [--steps 250] [--cfg 1.3]
  ... --model usit-h --task generate --runs 1 [--method dopri5|heun2] [--steps 250] [--cfg 1.5] [--atol 1e-6 --rtol 1e-3]

Prints ONE JSON line on stdout (everything else goes to stderr):
  {"impl":"pytorch","model":..,"task":..,"res":..,"runs":..,"threads":..,"median_s":..,"min_s":..,
   "mean_s":..,"peak_rss_mib":..,"torch":..., <extras>}

Models (efficientvit code imported from EFFICIENTVIT_DIR, nothing copied):
  dit-xl   = dc-ae-f32c32-in-1.0-dit-xl-in-512px[-trainbs1024]: DiT(DiTConfig(depth 28, hidden 1152,
             16 heads, in_channels 32, patch 1, input_size res/32, 1000 classes)), 675,184,960 params at 512 px
  usit-h   = dc-ae-f32c32-in-1.0-usit-h-in-512px: UViT(depth 28, 1152, 16 heads, in 32, patch 1,
             train_scheduler SiTSampler, eval_scheduler ODE_dopri5 | ODE_heun2), 500,868,896 params
  usit-2b  = dc-ae-f32c32-in-1.0-usit-2b-in-512px: the same with hidden 2048, 32 heads, 1,580,396,576 params
Weights: random and seeded (--seed), no download: built on the meta device, then every parameter drawn
once (Linear/Conv N(0, 1/fan_in), biases N(0, 0.1^2), LayerNorm 1 + N(0, 0.1^2) / N(0, 0.1^2), label
table N(0, 1); UViT pos_embed N(0, 0.5^2); DiT pos_embed = the original sin-cos table).
Run: eval(), float32, torch.inference_mode(), torch.set_num_threads(--threads); --warmup untimed
runs, then --runs timed runs.

Tasks:
  forward   one forward_without_cfg on 2*B latents (B = --batch labels + B null labels, i.e. one
            guided pair per sample), t = 500 (DiT, integer step) or 0.5 (USiT, SiT time)
  generate  the original generate(): DiT = ADM p_sample_loop over create_diffusion(str(--steps))
            (default 250) with CFG --cfg (default 1.3); USiT = odeint(--method, default dopri5,
            --steps output points, --atol/--rtol) with CFG --cfg (default 1.5). Reports
            network_calls (forward_without_cfg calls of the last run; each is the doubled batch
            when cfg != 1).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

ALIASES = {
    "dit-xl": "dit-xl",
    "dc-ae-f32c32-in-1.0-dit-xl-in-512px": "dit-xl",
    "dc-ae-f32c32-in-1.0-dit-xl-in-512px-trainbs1024": "dit-xl",
    "usit-h": "usit-h",
    "dc-ae-f32c32-in-1.0-usit-h-in-512px": "usit-h",
    "usit-2b": "usit-2b",
    "dc-ae-f32c32-in-1.0-usit-2b-in-512px": "usit-2b",
}
ARCH = {
    "dit-xl": ("dit", dict(depth=28, hidden_size=1152, num_heads=16)),
    "usit-h": ("uvit", dict(depth=28, hidden_size=1152, num_heads=16)),
    "usit-2b": ("uvit", dict(depth=28, hidden_size=2048, num_heads=32)),
}
EXPECTED_PARAMS_512 = {"dit-xl": 675_184_960, "usit-h": 500_868_896, "usit-2b": 1_580_396_576}
LATENT_C, F = 32, 32
NUM_CLASSES = 1000
DEMO_LABELS = [279, 333, 979, 936, 933, 145, 497, 1, 248, 360, 793, 12, 387, 437, 938, 978]


def canonical(name: str) -> str:
    n = name.strip()
    if n.startswith("mit-han-lab/"):
        n = n[len("mit-han-lab/"):]
    if n not in ALIASES:
        raise SystemExit(f"unknown model {name!r}; known: {sorted(ALIASES)}")
    return ALIASES[n]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build(ev, model: str, input_size: int, seed: int, method: str, steps: int, atol: float, rtol: float):
    import torch
    import evit_zoo as Z

    kind, arch = ARCH[model]
    common = dict(arch, in_channels=LATENT_C, patch_size=1, input_size=input_size, num_classes=NUM_CLASSES,
                  use_checkpoint=False)
    with torch.device("meta"), contextlib.redirect_stdout(sys.stderr):
        if kind == "dit":
            m = ev.dit.DiT(ev.dit.DiTConfig(eval_scheduler="GaussianDiffusion", **common))
        else:
            m = ev.uvit.UViT(ev.uvit.UViTConfig(train_scheduler="SiTSampler", eval_scheduler="ODE_" + method,
                                                 num_inference_steps=steps, **common))
    m = m.to_empty(device="cpu")
    if kind == "dit":
        pos = ev.dit.get_2d_sincos_pos_embed(m.pos_embed.shape[-1], int(m.x_embedder.num_patches ** 0.5))
        with torch.no_grad():
            m.pos_embed.copy_(torch.from_numpy(pos).float().unsqueeze(0))
        Z.randomize_(m, seed, skip=("pos_embed",))
        m.eval_scheduler = ev.dit_sampler.create_diffusion(str(steps))
    else:
        Z.randomize_(m, seed, std_for=lambda n, p: (0.0, 0.5) if n == "pos_embed" else None)
        sampler = ev.sit_sampler.Sampler(m.transport)
        m.eval_scheduler = sampler.sample_ode(sampling_method=method, num_steps=steps, atol=atol, rtol=rtol,
                                              reverse=False)
    return m.eval(), kind


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--task", required=True, choices=["forward", "generate"])
    ap.add_argument("--res", type=int, default=512, help="image side in pixels (latent side = res / 32)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1, help="samples (guided pairs) per call")
    ap.add_argument("--steps", type=int, default=250,
                    help="generate: DiT respaced ADM steps; USiT odeint output points (heun2: grid points)")
    ap.add_argument("--cfg", type=float, default=None, help="guidance scale (default 1.3 DiT, 1.5 USiT)")
    ap.add_argument("--method", choices=["dopri5", "heun2"], default="dopri5", help="USiT ODE solver")
    ap.add_argument("--atol", type=float, default=1e-6, help="USiT dopri5 atol (the zoo's 1e-6)")
    ap.add_argument("--rtol", type=float, default=1e-3, help="USiT dopri5 rtol (the zoo's 1e-3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs (default 1)")
    ap.add_argument("--efficientvit-dir", default=None)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    import evit_zoo as Z

    ev = Z.import_efficientvit(args.efficientvit_dir)
    baseline_rss = peak_rss_mib()
    t_setup = time.perf_counter()
    model_name = canonical(args.model)
    if args.res % F:
        raise SystemExit(f"--res must be a multiple of {F}")
    side = args.res // F
    b = args.batch
    model, kind = build(ev, model_name, side, args.seed, args.method, args.steps, args.atol, args.rtol)
    cfg_scale = args.cfg if args.cfg is not None else (1.3 if kind == "dit" else 1.5)
    params = sum(t.numel() for t in model.state_dict().values())
    extras: dict = {"batch": b, "baseline_rss_mib": round(baseline_rss, 1), "params": params,
                    "latent": [b, LATENT_C, side, side], "efficientvit": "original (EFFICIENTVIT_DIR)"}
    if args.res == 512 and params != EXPECTED_PARAMS_512[model_name]:
        print(f"warning: {model_name} has {params} state elements, the manifest says "
              f"{EXPECTED_PARAMS_512[model_name]}", file=sys.stderr)

    gen = torch.Generator().manual_seed(args.seed + 1)
    labels = torch.tensor([DEMO_LABELS[i % len(DEMO_LABELS)] for i in range(b)], dtype=torch.int64)
    null = torch.full_like(labels, NUM_CLASSES)
    calls = [0]
    real_fwd = model.forward_without_cfg

    def counted(*a, **k):
        calls[0] += 1
        return real_fwd(*a, **k)

    model.forward_without_cfg = counted

    if args.task == "forward":
        x = torch.randn(b, LATENT_C, side, side, generator=gen)
        x2 = torch.cat([x, x])
        y2 = torch.cat([labels, null])
        t2 = torch.full((2 * b,), 500, dtype=torch.int64) if kind == "dit" else torch.full((2 * b,), 0.5)
        extras["net_batch"] = 2 * b

        def run():
            return model.forward_without_cfg(x2, t2, y2)

    else:
        extras.update(steps=args.steps, cfg=cfg_scale)
        if kind == "uvit":
            extras.update(method=args.method)
            if args.method == "dopri5":
                extras.update(atol=args.atol, rtol=args.rtol)
        extras["net_batch"] = 2 * b if cfg_scale != 1.0 else b

        def run():
            calls[0] = 0
            g = torch.Generator().manual_seed(args.seed + 2)
            torch.manual_seed(args.seed + 3)
            return model.generate(labels, null, cfg_scale, generator=g)

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
    if args.task == "generate":
        extras["network_calls"] = calls[0]

    rec = {
        "impl": "pytorch",
        "model": model_name,
        "task": args.task,
        "res": args.res,
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
