"""The PyTorch side of `dcae bench` for SANA: the same networks at the real sizes with random
weights, built by transformers (Gemma2Model) and diffusers (SanaTransformer2DModel,
AutoencoderDC, the SanaPipeline / SanaSprintPipeline sampling loops), timed the same way
(one untimed warm-up, then --runs timed runs), f32 on the CPU. Prints one JSON line.

    /tmp/dcae-torch/bin/python tests/python/bench_sana_torch.py --model Sana_600M_512px_diffusers --task forward --res 512 --runs 3 --threads 2

Tasks: text-encode (one Gemma pass over --tokens tokens), forward (one transformer call),
t2i (text encoding + sampling + decode, no warm-up run; the pipeline gets the embeddings,
since the real tokenizer is not available offline; all three models stay loaded, as in a
diffusers pipeline).
"""
import argparse
import json
import resource
import time

import torch

SANA = {
    # name: (heads, layers, cross heads, cross head dim, sample_size, sprint, qk_norm)
    "Sana_600M_512px_diffusers": (36, 28, 16, 72, 16, False, None),
    "Sana_600M_1024px_diffusers": (36, 28, 16, 72, 32, False, None),
    "Sana_1600M_1024px_diffusers": (70, 20, 20, 112, 32, False, None),
    "SANA1.5_1.6B_1024px_diffusers": (70, 20, 20, 112, 32, False, "rms_norm_across_heads"),
    "Sana_Sprint_0.6B_1024px_diffusers": (36, 28, 16, 72, 32, True, "rms_norm_across_heads"),
    "Sana_Sprint_1.6B_1024px_diffusers": (70, 20, 20, 112, 32, True, "rms_norm_across_heads"),
}


def gemma():
    from transformers import Gemma2Config, Gemma2Model

    cfg = Gemma2Config(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                       num_attention_heads=8, num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256,
                       attn_logit_softcapping=50.0, final_logit_softcapping=30.0, sliding_window=4096,
                       rms_norm_eps=1e-6, rope_theta=10000.0, hidden_activation="gelu_pytorch_tanh")
    cfg._attn_implementation = "eager"
    return Gemma2Model(cfg).eval()


def transformer(name):
    from diffusers import SanaTransformer2DModel

    heads, layers, xh, xd, sample, sprint, qk = SANA[name]
    return SanaTransformer2DModel(in_channels=32, out_channels=32, num_attention_heads=heads, attention_head_dim=32,
                                  num_layers=layers, num_cross_attention_heads=xh, cross_attention_head_dim=xd,
                                  cross_attention_dim=heads * 32, caption_channels=2304, sample_size=sample,
                                  qk_norm=qk, guidance_embeds=sprint).eval()


def vae():
    from diffusers import AutoencoderDC

    return AutoencoderDC(in_channels=3, latent_channels=32, attention_head_dim=32,
                         encoder_block_types=["ResBlock", "ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock", "EfficientViTBlock"],
                         decoder_block_types=["ResBlock", "ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock", "EfficientViTBlock"],
                         encoder_block_out_channels=[128, 256, 512, 512, 1024, 1024], decoder_block_out_channels=[128, 256, 512, 512, 1024, 1024],
                         encoder_layers_per_block=[2, 2, 2, 3, 3, 3], decoder_layers_per_block=[3, 3, 3, 3, 3, 3],
                         encoder_qkv_multiscales=[[], [], [], [5], [5], [5]], decoder_qkv_multiscales=[[], [], [], [5], [5], [5]],
                         upsample_block_type="interpolate", downsample_block_type="conv", decoder_norm_types="rms_norm",
                         decoder_act_fns="silu", scaling_factor=0.41407).eval()


