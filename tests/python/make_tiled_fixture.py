"""Writes tests/fixtures/tiled: diffusers' own tiled encode / decode (AutoencoderDC.tiled_encode,
tiled_decode) of the tiny sana-layout model in tests/fixtures/ae-tiny-sana/diffusers, with tiles
small enough (32 px, stride 24 px; factor 4, so 8 / 6 latent pixels) that a 100x148 image makes
5x7 tiles with seams in both directions and ragged last tiles (the last row and column start
inside the previous tile). A second image, 102x150, is not a multiple of the factor: its edge
tiles take diffusers' zero-padding path (encode only; the untiled encoder cannot take it).

Stored: the inputs, the untiled latent and recon, the tiled latent and the tiled recon (decoded
from the untiled latent, so that the decoder is checked on its own), and in notes.json the same
run in float64 to record the reference's own f32 rounding spread.

Run once by hand (never in CI):  /tmp/dcae-torch/bin/python tests/python/make_tiled_fixture.py
"""
import json
import pathlib

import torch
from diffusers import AutoencoderDC
from safetensors.torch import save_file

ROOT = pathlib.Path(__file__).resolve().parents[1] / "fixtures"
MODEL = ROOT / "ae-tiny-sana" / "diffusers"
OUT = ROOT / "tiled"
TILE, STRIDE = 32, 24


def smooth_image(h, w, seed):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    image = torch.stack([torch.sin(3 * xx + 2 * yy), torch.cos(4 * yy - xx), xx * yy]).unsqueeze(0)
    return (image + 0.1 * torch.randn(image.shape, generator=g)).clamp(-1, 1).contiguous()


def run(model, image, ragged):
    with torch.no_grad():
        model.disable_tiling()
        out = {}
        if image is not None:
            out["latent"] = model.encoder(image)
            out["recon"] = model.decoder(out["latent"])
        model.enable_tiling(TILE, TILE, STRIDE, STRIDE)
        if image is not None:
            out["tiled_latent"] = model.tiled_encode(image, return_dict=False)[0]
            out["tiled_recon"] = model.tiled_decode(out["latent"], return_dict=False)[0]
        out["ragged_tiled_latent"] = model.tiled_encode(ragged, return_dict=False)[0]
        model.disable_tiling()
    return out


def main():
    torch.manual_seed(0)
    model = AutoencoderDC.from_pretrained(MODEL).eval()
    image = smooth_image(100, 148, 1)
    ragged = smooth_image(102, 150, 2)
    out = run(model, image, ragged)
    m64 = AutoencoderDC.from_pretrained(MODEL).eval().double()
    out64 = run(m64, image.double(), ragged.double())

    def spread(k):
        a, b = out[k].double(), out64[k]
        return float((a - b).abs().max() / b.abs().max())

    def diff(a, b):
        d = (out[a] - out[b]).abs()
        return {"max": float(d.max()), "mean": float(d.mean())}

    OUT.mkdir(parents=True, exist_ok=True)
    tensors = {"image": image, "ragged_image": ragged}
    tensors.update({k: v.contiguous() for k, v in out.items()})
    save_file(tensors, OUT / "expected.safetensors")
    notes = {
        "case": "tiled",
        "generator": "tests/python/make_tiled_fixture.py",
        "model": "tests/fixtures/ae-tiny-sana/diffusers",
        "torch": torch.__version__,
        "enable_tiling": {"tile_sample_min": TILE, "tile_sample_stride": STRIDE},
        "shapes": {k: list(v.shape) for k, v in tensors.items()},
        "f32_vs_f64_relative": {k: spread(k) for k in out},
        "tiled_vs_untiled_abs": {"latent": diff("tiled_latent", "latent"), "recon": diff("tiled_recon", "recon")},
    }
    (OUT / "notes.json").write_text(json.dumps(notes, indent=1) + "\n")
    print(json.dumps(notes, indent=1))


if __name__ == "__main__":
    main()
