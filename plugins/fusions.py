"""Built-in fusion rules: ``or`` (the paper's rule), ``and``, ``max`` and ``weighted``."""

from __future__ import annotations

from typing import Mapping

import numpy as np
from pydantic import Field

from aligncore import hookimpl
from aligncore.fusion import (Fusion, FusionConfig, FusionOutput, rescale_at_threshold, stack_scores,
                              threshold_for_fpr)


class OrFusionConfig(FusionConfig):
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="Per-branch thresholds {branch: t}; branches not listed use default_threshold."
    )
    default_threshold: float = Field(0.5, ge=0.0, le=1.0, description="Threshold for branches without their own.")


class OrFusion(Fusion):
    """Fake if any branch's score reaches its threshold (logical OR, as in AlignGemini)."""

    name = "or"
    help = "Logical OR: fake if any branch's score is at or above its own threshold."
    config_class = OrFusionConfig
    config: OrFusionConfig

    def rescaled(self, scores: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Each branch's score mapped so its own threshold lands on 0.5, and the rows no branch scored."""
        names, mat = stack_scores(scores)
        cols = [rescale_at_threshold(mat[:, j], self.config.thresholds.get(n, self.config.default_threshold))
                for j, n in enumerate(names)]
        rescaled = np.column_stack(cols)
        return rescaled, np.isnan(rescaled).all(axis=1)

    def predict(self, scores: Mapping[str, np.ndarray]) -> FusionOutput:
        # the largest rescaled score: "fused >= 0.5" is exactly "some branch reached its threshold",
        # and the fused score stays continuous for AP/AUC
        rescaled, all_nan = self.rescaled(scores)
        fused = np.where(all_nan, np.nan, np.nanmax(np.where(np.isnan(rescaled), -np.inf, rescaled), axis=1))
        return FusionOutput(fused, np.nan_to_num(fused, nan=0.0) >= 0.5)

    def decision_threshold(self) -> float:
        return 0.5  # each branch's own threshold is mapped to 0.5 before they are combined

    def calibrate(self, scores: Mapping[str, np.ndarray], labels: np.ndarray, target_fpr: float) -> "OrFusion":
        """Per-branch thresholds: each branch is cut at the same real-FPR level q, the largest q for
        which the combined rule stays within ``target_fpr`` on the calibration reals."""
        self.config.thresholds = calibrate_per_branch(self, scores, labels, target_fpr)
        return self


def calibrate_per_branch(fusion, scores: Mapping[str, np.ndarray], labels: np.ndarray, target_fpr: float) -> dict[str, float]:
    labels = np.asarray(labels, dtype=int)
    names, mat = stack_scores(scores)
    reals = mat[labels == 0]

    def thresholds_at(q: float) -> dict[str, float]:
        return {n: threshold_for_fpr(reals[:, j], q) for j, n in enumerate(names)}

    def fpr_at(q: float) -> float:
        fusion.config.thresholds = thresholds_at(q)
        return float(fusion.predict({n: reals[:, j] for j, n in enumerate(names)}).verdict.mean())

    lo, hi = 0.0, 1.0  # fpr_at is non-decreasing in q for OR and AND alike
    if fpr_at(hi) <= target_fpr:
        lo = hi
    else:
        for _ in range(40):
            mid = (lo + hi) / 2
            if fpr_at(mid) <= target_fpr:
                lo = mid
            else:
                hi = mid
    return thresholds_at(lo)


class AndFusion(OrFusion):
    """Fake only if every branch that scored the image reaches its threshold."""

    name = "and"
    help = "Logical AND: fake only if every branch's score is at or above its own threshold."

    def predict(self, scores: Mapping[str, np.ndarray]) -> FusionOutput:
        rescaled, all_nan = self.rescaled(scores)
        # the smallest rescaled score: ">= 0.5" is exactly "every scoring branch reached its threshold"
        fused = np.where(all_nan, np.nan, np.nanmin(np.where(np.isnan(rescaled), np.inf, rescaled), axis=1))
        return FusionOutput(fused, np.nan_to_num(fused, nan=0.0) >= 0.5)


class MaxFusion(Fusion):
    """The largest raw branch score against one threshold (OR without per-branch thresholds)."""

    name = "max"
    help = "Largest branch score, fake at or above one shared threshold."

    def predict(self, scores: Mapping[str, np.ndarray]) -> FusionOutput:
        names, mat = stack_scores(scores)
        all_nan = np.isnan(mat).all(axis=1)
        fused = np.where(all_nan, np.nan, np.nanmax(np.where(np.isnan(mat), -np.inf, mat), axis=1))
        return FusionOutput(fused, np.nan_to_num(fused, nan=0.0) >= self.config.threshold)


class WeightedFusionConfig(FusionConfig):
    weights: dict[str, float] = Field(
        default_factory=dict, description="Per-branch weights {branch: w}; branches not listed get weight 1."
    )


class WeightedFusion(Fusion):
    """Weighted mean of branch scores against one threshold."""

    name = "weighted"
    help = "Weighted mean of the branch scores, fake at or above the threshold."
    config_class = WeightedFusionConfig
    config: WeightedFusionConfig

    def predict(self, scores: Mapping[str, np.ndarray]) -> FusionOutput:
        names, mat = stack_scores(scores)
        w = np.array([self.config.weights.get(n, 1.0) for n in names], dtype=float)
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError("weighted fusion needs non-negative weights with a positive sum")
        present = ~np.isnan(mat)
        wsum = (present * w).sum(axis=1)
        fused = np.where(wsum > 0, np.nansum(mat * w, axis=1) / np.where(wsum > 0, wsum, 1.0), np.nan)
        return FusionOutput(fused, np.nan_to_num(fused, nan=0.0) >= self.config.threshold)


@hookimpl
def register_fusions(register):
    register(OrFusion)
    register(AndFusion)
    register(MaxFusion)
    register(WeightedFusion)
