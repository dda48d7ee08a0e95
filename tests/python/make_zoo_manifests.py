"""Writes the diffusion-model manifests of the DC-AE zoo's DiT / USiT checkpoints from the ORIGINAL
efficientvit modules, built on torch's meta device (no memory, no weights):

  tests/fixtures/manifests/<name>.diffusion_model.tsv   key<TAB>shape<TAB>dtype, state-dict order,
                                                        keys prefixed "diffusion_model."

usage:
  EFFICIENTVIT_DIR=/tmp/efficientvit /tmp/dcae-torch/bin/python tests/python/make_zoo_manifests.py [--out DIR]

Prints one line per model with its number of tensors and parameters (state-dict elements).
The autoencoder half of these checkpoints is dc-ae-f32c32-in-1.0.evit.tsv (prefix "autoencoder.").
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import evit_zoo as Z  # noqa: E402

# name -> (module, config kwargs); the values of dit.py:dc_ae_dit_xl_in_512px and
# uvit.py:dc_ae_usit_{h,2b}_in_512px with in_channels 32 (dc-ae-f32c32-in-1.0), input 512 / 32 = 16
MODELS = {
    "dc-ae-f32c32-in-1.0-dit-xl-in-512px": (
        "dit", dict(depth=28, hidden_size=1152, num_heads=16, in_channels=32, patch_size=1, input_size=16,
                    num_classes=1000)),
    "dc-ae-f32c32-in-1.0-usit-h-in-512px": (
        "uvit", dict(depth=28, hidden_size=1152, num_heads=16, in_channels=32, patch_size=1, input_size=16,
                     num_classes=1000, train_scheduler="SiTSampler", eval_scheduler="ODE_dopri5",
                     num_inference_steps=250)),
    "dc-ae-f32c32-in-1.0-usit-2b-in-512px": (
        "uvit", dict(depth=28, hidden_size=2048, num_heads=32, in_channels=32, patch_size=1, input_size=16,
                     num_classes=1000, train_scheduler="SiTSampler", eval_scheduler="ODE_dopri5",
                     num_inference_steps=250)),
}

DTYPE_NAMES = {"torch.float32": "float32", "torch.int64": "int64", "torch.bfloat16": "bfloat16",
               "torch.float16": "float16"}


def build_meta(ev, kind: str, kw: dict):
    import torch

    with torch.device("meta"), contextlib.redirect_stdout(sys.stderr):
        if kind == "dit":
            return ev.dit.DiT(ev.dit.DiTConfig(use_checkpoint=False, **kw))
        return ev.uvit.UViT(ev.uvit.UViTConfig(use_checkpoint=False, **kw))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--efficientvit-dir", default=None)
    ap.add_argument("--out", default=os.path.join(Z.FIXTURES, "manifests"))
    args = ap.parse_args(argv)
    ev = Z.import_efficientvit(args.efficientvit_dir)
    for name, (kind, kw) in MODELS.items():
        m = build_meta(ev, kind, kw)
        sd = m.state_dict()
        path = os.path.join(args.out, f"{name}.diffusion_model.tsv")
        with open(path, "w") as f:
            for k, v in sd.items():
                f.write(f"diffusion_model.{k}\t{list(v.shape)}\t{DTYPE_NAMES[str(v.dtype)]}\n")
        n = sum(v.numel() for v in sd.values())
        print(f"{name}\t{len(sd)} tensors\t{n} params\t{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
