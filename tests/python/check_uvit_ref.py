"""Check uvit_ref.py (UViT forward + DPM-Solver) against the golden reference files.

usage: python tests/python/check_uvit_ref.py [--golden DIR] [--threads 1] [--no-image]

Compares
  * fwd_eps         = UViT(fwd_x, fwd_t, fwd_y)                     (tolerance 1e-4)
  * <p>x_steps      = x after each solver step, <p>latent          (tolerance 1e-3)
  * <p>orders / <p>timesteps / number of UViT passes                (exact / 1e-7)
  * <p>image        = AutoencoderDC.decode(<p>latent / sf)          (tolerance 1e-4, diffusers)
and prints one line per quantity plus a final JSON summary. Exit status 1 on any failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import uvit_ref  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
# the repo's fixture copy of the golden case (pass --golden to use another folder)
GOLDEN_CANDIDATES = [
    os.path.join(REPO, "tests", "fixtures", "uvit-tiny"),
]


def default_golden() -> str | None:
    for c in GOLDEN_CANDIDATES:
        if os.path.isfile(os.path.join(c, "expected.safetensors")):
            return os.path.normpath(c)
    return None

TOL_FWD = 1e-4
TOL_STEPS = 1e-3
TOL_IMAGE = 1e-4

# efficientvit -> diffusers AutoencoderDC key renames, applied in this order (spec section 3.3)
_RENAMES = [
    ("main.", ""),
    ("op_list.", ""),
    ("context_module", "attn"),
    ("local_module", "conv_out"),
    ("aggreg.0.0", "to_qkv_multiscale.0.proj_in"),
    ("aggreg.0.1", "to_qkv_multiscale.0.proj_out"),
    ("depth_conv.conv", "conv_depth"),
    ("inverted_conv.conv", "conv_inverted"),
    ("point_conv.conv", "conv_point"),
    ("point_conv.norm", "norm"),
    ("conv.conv.", "conv."),
    ("conv1.conv", "conv1"),
    ("conv2.conv", "conv2"),
    ("conv2.norm", "norm"),
    ("proj.norm", "norm_out"),
    ("encoder.project_in.conv", None),  # depends on the family
    ("encoder.project_out.0.conv", "encoder.conv_out"),
    ("encoder.stages", "encoder.down_blocks"),
    ("decoder.project_in.conv", "decoder.conv_in"),
    ("decoder.project_out.0", "decoder.norm_out"),
    ("decoder.project_out.2.conv", None),  # depends on the family
    ("decoder.stages", "decoder.up_blocks"),
]


def efficientvit_to_diffusers(sd: dict, pixel_shuffle_heads: bool) -> dict:
    """Rename an original DCAE state dict to diffusers AutoencoderDC naming."""
    out = {}
    for key, v in sd.items():
        k = key
        for old, new in _RENAMES:
            if new is None:
                if old == "encoder.project_in.conv":
                    new = "encoder.conv_in.conv" if pixel_shuffle_heads else "encoder.conv_in"
                else:
                    new = "decoder.conv_out.conv" if pixel_shuffle_heads else "decoder.conv_out"
            k = k.replace(old, new)
        if k.endswith(".qkv.conv.weight"):
            base = k[: -len("qkv.conv.weight")]
            q, kk, vv = torch.chunk(v, 3, dim=0)
            out[base + "to_q.weight"] = q.reshape(q.shape[0], -1).contiguous()
            out[base + "to_k.weight"] = kk.reshape(kk.shape[0], -1).contiguous()
            out[base + "to_v.weight"] = vv.reshape(vv.shape[0], -1).contiguous()
            continue
        if k.endswith(".proj.conv.weight"):
            k = k[: -len("proj.conv.weight")] + "to_out.weight"
            v = v.reshape(v.shape[0], -1).contiguous()
        out[k] = v
    return out


def load_autoencoder(model_path: str, ae_config: dict):
    from diffusers import AutoencoderDC
    from safetensors.torch import load_file

    cfg = {k: v for k, v in ae_config.items() if not k.startswith("_")}
    ae = AutoencoderDC(**cfg)
    raw = {
        k[len("autoencoder.") :]: v
        for k, v in load_file(model_path).items()
        if k.startswith("autoencoder.")
    }
    shuffle = cfg.get("downsample_block_type", "pixel_unshuffle") == "pixel_unshuffle"
    ae.load_state_dict(efficientvit_to_diffusers(raw, shuffle), strict=True)
    return ae.eval()


def maxabs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--golden", default=None,
                    help="golden case folder (default: tests/fixtures/uvit-tiny)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-image", action="store_true", help="skip the AutoencoderDC decode check")
    args = ap.parse_args()

    from safetensors.torch import load_file

    if args.golden is None:
        args.golden = default_golden()
        if args.golden is None:
            ap.error("no golden folder found; pass --golden DIR")
    print(f"golden: {args.golden}")
    torch.set_num_threads(args.threads)
    cfg_all = json.load(open(os.path.join(args.golden, "config.json")))
    ucfg = uvit_ref.UViTConfig.from_dict(cfg_all["uvit"])
    sf = float(cfg_all["scaling_factor"])
    model_path = os.path.join(args.golden, "model.safetensors")
    model = uvit_ref.load_uvit(model_path, ucfg)
    exp = load_file(os.path.join(args.golden, "expected.safetensors"))

    ae = None
    if not args.no_image:
        ae = load_autoencoder(model_path, cfg_all["autoencoder"])

    results = {}
    ok = True

    def report(name, err, tol):
        nonlocal ok
        passed = err <= tol
        ok &= passed
        results[name] = err
        print(f"{name:<22} max|diff| = {err:.3e}   (tol {tol:.0e})  {'ok' if passed else 'FAIL'}")

    with torch.inference_mode():
        eps = model(exp["fwd_x"], exp["fwd_t"], exp["fwd_y"])
        report("fwd_eps", maxabs(eps, exp["fwd_eps"]), TOL_FWD)

        prefixes = sorted({k[: -len("x_steps")] for k in exp if k.endswith("x_steps")})
        for p in prefixes:
            steps = int(exp[p + "steps"].item())
            scale = float(exp[p + "cfg_scale"].item())
            labels = exp[p + "labels"]

            orders = uvit_ref.fast_orders(steps, 3)
            if orders != exp[p + "orders"].tolist():
                print(f"{p}orders mismatch: {orders} vs {exp[p + 'orders'].tolist()}")
                ok = False
            grid = torch.linspace(1.0, 1e-3, steps + 1, dtype=torch.float32)
            report(p + "timesteps", maxabs(grid, exp[p + "timesteps"]), 1e-7)

            xs = [exp[p + "noise"].clone()]
            solver = uvit_ref.DPMSolver(
                uvit_ref.make_eps_fn(model, labels, scale, ucfg.null_class),
                uvit_ref.NoiseScheduleVP(),
            )
            latent = solver.sample(xs[0], steps=steps, callback=xs.append)
            passes = solver.nfe * (1 if scale == 1.0 else 2)
            want_passes = steps * (1 if scale == 1.0 else 2)
            if passes != want_passes:
                print(f"{p}: {passes} UViT passes, expected {want_passes}")
                ok = False
            x_steps = torch.stack(xs)
            if x_steps.shape != exp[p + "x_steps"].shape:
                print(f"{p}x_steps shape {tuple(x_steps.shape)} vs {tuple(exp[p + 'x_steps'].shape)}")
                ok = False
                continue
            report(p + "x_steps", maxabs(x_steps, exp[p + "x_steps"]), TOL_STEPS)
            report(p + "latent", maxabs(latent, exp[p + "latent"]), TOL_STEPS)
            if ae is not None:
                # decoder on the stored latent (isolates the AE) and on ours (end to end)
                img_g = ae.decode(exp[p + "latent"] / sf).sample
                report(p + "image(stored z)", maxabs(img_g, exp[p + "image"]), TOL_IMAGE)
                img = ae.decode(latent / sf).sample
                err = maxabs(img, exp[p + "image"])
                results[p + "image(our z)"] = err
                print(f"{p + 'image(our z)':<22} max|diff| = {err:.3e}   (informational)")

    print(json.dumps({"torch": torch.__version__, "threads": args.threads, "ok": ok, "max_abs": results}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
