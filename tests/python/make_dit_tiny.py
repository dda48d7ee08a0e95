"""Writes tests/fixtures/dit-tiny: a tiny class-conditional DiT built with the ORIGINAL efficientvit
`DiT` module (efficientvit/diffusioncore/models/dit.py) on the tiny autoencoder of uvit-tiny, with
the original ADM sampler (dit_sampler: SpacedDiffusion.p_sample_loop / ddim_sample_loop) as reference.

usage:
  EFFICIENTVIT_DIR=/tmp/efficientvit /tmp/dcae-torch/bin/python tests/python/make_dit_tiny.py \
      [--efficientvit-commit SHA] [--out tests/fixtures/dit-tiny] [--threads 2]

Writes config.json, model.safetensors (autoencoder.* copied from uvit-tiny + diffusion_model.*),
expected.safetensors and notes.json (seeds, what each tensor is, and the reference's own
float32-vs-float64 spread per case). Runs in about a minute on 2 CPU threads.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import evit_zoo as Z  # noqa: E402

SEED_WEIGHTS = 20
SEED_FWD_X = 21
NULL_ID = 10

DIT = dict(depth=2, hidden_size=64, num_heads=4, mlp_ratio=4.0, in_channels=4, patch_size=1, input_size=4,
           num_classes=10, learn_sigma=True)
SAMPLER = {"name": "adm", "steps": 250, "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02}
SCALING_FACTOR = 0.3189
FINAL_LINEAR_GAIN = 0.5  # final_layer.linear weight std = 0.5/sqrt(fan_in): outputs ~0.7 std, var values in ~[-2, 2]

FWD_T = [999.0, 421.0, 0.0]
FWD_Y = [3, 7, NULL_ID]

# prefix, loop, respaced steps N, cfg scale, labels, generator seed of the initial noise, torch.manual_seed for the step noise
CASES = [
    dict(prefix="adm250_cfg1p3", loop="p_sample", steps=250, scale=1.3, labels=[3, 7], noise_seed=2000, rng_seed=2100),
    dict(prefix="adm25_cfg4", loop="p_sample", steps=25, scale=4.0, labels=[5, 1], noise_seed=2001, rng_seed=2101),
    dict(prefix="adm10_cfg1", loop="p_sample", steps=10, scale=1.0, labels=[0, 9], noise_seed=2002, rng_seed=2102),
    dict(prefix="ddim25_cfg4", loop="ddim", steps=25, scale=4.0, labels=[2, 4], noise_seed=2003, rng_seed=2103),
]


def build_model(ev):
    import torch

    cfg = ev.dit.DiTConfig(
        input_size=DIT["input_size"], patch_size=DIT["patch_size"], in_channels=DIT["in_channels"],
        hidden_size=DIT["hidden_size"], depth=DIT["depth"], num_heads=DIT["num_heads"], mlp_ratio=DIT["mlp_ratio"],
        class_dropout_prob=0.1, num_classes=DIT["num_classes"], learn_sigma=DIT["learn_sigma"],
        use_checkpoint=False, eval_scheduler="GaussianDiffusion", train_scheduler="GaussianDiffusion",
    )
    torch.manual_seed(0)  # the original initialize_weights draws from the global RNG; all but pos_embed is redrawn
    model = ev.dit.DiT(cfg).eval()
    pos = model.pos_embed.detach().clone()

    def std_for(name, p):
        if name == "final_layer.linear.weight":
            return (0.0, FINAL_LINEAR_GAIN / math.sqrt(p.shape[1]))
        return None

    Z.randomize_(model, SEED_WEIGHTS, skip=("pos_embed",), std_for=std_for)
    assert torch.equal(pos, model.pos_embed), "pos_embed must stay the original sin-cos table"
    return model, cfg


def run_case(ev, model, case, tape=None):
    """One sampling case through the UNMODIFIED DiT.generate. Returns a dict of tensors + info.
    tape=None records the random draws; a tape replays them (float64 rerun)."""
    import torch

    n = case["steps"]
    # respacing as the original does it (DiT.__init__ uses create_diffusion(str(250)))
    model.eval_scheduler = ev.dit_sampler.create_diffusion(str(n))
    sched = model.eval_scheduler
    samples_per_step = []
    calls = []

    # record each step's output sample (call-through wrappers on the instance)
    real_step = sched.p_sample if case["loop"] == "p_sample" else sched.ddim_sample

    def step(*a, **k):
        out = real_step(*a, **k)
        samples_per_step.append(out["sample"].detach().clone())
        return out

    if case["loop"] == "p_sample":
        sched.p_sample = step
    else:
        sched.ddim_sample = step
        # generate() calls eval_scheduler.p_sample_loop(fn, shape, noise, clip_denoised=False, model_kwargs, progress,
        # device); ddim_sample_loop has the same signature (eta defaults to 0.0), so generate() itself builds the
        # doubled batch and returns the first half.
        sched.p_sample_loop = sched.ddim_sample_loop

    real_fwd = model.forward_without_cfg

    def fwd(x, t, y):
        calls.append(int(t[0]))
        return real_fwd(x, t, y)

    model.forward_without_cfg = fwd
    labels = torch.tensor(case["labels"], dtype=torch.int64)
    null = torch.full_like(labels, NULL_ID)
    gen = torch.Generator().manual_seed(case["noise_seed"])
    torch.manual_seed(case["rng_seed"])
    rec = Z.RandomTape("record") if tape is None else Z.RandomTape("replay", tape=tape, replay_dtype=torch.float64)
    try:
        with rec:
            latent = model.generate(labels, null, case["scale"], generator=gen)
    finally:
        del model.forward_without_cfg
    b = labels.shape[0]
    x_steps = torch.stack([s[:b] for s in samples_per_step])
    assert torch.equal(x_steps[-1], latent)
    return dict(
        latent=latent, x_steps=x_steps, tape=rec, calls=calls,
        timestep_map=torch.tensor(sched.timestep_map, dtype=torch.int64),
        batch_in_loop=int(samples_per_step[0].shape[0]),
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--efficientvit-dir", default=None)
    ap.add_argument("--efficientvit-commit", default=None)
    ap.add_argument("--out", default=os.path.join(Z.FIXTURES, "dit-tiny"))
    ap.add_argument("--uvit-tiny", default=os.path.join(Z.FIXTURES, "uvit-tiny"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch
    from safetensors.torch import save_file

    torch.set_num_threads(args.threads)
    t_start = time.time()
    ev = Z.import_efficientvit(args.efficientvit_dir)
    commit = Z.efficientvit_commit(ev.dir, args.efficientvit_commit)
    ae_tensors, ae_cfg, _ = Z.tiny_autoencoder(args.uvit_tiny)
    os.makedirs(args.out, exist_ok=True)

    model, cfg = build_model(ev)
    sd = model.state_dict()
    weights = dict(ae_tensors)
    weights.update({"diffusion_model." + k: v.detach().clone().contiguous() for k, v in sd.items()})
    save_file(weights, os.path.join(args.out, "model.safetensors"), metadata={"format": "pt"})
    config = {"model_name": "dit-tiny", "autoencoder": ae_cfg, "scaling_factor": SCALING_FACTOR, "dit": DIT,
              "sampler": SAMPLER}
    Z.write_json(os.path.join(args.out, "config.json"), config)

    model64 = copy.deepcopy(model).double()
    expected = {}
    notes_cases = []

    # ---------------- forward ----------------
    g = torch.Generator().manual_seed(SEED_FWD_X)
    fwd_x = torch.randn(3, DIT["in_channels"], DIT["input_size"], DIT["input_size"], generator=g)
    fwd_t = torch.tensor(FWD_T, dtype=torch.float32)
    fwd_y = torch.tensor(FWD_Y, dtype=torch.int64)
    with torch.no_grad():
        fwd_out = model.forward_without_cfg(fwd_x, fwd_t, fwd_y)
        spread_fwd = {}
        for full in (True, False):
            with Z.float64_reference(ev, full=full):
                o64 = model64.forward_without_cfg(fwd_x.double(), fwd_t, fwd_y)
            spread_fwd["f64_full" if full else "f64_orig_casts"] = Z.rel_spread(fwd_out, o64)
        label_effect = float((model.forward_without_cfg(fwd_x, fwd_t, torch.tensor([5, 2, 10])) - fwd_out).abs().max())
    expected.update(fwd_x=fwd_x, fwd_t=fwd_t, fwd_y=fwd_y, fwd_out=fwd_out)

    # ---------------- sampling ----------------
    for case in CASES:
        p = case["prefix"]
        r = run_case(ev, model, case)
        tape = r["tape"]
        b = len(case["labels"])
        noise = tape.randn[0]
        assert len(tape.randn) == 1
        expected[f"{p}_labels"] = torch.tensor(case["labels"], dtype=torch.int64)
        expected[f"{p}_cfg_scale"] = torch.tensor([case["scale"]], dtype=torch.float32)
        expected[f"{p}_steps"] = torch.tensor([case["steps"]], dtype=torch.int64)
        expected[f"{p}_noise"] = noise
        if case["loop"] == "p_sample":
            expected[f"{p}_step_noise"] = torch.stack([d[:b] for d in tape.randn_like])
        expected[f"{p}_x_steps"] = r["x_steps"]
        expected[f"{p}_latent"] = r["latent"]
        expected[f"{p}_timestep_map"] = r["timestep_map"]

        spreads = {}
        for full in (True, False):
            with Z.float64_reference(ev, full=full):
                r64 = run_case(ev, model64, case, tape=tape)
            spreads["f64_full" if full else "f64_orig_casts"] = {
                "latent": Z.rel_spread(r["latent"], r64["latent"]),
                "x_steps": Z.rel_spread(r["x_steps"], r64["x_steps"]),
                "max_abs_latent": float((r["latent"].double() - r64["latent"]).abs().max()),
            }
        notes_cases.append({
            "prefix": p + "_",
            "loop": ("p_sample_loop via the unmodified DiT.generate" if case["loop"] == "p_sample" else
                     "ddim_sample_loop (eta 0.0) via the unmodified DiT.generate, with eval_scheduler.p_sample_loop "
                     "bound to the same object's ddim_sample_loop (identical signature)"),
            "respacing": f"model.eval_scheduler = create_diffusion(str({case['steps']}))",
            "labels": case["labels"],
            "null_labels": [NULL_ID] * b,
            "cfg_scale": case["scale"],
            "guided": case["scale"] != 1.0,
            "batch_in_loop": r["batch_in_loop"],
            "network_calls": len(r["calls"]),
            "network_timesteps_first_last": [r["calls"][0], r["calls"][-1]],
            "noise": f"torch.randn([{b}, 4, 4, 4], generator=torch.Generator().manual_seed({case['noise_seed']})), "
                     "drawn inside DiT.generate",
            "step_noise": (f"th.randn_like(x) inside p_sample (global RNG; torch.manual_seed({case['rng_seed']}) before "
                           "generate); stored: rows 0..B of each draw" if case["loop"] == "p_sample" else
                           "none (ddim_sample draws randn_like too, but multiplies it by sigma = 0 at eta 0)"),
            "stats": {"noise": Z.stats(noise), "latent": Z.stats(r["latent"])},
            "f32_vs_f64_rel": spreads,
        })
        print(f"{p}: calls {len(r['calls'])} latent absmax {float(r['latent'].abs().max()):.4g} "
              f"spread {spreads['f64_full']['latent']:.3g}", file=sys.stderr)

    model.eval_scheduler = ev.dit_sampler.create_diffusion(str(250))
    save_file({k: v.contiguous() for k, v in expected.items()}, os.path.join(args.out, "expected.safetensors"),
              metadata={"format": "pt"})

    notes = {
        "case": "dit-tiny",
        "kind": "dit_adm",
        "generator": "tests/python/make_dit_tiny.py",
        "reference": {
            "code": "mit-han-lab/efficientvit, imported unmodified from EFFICIENTVIT_DIR: "
                    "efficientvit/diffusioncore/models/dit.py (DiT, DiTConfig), dit_sampler/ (create_diffusion, "
                    "SpacedDiffusion, GaussianDiffusion)",
            "efficientvit_commit": commit,
            "import": "efficientvit.apps.utils's package __init__ is skipped (an empty package object with the real "
                      "__path__ is registered first) so that onnx/onnxsim/torchvision datasets are not imported; "
                      "no module content is stubbed",
            "versions": Z.versions(),
            "device": "cpu, float32, torch.set_num_threads(%d)" % args.threads,
        },
        "dit": dict(DIT, class_dropout_prob=0.1, use_checkpoint=False, eval_scheduler="GaussianDiffusion",
                    params=sum(v.numel() for v in sd.values()), keys=len(sd),
                    label_table_rows=int(sd["y_embedder.embedding_table.weight"].shape[0]),
                    seed_weights=SEED_WEIGHTS,
                    weights_init=(
                        "DiT(cfg) as constructed (initialize_weights: sin-cos pos_embed, zeroed adaLN and final "
                        "layer), then EVERY parameter except pos_embed redrawn in state-dict order from "
                        f"torch.Generator().manual_seed({SEED_WEIGHTS}): Linear/Conv weights N(0, 1/fan_in), "
                        f"final_layer.linear.weight N(0, ({FINAL_LINEAR_GAIN}^2)/fan_in), biases N(0, 0.1^2), "
                        "label table N(0, 1). pos_embed is the original get_2d_sincos_pos_embed table.")),
        "autoencoder": "autoencoder.* tensors and the config.json \"autoencoder\" block copied verbatim from "
                       "tests/fixtures/uvit-tiny",
        "scaling_factor": SCALING_FACTOR,
        "sampler": SAMPLER,
        "tensors": {
            "fwd_x": "[3,4,4,4] f32, torch.randn(generator=manual_seed(%d))" % SEED_FWD_X,
            "fwd_t": "[3] f32 integer timesteps, fed as is to forward_without_cfg",
            "fwd_y": "[3] int64 labels, %d = the null (unconditional) id" % NULL_ID,
            "fwd_out": "[3,8,4,4] f32 = DiT.forward_without_cfg(fwd_x, fwd_t, fwd_y): channels 0..4 eps, 4..8 the "
                       "learned-range variance values",
            "P_labels": "[2] int64 class labels (the null labels are [10, 10])",
            "P_cfg_scale": "[1] f32 guidance scale passed to generate()",
            "P_steps": "[1] int64 respaced step count N",
            "P_noise": "[2,4,4,4] f32 initial noise (generate's torch.randn with the seeded generator)",
            "P_step_noise": "[N,2,4,4,4] f32, ADM cases only: for each p_sample call (step order, t = N-1 .. 0), "
                            "rows 0..B of its th.randn_like(x) draw. Guided: x is the doubled batch [2B]; only rows "
                            "0..B reach the returned sample (forward_with_cfg reads only the first half of x, and "
                            "generate returns samples.chunk(2)[0]); the draw of rows B..2B is not stored. Unguided "
                            "(cfg 1.0): the batch is not doubled and this is the whole draw. The last step (t = 0) "
                            "is drawn but masked out (nonzero_mask).",
            "P_x_steps": "[N,2,4,4,4] f32, the sample after each step (rows 0..B); P_x_steps[-1] == P_latent",
            "P_latent": "[2,4,4,4] f32, the value generate() returns (NOT divided by scaling_factor)",
            "P_timestep_map": "[N] int64 SpacedDiffusion.timestep_map: step i of the respaced chain (i = N-1 first) "
                              "calls the network with t = timestep_map[i] (int64, via _WrappedModel)",
        },
        "forward": {"t": FWD_T, "y": FWD_Y, "stats_out": Z.stats(fwd_out), "stats_eps": Z.stats(fwd_out[:, :4]),
                    "stats_var_values": Z.stats(fwd_out[:, 4:]), "label_effect_max_abs": label_effect,
                    "f32_vs_f64_rel": spread_fwd},
        "sampling": notes_cases,
        "float64_spread": {
            "definition": "max |f32 - f64| / max |f64| over the tensor; f64 = the same original code after "
                          "model.double(), same weights, same noise (replayed), same labels",
            "f64_full": "the original's hard float32 casts (timestep sinusoid `.float()`, "
                        "_extract_into_tensor(...).float() for the schedule coefficients) replaced by the same "
                        "formulas in float64: measures everything the f32 reference rounds",
            "f64_orig_casts": "those casts kept (sinusoid computed in f32 then upcast; schedule coefficients "
                              "rounded to f32): what is left is the network's and the loop's own arithmetic",
        },
        "notes": [
            "Guidance (forward_with_cfg): eps_half = uncond + s * (cond - uncond) on channels 0..in_channels only; "
            "the variance values (channels 4..8) are NOT guided: row i of the doubled batch keeps its own pass's "
            "values, so the returned first half uses the CONDITIONAL pass's variance values.",
            "forward_with_cfg runs the network on cat([x[:B], x[:B]]), i.e. the second half of the state is "
            "ignored; generate returns samples.chunk(2)[0].",
            "cfg scale 1.0 takes a different branch: no doubling, forward_without_cfg on the B labels.",
            "t reaches the network as int64 original-chain timesteps (timestep_map[i]); the sinusoid is "
            "computed as t.float() * float32 freqs, [cos, sin] order.",
            "The latents are large (|x| up to ~1e3): the network is random, so its eps does not cancel the noise "
            "and the reverse chain scales the initial noise by about prod 1/sqrt(alpha_t) = 1/sqrt(alphas_cumprod[999]) "
            "~ 156. Compare relatively (the spreads below are relative to max |f64|).",
            "clip_denoised=False; model_var_type LEARNED_RANGE: frac = (v + 1) / 2, log var = frac * log(beta_t) + "
            "(1 - frac) * posterior_log_variance_clipped_t, on the RESPACED betas; the schedule arrays are float64 "
            "numpy, gathered and cast to float32 (_extract_into_tensor).",
        ],
        "elapsed_s": round(time.time() - t_start, 1),
    }
    Z.write_json(os.path.join(args.out, "notes.json"), notes)
    for f in os.listdir(args.out):
        os.chmod(os.path.join(args.out, f), 0o644)
    print(f"wrote {args.out} in {time.time() - t_start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
