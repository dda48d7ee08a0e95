"""The reference's own bf16 spread for the Gemma-2 text encoder: transformers' Gemma2Model on
the sana-tiny fixture in float32 and in bfloat16 (eager attention, as SANA runs it), each
against the float32 goldens te_p*_hidden. It justifies dcae's BF16_RELATIVE_TOLERANCE
(src/cli/parity.rs). Not run in CI.

    /tmp/dcae-torch/bin/python tests/python/gemma_bf16_spread.py
"""
import torch
from safetensors.torch import load_file
from transformers import Gemma2Model

FIXTURE = "tests/fixtures/sana-tiny/"


def main():
    golden = load_file(FIXTURE + "expected.safetensors")
    model = Gemma2Model.from_pretrained(FIXTURE + "text_encoder", attn_implementation="eager").eval()
    for dtype in (torch.float32, torch.bfloat16):
        m = model.to(dtype)
        for i in range(4):
            ids, mask, want = golden[f"tok_p{i}_ids"], golden[f"tok_p{i}_mask"], golden[f"te_p{i}_hidden"]
            with torch.no_grad():
                got = m(input_ids=ids, attention_mask=mask).last_hidden_state.float()
            err = (got - want).abs().max().item()
            scale = want.abs().max().item()
            real = mask[0].bool()
            err_real = (got[0, real] - want[0, real]).abs().max().item()
            print(f"{str(dtype):15} te_p{i}_hidden: max |diff| {err:.3e} = {err / scale:.2e} of max |golden| {scale:.3f}; real rows {err_real:.3e}")


if __name__ == "__main__":
    main()
