"""Small synthetic paired pixel sets for the pixel-branch tests (no real data needed)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def photo_like(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth colour field with sensor-like per-pixel noise (the texture a decoder cannot reproduce)."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(xx * rng.uniform(2, 8) + rng.uniform(0, 6)) + np.cos(yy * rng.uniform(2, 8)) for _ in range(3)], -1)
    img = 128 + 50 * base + rng.normal(0, 12, size=(h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def reconstruct(arr: np.ndarray) -> np.ndarray:
    """A stand-in decoder: 2×2 average, nearest up-sampling back, re-quantised (leaves up-sampling traces)."""
    h, w = arr.shape[0] // 2 * 2, arr.shape[1] // 2 * 2
    a = arr[:h, :w].astype(np.float32)
    small = (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]) / 4
    up = small.repeat(2, 0).repeat(2, 1)
    out = arr.copy()
    out[:h, :w] = np.clip(np.rint(up), 0, 255).astype(np.uint8)
    return out


def make_pixel_pair_set(root: Path, n: int = 12, size: tuple[int, int] = (72, 64), seed: int = 0) -> Path:
    """Write n (real, reconstruction) PNG pairs and a manifest.csv with pair_id / source columns."""
    from PIL import Image

    root = Path(root)
    (root / "real").mkdir(parents=True, exist_ok=True)
    (root / "recon").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n):
        h, w = size[1] + 8 * int(rng.integers(0, 3)), size[0] + 8 * int(rng.integers(0, 3))
        real = photo_like(rng, h, w)
        fake = reconstruct(real)
        Image.fromarray(real).save(root / "real" / f"p{k:03d}.png")
        Image.fromarray(fake).save(root / "recon" / f"p{k:03d}.png")
        for label, sub in ((0, "real"), (1, "recon")):
            rows.append({"path": f"{sub}/p{k:03d}.png", "label": label, "generator": "" if label == 0 else "toy-decoder",
                         "subset": "toy", "pair_id": f"p{k:03d}", "source": f"p{k:03d}"})
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root / "manifest.csv"