def timed(runs, f):
    f()
    out = []
    for _ in range(max(runs, 1)):
        t = time.perf_counter()
        f()
        out.append(time.perf_counter() - t)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="Sana_600M_512px_diffusers")
    ap.add_argument("--task", choices=["text-encode", "forward", "t2i"], required=True)
    ap.add_argument("--res", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--cfg", type=float, default=4.5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=540)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    s = a.res // 32
    phases = None
    t0 = time.perf_counter()
    with torch.inference_mode():
        if a.task == "text-encode":
            g = gemma()
            build = time.perf_counter() - t0
            ids = torch.randint(3, 250000, (1, a.tokens))
            mask = torch.ones_like(ids)
            times = timed(a.runs, lambda: g(ids, attention_mask=mask)[0])
        elif a.task == "forward":
            m = transformer(a.model)
            build = time.perf_counter() - t0
            sprint = SANA[a.model][5]
            x = torch.randn(a.batch, 32, s, s)
            ehs = torch.randn(a.batch, 300, 2304)
            mask = torch.ones(a.batch, 300, dtype=torch.int64)
            t = torch.full((a.batch,), 500.0)
            kw = {"guidance": torch.full((a.batch,), 0.45)} if sprint else {}
            times = timed(a.runs, lambda: m(x, encoder_hidden_states=ehs, encoder_attention_mask=mask, timestep=t, **kw)[0])
        else:
            from diffusers import DPMSolverMultistepScheduler, SanaPipeline, SanaSprintPipeline, SCMScheduler

            sprint = SANA[a.model][5]
            g, m, v = gemma(), transformer(a.model), vae()
            build = time.perf_counter() - t0
            if sprint:
                pipe = SanaSprintPipeline(tokenizer=None, text_encoder=None, vae=v, transformer=m,
                                          scheduler=SCMScheduler(prediction_type="trigflow", sigma_data=0.5))
            else:
                pipe = SanaPipeline(tokenizer=None, text_encoder=None, vae=v, transformer=m,
                                    scheduler=DPMSolverMultistepScheduler(flow_shift=3.0, use_flow_sigmas=True, prediction_type="flow_prediction"))
            pipe.set_progress_bar_config(disable=True)
            steps = a.steps or (2 if sprint else 20)
            ph = [0.0, 0.0]

            def once():
                t = time.perf_counter()
                ids = torch.randint(3, 250000, (1, a.tokens))
                rows = [g(ids, attention_mask=torch.ones_like(ids))[0][:, -300:] for _ in range(a.batch)]
                pe = torch.cat(rows)
                pm = torch.ones(a.batch, 300, dtype=torch.int64)
                kw = {}
                if not sprint and a.cfg > 1:
                    nid = torch.randint(3, 250000, (1, 300))
                    ne = g(nid, attention_mask=torch.ones_like(nid))[0].repeat(a.batch, 1, 1)
                    # The pipeline defaults negative_prompt to "", which it refuses beside embeddings.
                    kw = dict(negative_prompt=None, negative_prompt_embeds=ne, negative_prompt_attention_mask=pm)
                ph[0] = time.perf_counter() - t
                t = time.perf_counter()
                extra = {} if sprint else dict(use_resolution_binning=False)
                pipe(prompt_embeds=pe, prompt_attention_mask=pm, height=a.res, width=a.res, num_inference_steps=steps,
                     guidance_scale=a.cfg, output_type="pt", **extra, **kw)
                ph[1] = time.perf_counter() - t

            # No warm-up, as on the Rust side: a one-shot run pays the first call's costs too.
            times = []
            for _ in range(max(a.runs, 1)):
                t = time.perf_counter()
                once()
                times.append(time.perf_counter() - t)
            phases = {"text_s": ph[0], "sampling_and_decode_s": ph[1]}
    times_sorted = sorted(times)
    n = len(times_sorted)
    median = times_sorted[n // 2] if n % 2 else 0.5 * (times_sorted[n // 2 - 1] + times_sorted[n // 2])
    print(json.dumps({"impl": "torch", "model": a.model, "task": a.task, "res": a.res, "batch": a.batch, "tokens": a.tokens,
                      "threads": a.threads, "median_s": median, "min_s": times_sorted[0], "all_s": times, "build_s": build,
                      "phases": phases, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
