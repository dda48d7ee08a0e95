"""Writes tests/fixtures/ae-wide: a small diffusers AutoencoderDC whose ResBlock stages are wide
and large enough (32 channels at 64x64, 64 at 32x32) for the CPU backend's Winograd 3x3 path,
which the shared tiny goldens (8-16 channels) never reach. Random weights, randomised BatchNorm
statistics, one 64x64 image; expected latent and recon from diffusers in float32, and the same
model in float64 to record the reference's own rounding spread (notes.json).

Run once by hand (never in CI):  /tmp/dcae-torch/bin/python tests/python/make_ae_wide.py
"""
import json
import pathlib

import torch
from diffusers import AutoencoderDC
from safetensors.torch import save_file

OUT = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "ae-wide"
CONFIG = dict(
    in_channels=3,
    latent_channels=8,
    attention_head_dim=32,
    encoder_block_types=["ResBlock", "ResBlock", "EfficientViTBlock"],
    decoder_block_types=["ResBlock", "ResBlock", "EfficientViTBlock"],
    encoder_block_out_channels=[32, 64, 64],
    decoder_block_out_channels=[32, 64, 64],
    encoder_layers_per_block=[1, 1, 1],
    decoder_layers_per_block=[1, 2, 1],
    encoder_qkv_multiscales=[[], [], []],
    decoder_qkv_multiscales=[[], [], []],
    upsample_block_type="pixel_shuffle",
    downsample_block_type="pixel_unshuffle",
    decoder_norm_types=["batch_norm", "batch_norm", "rms_norm"],
    decoder_act_fns=["relu", "relu", "silu"],
    encoder_out_shortcut=True,
    decoder_in_shortcut=True,
    scaling_factor=0.5,
)


def main():
    torch.manual_seed(0)
    model = AutoencoderDC(**CONFIG).eval()
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
        # A smooth image with some detail, in [-1, 1].
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
        image = torch.stack([torch.sin(3 * xx + 2 * yy), torch.cos(4 * yy - xx), xx * yy]).unsqueeze(0)
        image = (image + 0.1 * torch.randn_like(image)).clamp(-1, 1)

        latent = model.encode(image).latent
        recon = model.decode(latent).sample
        m64 = AutoencoderDC(**CONFIG).eval().double()
        m64.load_state_dict(model.state_dict())
        latent64 = m64.encode(image.double()).latent
        recon64 = m64.decode(latent.double()).sample

    OUT.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(OUT, safe_serialization=True)
    save_file(
        {"image": image.contiguous(), "latent": latent.contiguous(), "recon": recon.contiguous()},
        OUT / "expected.safetensors",
    )

    def spread(a, b):
        return float((a.double() - b).abs().max() / b.abs().max())

    notes = {
        "case": "ae-wide",
        "generator": "tests/python/make_ae_wide.py",
        "torch": torch.__version__,
        "why": "ResBlock stages of 32 channels at 64x64 and 64 at 32x32: the CPU backend's Winograd 3x3 path",
        "latent_shape": list(latent.shape),
        "latent_max_abs": float(latent.abs().max()),
        "recon_max_abs": float(recon.abs().max()),
        "f32_vs_f64_relative": {"latent": spread(latent, latent64), "recon": spread(recon, recon64)},
    }
    (OUT / "notes.json").write_text(json.dumps(notes, indent=1) + "\n")
    print(json.dumps(notes, indent=1))


if __name__ == "__main__":
    main()
