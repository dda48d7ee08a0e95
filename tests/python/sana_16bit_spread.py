"""The reference's own 16-bit spread for the SANA transformer: diffusers' SanaTransformer2DModel
on the sana-tiny fixture (SANA 1.0 architecture and Sprint's) in float32, float16 and bfloat16,
each against the float32 goldens fwdA / fwdB / sfwdA, as a fraction of the golden's largest
magnitude. It puts dcae's F16 / BF16 relative tolerances (src/cli/parity.rs) beside what the
reference itself gives. Not run in CI.

    /tmp/dcae-torch/bin/python tests/python/sana_16bit_spread.py
"""
import torch
from diffusers import SanaTransformer2DModel
from safetensors.torch import load_file

FIXTURE = "tests/fixtures/sana-tiny/"


def main():
    golden = load_file(FIXTURE + "expected.safetensors")
    for sub, cases in (("transformer", ("fwdA", "fwdB")), ("sprint/transformer", ("sfwdA",))):
        model = SanaTransformer2DModel.from_pretrained(FIXTURE + sub).eval()
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            m = model.to(dtype)
            for p in cases:
                kwargs = {}
                if p + "_guidance" in golden:
                    kwargs["guidance"] = golden[p + "_guidance"].to(dtype)
                with torch.no_grad():
                    out = m(
                        hidden_states=golden[p + "_x"].to(dtype),
                        encoder_hidden_states=golden[p + "_ehs"].to(dtype),
                        encoder_attention_mask=golden[p + "_emask"],
                        timestep=golden[p + "_t"],
                        return_dict=False,
                        **kwargs,
                    )[0].float()
                want = golden[p + "_out"]
                err = (out - want).abs().max().item()
                scale = want.abs().max().item()
                print(f"{sub:20} {str(dtype):15} {p}: max |diff| {err:.3e} = {err / scale:.2e} of max |golden| {scale:.3f}")


if __name__ == "__main__":
    main()
