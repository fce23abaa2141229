"""The ``learned`` fusion: logistic regression on logit-transformed branch scores.

It is fitted on a labelled calibration split (``alignctl ablate`` makes one that is
disjoint from the evaluation images), choosing its regularisation strength by stratified
cross-validation, and its state is plain JSON so a run can carry it
(``alignctl run --fusion learned --fusion-state fusions.json``).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from pydantic import Field, ValidationError, model_validator

from aligncore import hookimpl
from aligncore.component import ComponentConfig, format_validation_error
from aligncore.errors import AlignCoreError, ConfigError
from aligncore.fusion import ABOVE_ONE, Fusion, FusionConfig, FusionOutput, stack_scores

EPS = 1e-4
#: a fit whose logit varies less than this over its calibration images is a constant (e.g. CV chose C = 1e-4)
MIN_LOGIT_SPREAD = 1e-2


class LearnedState(ComponentConfig):
    """A fitted learned fusion, validated like a config: finite numbers, one coefficient per branch."""

    branches: list[str] = Field(..., min_length=1, description="Branch names, in the order of coef.")
    coef: list[float] = Field(..., description="One coefficient per branch (logit feature).")
    intercept: float
    threshold: float = Field(0.5, ge=0.0, le=ABOVE_ONE)
    C: float | None = Field(None, gt=0)
    cv_log_loss: float | None = None
    folds: int | None = Field(None, ge=2)
    n_fit: int | None = Field(None, ge=0)
    n_fit_real: int | None = Field(None, ge=0)
    n_fit_fake: int | None = Field(None, ge=0)
    logit_spread: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _shapes(self):
        if len(self.coef) != len(self.branches):
            raise ValueError(f"{len(self.coef)} coefficients for {len(self.branches)} branches")
        if len(set(self.branches)) != len(self.branches):
            raise ValueError("a branch is listed twice")
        return self


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
        self._degenerate: str | None = None

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
        z = X @ model.coef_[0] + model.intercept_[0]
        spread = float(np.ptp(z)) if len(z) else 0.0
        self._degenerate = None
        if spread < MIN_LOGIT_SPREAD:
            # every image gets (nearly) the same score: its verdicts are one class and its AUC means nothing
            self._degenerate = (f"degenerate fit: a constant (its logit varies by {spread:.1e} over the {len(y)} calibration "
                                f"images; cross-validation chose C = {best:g}); use more images or a larger --cal-fraction")
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
            "logit_spread": spread,
        }
        return self

    def degenerate(self) -> str | None:
        return self._degenerate

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
        """Validate (types, finite numbers, one coefficient per branch) and take a fitted state."""
        try:
            st = LearnedState(**dict(state))
        except ValidationError as err:
            raise ConfigError(format_validation_error("the learned fusion state (write it with alignctl ablate)", err,
                                                      LearnedState.model_fields)) from None
        except TypeError:
            raise ConfigError("the learned fusion state must be a JSON object (write it with alignctl ablate).") from None
        if st.logit_spread is not None and st.logit_spread < MIN_LOGIT_SPREAD:
            raise ConfigError(f"the learned fusion state is a degenerate fit (its logit varied by {st.logit_spread:.1e} "
                              "over its calibration images: a constant, not a detector); fit it on more images.")
        self._state = st.model_dump(exclude_none=True)
        self._degenerate = None
        self.config.threshold = st.threshold

    def check_branches(self, names) -> None:
        if self._state is not None and sorted(names) != self._state["branches"]:
            raise ConfigError(f"the learned fusion was fitted on branches {self._state['branches']}, but this run has "
                              f"{sorted(names)}.")


@hookimpl
def register_fusions(register):
    register(LearnedFusion)
