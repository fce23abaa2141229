"""The Fusion base class: per-branch P(fake) scores → one fused score and verdict.

Scores arrive as ``{branch_name: array of shape (n,)}``; a NaN marks an image a
branch could not score. Fusions use only numpy (and scikit-learn for learned ones),
so re-fusing stored scores never imports torch or loads a model.

Thresholds are exact: an image is fake when its score is at or above the threshold, and a
calibrated threshold may lie just above 1.0 (:data:`ABOVE_ONE`) when the calibration reals
tie at 1.0, so that "at most 5% of the reals called fake" holds on the calibration split.

A fitted or calibrated fusion is saved as a *state file* (:func:`state_entry`): its name, its
config (e.g. calibrated thresholds), its fitted state (e.g. coefficients) and the content hashes
of the images it was fitted on, which a run using the file leaves out of its metrics.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
from pydantic import Field

from .component import Component, ComponentConfig
from .errors import AlignCoreError, ConfigError

#: the smallest float above 1.0: the threshold that calls no score in [0, 1] fake
ABOVE_ONE = math.nextafter(1.0, 2.0)
STATE_FORMAT = 1
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class FusionInputError(AlignCoreError, ValueError):
    """Scores a fusion cannot work with (no branch, no scored real image to calibrate on)."""


class FusionConfig(ComponentConfig):
    threshold: float = Field(0.5, ge=0.0, le=ABOVE_ONE,
                             description="Fused score at or above which an image is called fake (a calibrated threshold "
                             "may lie just above 1: then no image is).")


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

    def degenerate(self) -> str | None:
        """Why the last :meth:`fit` gave a useless model (e.g. a constant output), or None. A degenerate
        fit is reported as such and never shown as a result."""
        return None

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
        """Take a fitted state; validate it like a config (types, finiteness, shapes). The base keeps none."""
        if state:
            raise ConfigError(f"fusion {self.name!r} keeps no fitted state, but the state given holds {sorted(state)}.")

    def check_branches(self, names: Sequence[str]) -> None:
        """Raise when the config or state names branches other than ``names`` (the run's)."""

    def fingerprint(self) -> str:
        """What computes the fused output: the fusion's source, its full config and its fitted state."""
        payload = {"fusion": self.name, "code": self.code_digest(), "config": self.config.model_dump(mode="json"),
                   "state": self.state_dict()}
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return f"{self.name}-{hashlib.sha256(blob).hexdigest()[:16]}"


def stack_scores(scores: Mapping[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """Branch names and an (n, k) float matrix, in a stable (sorted) branch order."""
    names = sorted(scores)
    if not names:
        raise FusionInputError("fusion needs scores from at least one branch")
    mat = np.column_stack([np.asarray(scores[n], dtype=float) for n in names])
    return names, mat


_BELOW_HALF = math.nextafter(0.5, 0.0)


def rescale_at_threshold(s: np.ndarray, t: float) -> np.ndarray:
    """Piecewise-linear map of [0, 1] onto [0, 1] sending ``t`` to 0.5, so thresholds compare across branches.

    Exact: the result is >= 0.5 exactly where ``s >= t`` (for any t, 0 and thresholds above 1 included).
    """
    s = np.asarray(s, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        low = np.minimum(s / (2 * t), _BELOW_HALF) if t > 0 else np.zeros_like(s)
        high = np.maximum(0.5 + (s - t) / (2 * (1 - t)), 0.5) if t < 1 else np.full_like(s, 0.5)
    return np.where(np.isnan(s), np.nan, np.where(s >= t, high, low))


def threshold_for_fpr(real_scores: np.ndarray, target_fpr: float) -> float:
    """Lowest threshold t with mean(real >= t) <= target_fpr on these real scores (NaN ignored).

    Ties are respected: if several reals share the score at the cut, all of them fall below t, and
    when reals tie at 1.0 beyond the allowance the threshold is :data:`ABOVE_ONE` (nothing is fake).
    """
    r = np.asarray(real_scores, dtype=float)
    r = np.sort(r[~np.isnan(r)])[::-1]
    if len(r) == 0:
        raise FusionInputError("threshold calibration needs scored real images in the calibration split")
    allowed = int(np.floor(target_fpr * len(r) + 1e-9))
    if allowed >= len(r):
        return 0.0
    return float(min(np.nextafter(r[allowed], np.inf), ABOVE_ONE))


def calibration_note(reals_called_fake: int, n_real: int, target_fpr: float) -> str:
    """"" when the calibration reached the largest real count the target allows, else why not (ties made
    the target unreachable, or a fusion's own ``calibrate`` overshot it)."""
    allowed = int(np.floor(target_fpr * n_real + 1e-9))
    got = reals_called_fake / n_real if n_real else 0.0
    if reals_called_fake > allowed:  # a third-party calibrate() is not trusted to be exact
        return (f"target missed: the fusion's calibration calls {got:.2%} ({reals_called_fake}/{n_real}) of the "
                f"calibration reals fake, above the {target_fpr:.2%} target")
    if reals_called_fake == allowed:
        return ""
    return (f"target unreachable: ties among the calibration reals' scores (or the rule's steps) leave {got:.2%} "
            f"({reals_called_fake}/{n_real}) as the closest FPR not above {target_fpr:.2%}")


# ---------------------------------------------------------------------- state files


@dataclass
class FittedState:
    """A fusion state file's content: what a run needs to reuse a fitted or calibrated fusion."""

    name: str | None
    config: dict[str, Any] | None
    state: dict[str, Any]
    fitted_on: list[str] = field(default_factory=list)  # content sha256 of the images it was fitted on
    info: dict[str, Any] = field(default_factory=dict)  # run id, dataset, target FPR, calibration FPR, ...


def state_entry(fusion: Fusion, fitted_on: Sequence[str], **info: Any) -> dict[str, Any]:
    """The JSON object of a state file (what ``alignctl ablate`` writes, ``--fusion-state`` reads)."""
    return {"format": STATE_FORMAT, "name": fusion.name, "config": fusion.config.model_dump(mode="json"),
            "state": fusion.state_dict(), "fitted_on": sorted(set(fitted_on)), **info}


def parse_state(obj: Any, where: str = "the fusion state") -> FittedState:
    """Validate a state file's structure: an entry written by ``ablate`` ({"name", "config", "state",
    "fitted_on", ...}) or, as older files hold, a bare state mapping."""
    if not isinstance(obj, Mapping):
        raise ConfigError(f"{where} must be a JSON object, not {type(obj).__name__}.")
    if "state" not in obj and "name" not in obj:
        return FittedState(None, None, dict(obj))
    name, cfg, state, fitted = obj.get("name"), obj.get("config"), obj.get("state", {}), obj.get("fitted_on", [])
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"{where}: 'name' must be a fusion name, not {name!r}.")
    if cfg is not None and not isinstance(cfg, Mapping):
        raise ConfigError(f"{where}: 'config' must be an object, not {type(cfg).__name__}.")
    if not isinstance(state, Mapping):
        raise ConfigError(f"{where}: 'state' must be an object, not {type(state).__name__}.")
    if not isinstance(fitted, list) or not all(isinstance(h, str) and _SHA256.match(h) for h in fitted):
        raise ConfigError(f"{where}: 'fitted_on' must be a list of sha256 hex digests (the images it was fitted on).")
    info = {k: v for k, v in obj.items() if k not in ("name", "config", "state", "fitted_on")}
    return FittedState(name, dict(cfg) if cfg is not None else None, dict(state), list(fitted), info)


def apply_state(fusion: Fusion, fitted: FittedState, branches: Sequence[str], where: str = "the fusion state") -> Fusion:
    """``fusion`` with the state's config (for the fields the caller left unset) and fitted state, checked
    against the run's ``branches``; returns a new fusion object when the config changes."""
    if fitted.name is not None and fitted.name != fusion.name:
        raise ConfigError(f"{where} was written for fusion {fitted.name!r}, not {fusion.name!r}: "
                          f"use --fusion {fitted.name}.")
    if fitted.config is not None:
        given = fusion.config.model_dump(mode="json", exclude_unset=True)
        clash = [f"{k}={given[k]!r} (the state has {fitted.config[k]!r})" for k in sorted(given)
                 if k in fitted.config and given[k] != fitted.config[k]]
        if clash:
            raise ConfigError(f"the fusion options conflict with {where}: {'; '.join(clash)}. Leave them unset to use "
                              "the fitted values.")
        try:
            fusion = type(fusion)({**fitted.config, **given})
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    try:
        fusion.load_state_dict(fitted.state)
    except (ConfigError, AlignCoreError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    fusion.check_branches(list(branches))
    return fusion


def load_state(fusion: Fusion, state: Any, branches: Sequence[str],
               where: str = "the fusion state") -> tuple[Fusion, FittedState] | None:
    """(``fusion`` with a state file's content applied and checked against ``branches``, the parsed state),
    or None without a state; every error names ``where``."""
    if not state:
        return None
    fitted = parse_state(state, where)
    return apply_state(fusion, fitted, branches, where), fitted
