"""Writes the 16-bit variant files of the sana-tiny fixture, the way the published repos ship
them: every weight of text_encoder/, transformer/, sprint/transformer/ and vae/ cast to bf16
(`*.bf16.safetensors`) and to fp16 (`*.fp16.safetensors`) beside the f32 file, plus
`sana-tiny/expected-16bit.safetensors` (the reference's prompt embedding of prompt 0 and its
`dpm20_` latent from those weights) and `sana-tiny/notes-16bit.json` with their spread: the diffusers pipeline run from
the 16-bit weights upcast to f32 against the f32 goldens (what a port that reads 16-bit weights
and computes in f32 should reproduce).

Run from the repo root with the venv of tests/python/README.md:
    /tmp/dcae-torch/bin/python tests/python/make_sana_16bit.py
"""
import inspect
import json
import os

import torch
from safetensors.torch import load_file, save_file

ROOT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "sana-tiny")
PARTS = [
    ("text_encoder", "model"),
    ("transformer", "diffusion_pytorch_model"),
    ("sprint/transformer", "diffusion_pytorch_model"),
    ("vae", "diffusion_pytorch_model"),
]


def main():
    for folder, base in PARTS:
        src = os.path.join(ROOT, folder, f"{base}.safetensors")
        tensors = load_file(src)
        for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            out = {k: v.to(dtype).contiguous() for k, v in tensors.items()}
            save_file(out, os.path.join(ROOT, folder, f"{base}.{name}.safetensors"), metadata={"format": "pt"})
    spreads, tensors = measure()
    save_file(tensors, os.path.join(ROOT, "expected-16bit.safetensors"))
    with open(os.path.join(ROOT, "notes-16bit.json"), "w") as f:
        json.dump(spreads, f, indent=1)
    print(json.dumps(spreads, indent=1))


def measure():
    """max |diff| of the reference pipeline with 16-bit-rounded weights (computed in f32)."""
    from diffusers import SanaPipeline

    torch.set_num_threads(1)
    exp = load_file(os.path.join(ROOT, "expected.safetensors"))
    cases = json.load(open(os.path.join(ROOT, "cases.json")))
    out, tensors = {}, {}
    for variant in ("bf16", "fp16"):
        pipe = SanaPipeline.from_pretrained(ROOT, torch_dtype=torch.float32, variant=variant)
        pipe.set_progress_bar_config(disable=True)
        prompts = [cases["prompts"][0], cases["prompts"][1]]
        chi = inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default
        enc = pipe.encode_prompt(prompts[0], do_classifier_free_guidance=True, negative_prompt="", max_sequence_length=300,
                                 complex_human_instruction=chi)
        emb_err = (enc[0] - exp["enc_p0_prompt_embeds"]).abs().max().item()
        lat = pipe(prompt=prompts, negative_prompt="", height=64, width=64, num_inference_steps=20, guidance_scale=4.5,
                   latents=exp["dpm20_latents_in"].clone(), output_type="latent", use_resolution_binning=False).images
        lat_err = (lat - exp["dpm20_latent"]).abs().max().item()
        img = pipe.vae.decode(exp["dpm20_latent"] / pipe.vae.config.scaling_factor).sample
        img_err = (img - exp["dpm20_image"]).abs().max().item()
        out[variant] = {"enc_p0_prompt_embeds": emb_err, "dpm20_latent": lat_err, "dpm20_image_from_stored_latent": img_err}
        tensors[f"{variant}_enc_p0_prompt_embeds"] = enc[0].contiguous()
        tensors[f"{variant}_dpm20_latent"] = lat.contiguous()
    return {"comment": "max |diff| against the f32 goldens of the reference pipeline run (in f32) from the 16-bit weights", **out}, tensors


if __name__ == "__main__":
    main()
