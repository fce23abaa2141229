"""The Fusion base class: per-branch P(fake) scores → one fused score and verdict.

Scores arrive as ``{branch_name: array of shape (n,)}``; a NaN marks an image a
branch could not score. Fusions use only numpy (and scikit-learn for learned ones),
so re-fusing stored scores never imports torch or loads a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import numpy as np
from pydantic import Field

from .component import Component, ComponentConfig


class FusionConfig(ComponentConfig):
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="Fused score at or above which an image is called fake.")


@dataclass
class FusionOutput:
    score: np.ndarray  # fused P(fake)-like score in [0, 1], NaN where no branch scored
    verdict: np.ndarray  # bool, True = fake

    def __post_init__(self):
        self.score = np.asarray(self.score, dtype=float)
        self.verdict = np.asarray(self.verdict, dtype=bool)


class Fusion(Component):
    """Subclasses implement :meth:`predict`; learned fusions also :meth:`fit` and the state methods."""

    config_class: ClassVar[type[FusionConfig]] = FusionConfig
    #: True when :meth:`fit` must see labelled scores before :meth:`predict`
    needs_fit: ClassVar[bool] = False
    config: FusionConfig

    @classmethod
    def kind_name(cls) -> str:
        return "fusion"

    def fit(self, scores: Mapping[str, np.ndarray], labels: np.ndarray) -> "Fusion":
        """Fit on labelled scores (calibration split). The default rule has nothing to fit."""
        return self

    def predict(self, scores: Mapping[str, np.ndarray]) -> FusionOutput:
        raise NotImplementedError

    def calibrate(self, scores: Mapping[str, np.ndarray], labels: np.ndarray, target_fpr: float) -> "Fusion":
        """Pick thresholds on a labelled calibration split so that at most ``target_fpr`` of its reals
        are called fake. Default: one threshold on the fused score; rules with per-branch thresholds
        override this."""
        labels = np.asarray(labels, dtype=int)
        fused = self.predict(scores).score
        self.config.threshold = threshold_for_fpr(fused[labels == 0], target_fpr)
        return self

    def decision_threshold(self) -> float:
        """The fused score at or above which :meth:`predict` says fake (drawn in reports). Default: the
        config's ``threshold``; a rule that maps scores so its cut lies elsewhere overrides it."""
        return float(self.config.threshold)

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable fitted state (saved with the run)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


def stack_scores(scores: Mapping[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """Branch names and an (n, k) float matrix, in a stable (sorted) branch order."""
    names = sorted(scores)
    if not names:
        raise ValueError("fusion needs scores from at least one branch")
    mat = np.column_stack([np.asarray(scores[n], dtype=float) for n in names])
    return names, mat


def rescale_at_threshold(s: np.ndarray, t: float) -> np.ndarray:
    """Piecewise-linear map of [0, 1] onto [0, 1] sending ``t`` to 0.5, so thresholds compare across branches."""
    t = min(max(t, 1e-6), 1 - 1e-6)
    return np.where(s < t, s / (2 * t), 0.5 + (s - t) / (2 * (1 - t)))


def threshold_for_fpr(real_scores: np.ndarray, target_fpr: float) -> float:
    """Lowest threshold t in [0, 1] with mean(real >= t) <= target_fpr on these real scores (NaN ignored).

    Ties are respected: if several reals share the score at the cut, all of them fall below t.
    """
    r = np.sort(np.asarray(real_scores, dtype=float)[~np.isnan(np.asarray(real_scores, dtype=float))])[::-1]
    if len(r) == 0:
        raise ValueError("threshold calibration needs scored real images in the calibration split")
    allowed = int(np.floor(target_fpr * len(r) + 1e-9))
    if allowed >= len(r):
        return 0.0
    return float(min(np.nextafter(r[allowed], np.inf), 1.0))
