#!/usr/bin/env python3
"""Reference numbers and pictures for the Rust imaging tests (never run in CI).

Writes small deterministic image pairs, the PSNR / SSIM that the DC-AE authors' evaluator would
report for them, and the output of the authors' DMCrop preprocessing, under
tests/fixtures/imaging/. The Rust tests read only those committed files.

The evaluator (efficientvit/aecore/evaluator.py) measures uint8 images: PSNR as
10*log10(255^2 / mean((a-b)^2)) in float32 per image, and SSIM with
torchmetrics.image.StructuralSimilarityIndexMeasure(data_range=(0.0, 255.0)). The float tuple makes
torchmetrics clamp to float32, so the uint8 inputs are measured in float32. SSIM is also given in
float64 (what the Rust code computes) and with scikit-image's valid-window convention.

Needs: numpy, pillow, scikit-image, torch (CPU is enough) and torchmetrics.
Run from the repository root:  python3 tests/python/ref_metrics.py
"""

import json
import math
import os

import numpy as np
import skimage
import torch
import torchmetrics
from PIL import Image
from skimage.metrics import structural_similarity
from torchmetrics.functional.image import structural_similarity_index_measure
from torchmetrics.image import StructuralSimilarityIndexMeasure

OUT = os.path.join("tests", "fixtures", "imaging")


def save(arr, name):
    Image.fromarray(arr, "RGB").save(os.path.join(OUT, name), optimize=True)
    return name


def pattern(w, h, seed, noise=6):
    """Smooth gradients, hard-edged blocks and a little noise: cheap to store, hard to resample."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 127.5 + 127.5 * np.sin(x / 7.0 + y / 11.0)
    g = np.where(((x // 9) + (y // 6)) % 2 == 0, 230.0, 20.0)
    b = 255.0 * x / max(w - 1, 1)
    img = np.stack([r, g, b], axis=-1) + rng.integers(-noise, noise + 1, size=(h, w, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def perturb(a, seed, amplitude):
    rng = np.random.default_rng(seed)
    noise = rng.integers(-amplitude, amplitude + 1, size=a.shape)
    return np.clip(a.astype(np.int64) + noise, 0, 255).astype(np.uint8)


def shift_blur(a):
    """A structurally different image of the same size: shifted by one pixel and box-blurred."""
    f = np.roll(a.astype(np.float64), 1, axis=1)
    f = (f + np.roll(f, 1, axis=0) + np.roll(f, -1, axis=0)) / 3.0
    return np.clip(np.rint(f), 0, 255).astype(np.uint8)


def nchw(a):
    return torch.from_numpy(a).permute(2, 0, 1).unsqueeze(0)


def psnr_authors(a, b):
    mse = (nchw(a).float() - nchw(b).float()).square().mean(dim=(1, 2, 3))
    return float(10 * torch.log10(255.0**2 / mse))


def psnr_f64(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ssim_authors(a, b):
    """Exactly the evaluator's call: the module API on uint8 tensors (float32 inside)."""
    metric = StructuralSimilarityIndexMeasure(data_range=(0.0, 255.0))
    metric.update(nchw(a), nchw(b))
    return float(metric.compute())


def ssim_float64(a, b):
    """The same torchmetrics algorithm in float64 (the module API would store its sum in float32)."""
    ta, tb = nchw(a).double(), nchw(b).double()
    return float(structural_similarity_index_measure(ta, tb, data_range=(0.0, 255.0)))


def ssim_valid(a, b):
    if min(a.shape[:2]) < 11:
        return None
    return float(
        structural_similarity(
            a, b, data_range=255, channel_axis=2, gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False,
        )
    )


def dm_crop(pil_image, image_size):
    """The authors' DMCrop (ADM center_crop_arr), written out with the same PIL calls."""
    if pil_image.size == (image_size, image_size):
        return pil_image
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return arr[crop_y : crop_y + image_size, crop_x : crop_x + image_size]


def main():
    os.makedirs(OUT, exist_ok=True)
    base = pattern(64, 48, seed=1)
    odd = pattern(37, 29, seed=2)
    small = pattern(16, 16, seed=3)
    tiny = pattern(8, 9, seed=4)
    pairs = [
        ("noise", base, perturb(base, 10, 8)),
        ("heavy_noise", base, perturb(base, 11, 60)),
        ("shift_blur", odd, shift_blur(odd)),
        ("small", small, perturb(small, 12, 20)),
        ("tiny", tiny, perturb(tiny, 13, 30)),
        ("identical", odd, odd.copy()),
    ]
    metrics = []
    for name, a, b in pairs:
        fa, fb = save(a, f"pair_{name}_a.png"), save(b, f"pair_{name}_b.png")
        psnr = psnr_f64(a, b)
        metrics.append(
            {
                "name": name,
                "a": fa,
                "b": fb,
                "psnr": None if math.isinf(psnr) else psnr,
                "psnr_authors_float32": None if math.isinf(psnr) else psnr_authors(a, b),
                "ssim_authors_float32": ssim_authors(a, b),
                "ssim_torchmetrics_float64": ssim_float64(a, b),
                "ssim_valid_skimage": ssim_valid(a, b),
            }
        )

    crops = []
    # 202x139: no halving for 96; one exact-ish halving for 64; two halvings with odd sides (so
    # BOX's footprint is not exactly 2x2) for 32. 21x13 is scaled up. For 6x4 -> 3 the long side
    # is round(4.5), where Python's ties-to-even gives 4, not 5.
    src_big = save(pattern(202, 139, seed=5, noise=2), "dmcrop_src_202x139.png")
    src_small = save(pattern(21, 13, seed=6), "dmcrop_src_21x13.png")
    src_tie = save(pattern(6, 4, seed=7), "dmcrop_src_6x4.png")
    cases = [(src_big, 96), (src_big, 64), (src_big, 32), (src_small, 32), (src_tie, 3)]
    for src, size in cases:
        img = Image.open(os.path.join(OUT, src)).convert("RGB")
        out = save(np.asarray(dm_crop(img, size)), f"dmcrop_{os.path.splitext(src)[0][11:]}_to_{size}.png")
        crops.append({"source": src, "size": size, "expected": out})

    info = {
        "generated_by": "tests/python/ref_metrics.py",
        "versions": {
            "numpy": np.__version__,
            "pillow": Image.__version__,
            "scikit-image": skimage.__version__,
            "torch": torch.__version__,
            "torchmetrics": torchmetrics.__version__,
        },
        "metrics": metrics,
        "dm_crop": crops,
    }
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
