"""A branch: one detector expert that maps an image to P(fake)."""

from __future__ import annotations

import math

import numpy as np
from pydantic import Field

from aligncore import Branch, BranchConfig


class ColourfulnessConfig(BranchConfig):
    # every field has a description: it is the help `alignctl branches -v` prints
    pivot: float = Field(40.0, gt=0, description="Colourfulness that maps to P(fake) = 0.5.")


class ColourfulnessBranch(Branch):
    """P(fake) rises with colourfulness (Hasler & Suesstrunk); no model, so it runs anywhere."""

    name = "example"
    help = "Example plugin: P(fake) rises with colourfulness (no model)."
    config_class = ColourfulnessConfig
    config: ColourfulnessConfig

    def load(self):
        """Build or load the model here (weights only through aligncore.safeio). This branch has none."""

    def preprocess(self, image):
        """PIL RGB image -> model input. Runs in data-loader workers: never touch the model here."""
        a = np.asarray(image, dtype=np.float64)
        rg = a[..., 0] - a[..., 1]
        yb = 0.5 * (a[..., 0] + a[..., 1]) - a[..., 2]
        return np.array([math.hypot(rg.std(), yb.std()) + 0.3 * math.hypot(rg.mean(), yb.mean())])

    def score_batch(self, batch):
        """Collated inputs -> one P(fake) in [0, 1] per image (called under torch.inference_mode)."""
        x = np.asarray(batch, dtype=np.float64).reshape(-1)
        return [1.0 / (1.0 + math.exp(-(v - self.config.pivot) / 10.0)) for v in x]
