"""A fusion: per-branch scores -> one fused score and verdict."""

from __future__ import annotations

import numpy as np

from aligncore import Fusion, FusionOutput
from aligncore.fusion import stack_scores


class MedianFusion(Fusion):
    """The median of the branches that scored an image; fake at or above ``threshold`` (from FusionConfig)."""

    name = "median"
    help = "Example plugin: median of the branch scores, fake at or above the threshold."

    def predict(self, scores):
        """``{branch: array (n,)}`` with NaN where a branch could not score an image -> FusionOutput."""
        names, mat = stack_scores(scores)  # (n, branches) in a stable order
        all_nan = np.isnan(mat).all(axis=1)
        fused = np.full(len(mat), np.nan)
        fused[~all_nan] = np.nanmedian(mat[~all_nan], axis=1)
        return FusionOutput(fused, np.nan_to_num(fused, nan=0.0) >= self.config.threshold)
