"""Helpers for plugin authors: a fake branch, image fixtures and contract checks.

``FakeBranch`` scores images from simple statistics with no model at all, so a whole
run (store, fusion, metrics, reports) can be exercised in milliseconds.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from pydantic import Field

from .branch import Branch, BranchConfig


class FakeBranchConfig(BranchConfig):
    statistic: Literal["smoothness", "saturation", "brightness"] = Field(
        "smoothness", description="Image statistic the score is a logistic function of (smoothness: "
        "low neighbouring-pixel differences, which many generators leave)."
    )
    center: float = Field(0.0, description="Statistic value (standardised) that maps to 0.5.")
    scale: float = Field(1.0, gt=0, description="Steepness of the logistic map.")
    delay_s: float = Field(0.0, ge=0, description="Sleep per batch (to test interruption); does not change scores.")


class FakeBranch(Branch):
    """Deterministic scores from image statistics (no model): for tests and plumbing checks."""

    name = "fake"
    help = "No model: a logistic function of an image statistic (tests, plumbing checks)."
    config_class = FakeBranchConfig
    nonscoring_fields = Branch.nonscoring_fields | {"delay_s"}
    config: FakeBranchConfig

    def preprocess(self, image) -> np.ndarray:
        arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        gray = arr.mean(axis=2)
        if gray.shape[0] > 1 and gray.shape[1] > 1:
            residual = float(np.abs(np.diff(gray, axis=0)).mean() + np.abs(np.diff(gray, axis=1)).mean())
        else:
            residual = 0.0
        sat = float((arr.max(axis=2) - arr.min(axis=2)).mean())
        return np.array([residual, sat, float(gray.mean())], dtype=np.float64)

    def score_batch(self, batch) -> list[float]:
        if self.config.delay_s:
            time.sleep(self.config.delay_s)
        stats = np.atleast_2d(np.asarray(batch, dtype=np.float64))
        col = {"smoothness": 0, "saturation": 1, "brightness": 2}[self.config.statistic]
        # standardise with fixed constants (typical photo values), never with batch statistics,
        # so a score does not depend on which other images share its batch
        mean, std = {0: (0.06, 0.04), 1: (0.2, 0.1), 2: (0.45, 0.15)}[col]
        z = (stats[:, col] - mean) / std
        if col == 0:
            z = -z  # smoother (lower residual) → more likely generated
        return [1.0 / (1.0 + math.exp(-self.config.scale * (float(v) - self.config.center))) for v in z]


# ---------------------------------------------------------------------- fixtures


def make_image_folder(root: str | Path, n_real: int = 4, n_fake: int = 4, size: tuple[int, int] = (48, 40),
                      seed: int = 0, layout: str = "0_real/1_fake", generators: Sequence[str] = ("genA",)) -> Path:
    """Write a small synthetic labelled set: 'real' images are noisy, 'fake' ones smooth."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    for label, n in ((0, n_real), (1, n_fake)):
        for k in range(n):
            gen = generators[k % len(generators)]
            if layout == "0_real/1_fake":
                d = root / gen / ("0_real" if label == 0 else "1_fake")
            else:
                d = root / ("real" if label == 0 else "fake") / gen
            d.mkdir(parents=True, exist_ok=True)
            w, h = size[0] + int(rng.integers(0, 9)), size[1] + int(rng.integers(0, 9))
            base = rng.uniform(0, 255, size=(1, 1, 3))
            ramp = np.linspace(0, 60, w)[None, :, None]
            noise = rng.normal(0, 30 if label == 0 else 3, size=(h, w, 3))
            arr = np.clip(base + ramp + noise, 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(d / f"{'r' if label == 0 else 'f'}{k:04d}.png")
    return root


def check_branch_contract(branch: Branch, images: Sequence) -> list[float]:
    """Assertions every branch must satisfy; returns the scores. Use it in your plugin's tests."""
    scores = branch.score(list(images))
    assert len(scores) == len(images), "one score per image"
    assert all(0.0 <= s <= 1.0 for s in scores), f"scores must lie in [0, 1]: {scores}"
    again = branch.score(list(images))
    assert np.allclose(scores, again, atol=1e-5), "scoring must be deterministic"
    fp = branch.fingerprint()
    assert isinstance(fp, str) and fp == branch.fingerprint(), "fingerprint must be stable"
    return scores
