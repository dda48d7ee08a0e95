"""Shared helpers for the scripts that run MIT HAN Lab's ORIGINAL efficientvit diffusion code
(DiT + ADM Gaussian diffusion, UViT/USiT + SiT's ODE sampler) as the reference for DC-AE Studio.

Nothing from efficientvit is copied here: the original modules are imported from a checkout whose
path is given by the EFFICIENTVIT_DIR environment variable (or an --efficientvit-dir argument).
A plain export of the repository is enough (no .git needed), e.g.

    git --git-dir=<mirror> archive HEAD efficientvit | tar -x -C /tmp/efficientvit

Import strategy: `efficientvit.diffusioncore.models.{dit,uvit}` are imported as they are. The only
interference is that the package __init__ of `efficientvit.apps.utils` (which would import onnx,
onnxsim, torchvision datasets, ... through export.py / image.py) is NOT executed: an empty package
object whose __path__ is the real folder is registered under that name first, so
`efficientvit.apps.utils.dist` (needed by uvit.py for is_master) is loaded from the real file.
No module content is stubbed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
FIXTURES = os.path.join(REPO, "tests", "fixtures")


# ----------------------------------------------------------------------------------------
# Importing the original code
# ----------------------------------------------------------------------------------------


def efficientvit_dir(arg: str | None = None) -> str:
    d = arg or os.environ.get("EFFICIENTVIT_DIR")
    if not d:
        raise SystemExit("set EFFICIENTVIT_DIR (or --efficientvit-dir) to a checkout/export of mit-han-lab/efficientvit")
    d = os.path.abspath(d)
    probe = os.path.join(d, "efficientvit", "diffusioncore", "models", "dit.py")
    if not os.path.isfile(probe):
        raise SystemExit(f"{d} does not look like an efficientvit checkout (no {probe})")
    return d


def efficientvit_commit(d: str, arg: str | None = None) -> str | None:
    """The commit of the checkout: --efficientvit-commit, else `git rev-parse HEAD` in the folder,
    else $EFFICIENTVIT_COMMIT, else None (a plain export has no .git)."""
    if arg:
        return arg
    try:
        out = subprocess.run(["git", "-C", d, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and len(out.stdout.strip()) == 40:
            return out.stdout.strip()
    except Exception:
        pass
    return os.environ.get("EFFICIENTVIT_COMMIT")


def import_efficientvit(d: str | None = None, quiet: bool = True):
    """Returns a namespace with the original modules: dit, uvit, gd (gaussian_diffusion),
    respace, dit_sampler, sit_sampler, integrators, transport."""
    d = efficientvit_dir(d)
    if d not in sys.path:
        sys.path.insert(0, d)
    name = "efficientvit.apps.utils"
    if name not in sys.modules:
        pkg = types.ModuleType(name)
        pkg.__path__ = [os.path.join(d, "efficientvit", "apps", "utils")]
        pkg.__package__ = name
        sys.modules[name] = pkg
    import importlib

    # UViT.__init__ calls efficientvit.apps.utils.dist.is_master(), which reads os.environ["RANK"];
    # these are the values the original dist_init() sets itself when no process group can be made.
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.setdefault(k, "0" if k != "WORLD_SIZE" else "1")
    ns = types.SimpleNamespace()
    ns.dir = d
    redirect = contextlib.redirect_stdout(sys.stderr) if quiet else contextlib.nullcontext()
    with redirect:
        ns.dit = importlib.import_module("efficientvit.diffusioncore.models.dit")
        ns.uvit = importlib.import_module("efficientvit.diffusioncore.models.uvit")
        ns.dit_sampler = importlib.import_module("efficientvit.diffusioncore.models.dit_sampler")
        ns.gd = importlib.import_module("efficientvit.diffusioncore.models.dit_sampler.gaussian_diffusion")
        ns.respace = importlib.import_module("efficientvit.diffusioncore.models.dit_sampler.respace")
        ns.sit_sampler = importlib.import_module("efficientvit.diffusioncore.models.sit_sampler")
        ns.integrators = importlib.import_module("efficientvit.diffusioncore.models.sit_sampler.integrators")
        ns.transport = importlib.import_module("efficientvit.diffusioncore.models.sit_sampler.transport")
    return ns


def versions() -> dict:
    import numpy
    import torch

    v = {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": numpy.__version__}
    for mod in ("timm", "torchvision", "torchdiffeq", "scipy", "einops", "safetensors", "diffusers"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception:
            pass
    return v


# ----------------------------------------------------------------------------------------
# Random weights
# ----------------------------------------------------------------------------------------


def randomize_(module, seed: int, *, skip=(), std_for=None):
    """Seeded random values for every parameter (state-dict order), written in place.

    Default rule, as for uvit-tiny: weights of Linear / Conv std 1/sqrt(fan_in), biases std 0.1,
    LayerNorm weight 1 + 0.1 N and bias 0.1 N, embedding tables std 1.
    `std_for(name, param) -> (mean, std) | None` overrides the rule for a parameter; names in
    `skip` are left untouched."""
    import torch

    g = torch.Generator().manual_seed(seed)
    norm_types = (torch.nn.LayerNorm, torch.nn.GroupNorm)
    owners = {}
    for mname, mod in module.named_modules():
        for pname, _ in mod.named_parameters(recurse=False):
            owners[f"{mname}.{pname}" if mname else pname] = (mod, pname)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name in skip:
                continue
            rule = std_for(name, p) if std_for is not None else None
            if rule is None:
                mod, pname = owners[name]
                if isinstance(mod, norm_types):
                    rule = (1.0, 0.1) if pname == "weight" else (0.0, 0.1)
                elif isinstance(mod, torch.nn.Embedding):
                    rule = (0.0, 1.0)
                elif pname == "bias" or p.dim() == 1:
                    rule = (0.0, 0.1)
                else:
                    rule = (0.0, 1.0 / math.sqrt(p[0].numel()))
            mean, std = rule
            tmp = torch.empty(p.shape, dtype=torch.float32)
            tmp.normal_(mean, std, generator=g)
            p.copy_(tmp)
    return module


# ----------------------------------------------------------------------------------------
# Recording the random draws of the original code
# ----------------------------------------------------------------------------------------


class RandomTape(contextlib.AbstractContextManager):
    """While active, torch.randn / torch.randn_like are wrapped.

    mode "record": calls through to the real functions and keeps every output (in call order).
    mode "replay": returns the recorded tensors again, in the same order, cast to the requested
    dtype (randn: `dtype=` or float64 when `replay_dtype` is set; randn_like: the dtype of its
    argument), checking shapes. Used to rerun a case in float64 with the same noise."""

    def __init__(self, mode="record", tape=None, replay_dtype=None):
        import torch

        self.torch = torch
        self.mode = mode
        self.randn = [] if tape is None else list(tape.randn)
        self.randn_like = [] if tape is None else list(tape.randn_like)
        self.replay_dtype = replay_dtype
        self._i = 0
        self._j = 0

    def __enter__(self):
        torch = self.torch
        self._real_randn = torch.randn
        self._real_randn_like = torch.randn_like
        tape = self

        def randn(*args, **kwargs):
            if tape.mode == "record":
                out = tape._real_randn(*args, **kwargs)
                tape.randn.append(out.detach().clone())
                return out
            src = tape.randn[tape._i]
            tape._i += 1
            shape = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)) else args
            assert tuple(src.shape) == tuple(shape), (src.shape, shape)
            dtype = kwargs.get("dtype") or tape.replay_dtype or src.dtype
            return src.to(dtype=dtype, device=kwargs.get("device") or "cpu").clone()

        def randn_like(x, *args, **kwargs):
            if tape.mode == "record":
                out = tape._real_randn_like(x, *args, **kwargs)
                tape.randn_like.append(out.detach().clone())
                return out
            src = tape.randn_like[tape._j]
            tape._j += 1
            assert src.shape == x.shape, (src.shape, x.shape)
            return src.to(dtype=kwargs.get("dtype") or x.dtype, device=x.device).clone()

        torch.randn = randn
        torch.randn_like = randn_like
        return self

    def __exit__(self, *exc):
        self.torch.randn = self._real_randn
        self.torch.randn_like = self._real_randn_like
        if self.mode == "replay" and exc[0] is None:
            assert self._i == len(self.randn) and self._j == len(self.randn_like), "replay did not use the whole tape"
        return False


@contextlib.contextmanager
def patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


@contextlib.contextmanager
def float64_reference(ev, full: bool = True):
    """Lets the ORIGINAL modules run after model.double(). The original hard-casts a few things to
    float32 (`.float()`), which would either break a float64 model or keep float32 rounding:
      - the sinusoidal timestep embeddings (dit.TimestepEmbedder.timestep_embedding, uvit.timestep_embedding)
        compute `t[:, None].float() * freqs` with float32 freqs;
      - ADM's schedule coefficients are gathered by gaussian_diffusion._extract_into_tensor(...).float();
      - UViT's "flash" attention casts q, k, v with .float() before SDPA.
    full=True: those are computed in float64 too (the same formulas, in float64): the spread then
    measures everything the float32 reference rounds.
    full=False: the original float32 casts are kept (timestep embedding cast up after the fact), the
    attention uses UViT's own "math" mode (the flash path cannot run a float64 model)."""
    import torch

    dit, uvit, gd = ev.dit, ev.uvit, ev.gd

    def temb64(t, dim, max_period=10000):
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float64) / half)
        args = t[:, None].double() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    orig_dit_temb = dit.TimestepEmbedder.__dict__["timestep_embedding"]
    orig_uvit_temb = uvit.timestep_embedding
    orig_extract = gd._extract_into_tensor
    orig_mode = uvit.ATTENTION_MODE

    def extract64(arr, timesteps, broadcast_shape):
        res = torch.from_numpy(arr).to(device=timesteps.device)[timesteps]
        while len(res.shape) < len(broadcast_shape):
            res = res[..., None]
        return res + torch.zeros(broadcast_shape, device=timesteps.device, dtype=res.dtype)

    if full:
        dit.TimestepEmbedder.timestep_embedding = staticmethod(temb64)
        uvit.timestep_embedding = temb64
        gd._extract_into_tensor = extract64
    else:
        dit.TimestepEmbedder.timestep_embedding = staticmethod(
            lambda t, dim, max_period=10000: orig_dit_temb.__func__(t, dim, max_period).double()
        )
        uvit.timestep_embedding = lambda t, dim, max_period=10000: orig_uvit_temb(t, dim, max_period).double()
    uvit.ATTENTION_MODE = "math"
    try:
        yield
    finally:
        dit.TimestepEmbedder.timestep_embedding = orig_dit_temb
        uvit.timestep_embedding = orig_uvit_temb
        gd._extract_into_tensor = orig_extract
        uvit.ATTENTION_MODE = orig_mode


# ----------------------------------------------------------------------------------------
# Fixture files
# ----------------------------------------------------------------------------------------


def tiny_autoencoder(uvit_tiny_dir: str | None = None):
    """(autoencoder.* tensors of uvit-tiny/model.safetensors, its config.json "autoencoder" block)."""
    from safetensors.torch import load_file

    d = uvit_tiny_dir or os.path.join(FIXTURES, "uvit-tiny")
    tensors = load_file(os.path.join(d, "model.safetensors"))
    ae = {k: v for k, v in tensors.items() if k.startswith("autoencoder.")}
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    return ae, cfg["autoencoder"], {k: v for k, v in tensors.items() if k.startswith("diffusion_model.")}


def stats(t) -> dict:
    t64 = t.detach().double()
    return {
        "shape": list(t.shape),
        "mean": float(t64.mean()),
        "std": float(t64.std()) if t.numel() > 1 else 0.0,
        "absmax": float(t64.abs().max()),
    }


def rel_spread(a, ref) -> float:
    """max |a - ref| / max |ref| (both cast to float64)."""
    a64, r64 = a.detach().double(), ref.detach().double()
    return float((a64 - r64).abs().max() / r64.abs().max())


def write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
