"""The ``learned`` fusion: logistic regression on logit-transformed branch scores.

It is fitted on a labelled calibration split (``alignctl ablate`` makes one that is
disjoint from the evaluation images), choosing its regularisation strength by stratified
cross-validation, and its state is plain JSON so a run can carry it
(``alignctl run --fusion learned --fusion-state fusions.json``).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from pydantic import Field

from aligncore import hookimpl
from aligncore.errors import AlignCoreError
from aligncore.fusion import Fusion, FusionConfig, FusionOutput, stack_scores

EPS = 1e-4


class LearnedFusionConfig(FusionConfig):
    folds: int = Field(5, ge=2, le=20, description="Cross-validation folds used to choose the regularisation strength.")
    cs: int = Field(10, ge=1, le=50, description="Number of inverse regularisation strengths tried (log-spaced 1e-4..1e4).")
    seed: int = Field(0, description="Seed of the cross-validation fold shuffle.")


def logit_features(mat: np.ndarray) -> np.ndarray:
    """Branch P(fake) → logit; a branch that could not score an image contributes 0 (i.e. 0.5)."""
    p = np.clip(mat, EPS, 1 - EPS)
    z = np.log(p) - np.log1p(-p)
    return np.where(np.isnan(mat), 0.0, z)


class LearnedFusion(Fusion):
    """Logistic regression on logit branch scores, fitted with cross-validation on a calibration split."""

    name = "learned"
    help = "Logistic regression on logit branch scores, fitted (with CV) on a calibration split."
    config_class = LearnedFusionConfig
    needs_fit = True
    config: LearnedFusionConfig

    def __init__(self, config=None, **overrides: Any):
        super().__init__(config, **overrides)
        self._state: dict[str, Any] | None = None

    def fit(self, scores: Mapping[str, np.ndarray], labels: np.ndarray) -> "LearnedFusion":
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold

        names, mat = stack_scores(scores)
        y = np.asarray(labels, dtype=int)
        keep = ~np.isnan(mat).all(axis=1)
        X, y = logit_features(mat[keep]), y[keep]
        counts = np.bincount(y, minlength=2)
        if counts.min() < 2:
            raise AlignCoreError(
                f"the learned fusion needs at least 2 real and 2 fake images to fit; the calibration split has "
                f"{counts[0]} real and {counts[1]} fake. Use a larger dataset or a larger --cal-fraction."
            )
        folds = int(min(self.config.folds, counts.min()))
        cv = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=self.config.seed).split(X, y))
        # choose C by cross-validated log loss (written out rather than LogisticRegressionCV, whose
        # parameters and fitted attributes are changing across scikit-learn releases)
        cs = np.logspace(-4, 4, self.config.cs)
        cv_loss = []
        for c in cs:
            losses = []
            for tr, va in cv:
                m = LogisticRegression(C=float(c), solver="newton-cholesky", max_iter=200).fit(X[tr], y[tr])
                p = np.clip(m.predict_proba(X[va])[:, 1], 1e-12, 1 - 1e-12)
                losses.append(float(-np.mean(y[va] * np.log(p) + (1 - y[va]) * np.log1p(-p))))
            cv_loss.append(float(np.mean(losses)))
        best = float(cs[int(np.argmin(cv_loss))])
        model = LogisticRegression(C=best, solver="newton-cholesky", max_iter=200).fit(X, y)
        self._state = {
            "branches": names,
            "coef": [float(c) for c in model.coef_[0]],
            "intercept": float(model.intercept_[0]),
            "C": best,
            "cv_log_loss": round(min(cv_loss), 6),
            "folds": folds,
            "n_fit": int(len(y)),
            "n_fit_real": int(counts[0]),
            "n_fit_fake": int(counts[1]),
            "threshold": float(self.config.threshold),
        }
        return self

    def predict(self, scores: Mapping[str, np.ndarray]) -> FusionOutput:
        if self._state is None:
            raise AlignCoreError("the learned fusion is not fitted: fit it with alignctl ablate, or pass --fusion-state.")
        names, mat = stack_scores(scores)
        want = self._state["branches"]
        if names != want:
            raise AlignCoreError(f"the learned fusion was fitted on branches {want}, but the scores come from {names}.")
        z = logit_features(mat) @ np.asarray(self._state["coef"]) + self._state["intercept"]
        fused = 1.0 / (1.0 + np.exp(-z))
        fused = np.where(np.isnan(mat).all(axis=1), np.nan, fused)
        return FusionOutput(fused, np.nan_to_num(fused, nan=0.0) >= self.config.threshold)

    def calibrate(self, scores, labels, target_fpr: float) -> "LearnedFusion":
        super().calibrate(scores, labels, target_fpr)
        if self._state is not None:
            self._state["threshold"] = float(self.config.threshold)
        return self

    def state_dict(self) -> dict[str, Any]:
        return dict(self._state) if self._state else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = {"branches", "coef", "intercept"} - set(state)
        if missing:
            raise AlignCoreError(f"learned fusion state lacks {sorted(missing)}; write it with alignctl ablate.")
        self._state = dict(state)
        if "threshold" in state:
            self.config.threshold = float(state["threshold"])


@hookimpl
def register_fusions(register):
    register(LearnedFusion)
