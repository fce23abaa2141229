"""Detection metrics as the field reports them, computed with scikit-learn.

Accuracy is at the configured threshold (the verdicts), balanced accuracy is the mean
of real and fake accuracy, AP and ROC-AUC use the continuous fused score, TPR is read
off the ROC curve at 1% and 5% false-positive rate. A metric that is undefined for the
data (one class only) is ``None`` with the reason in ``undefined``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _f(x) -> float | None:
    return None if x is None else round(float(x), 6)


def binary_metrics(labels: Sequence[int], scores: Sequence[float], verdicts: Sequence[bool]) -> dict:
    from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score, roc_curve

    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=float)
    v = np.asarray(verdicts, dtype=bool).astype(int)
    out: dict = {"n": int(len(y)), "n_real": int((y == 0).sum()), "n_fake": int((y == 1).sum())}
    undefined: dict[str, str] = {}
    keys = ("accuracy", "real_accuracy", "fake_accuracy", "balanced_accuracy", "ap", "auc", "tpr_at_1fpr", "tpr_at_5fpr")
    if len(y) == 0:
        out.update({k: None for k in keys})
        out["undefined"] = {k: "no labelled images" for k in keys}
        return out
    out["accuracy"] = _f(accuracy_score(y, v))
    real, fake = y == 0, y == 1
    out["real_accuracy"] = _f(accuracy_score(y[real], v[real])) if real.any() else None
    out["fake_accuracy"] = _f(accuracy_score(y[fake], v[fake])) if fake.any() else None
    if not real.any():
        undefined["real_accuracy"] = "no real images"
    if not fake.any():
        undefined["fake_accuracy"] = "no fake images"
    if real.any() and fake.any():
        out["balanced_accuracy"] = _f((out["real_accuracy"] + out["fake_accuracy"]) / 2)
        finite = np.isfinite(s)
        ys, ss = y[finite], s[finite]
        if len(set(ys.tolist())) == 2:
            out["ap"] = _f(average_precision_score(ys, ss))
            out["auc"] = _f(roc_auc_score(ys, ss))
            fpr, tpr, _ = roc_curve(ys, ss)
            out["tpr_at_1fpr"] = _f(_tpr_at(fpr, tpr, 0.01))
            out["tpr_at_5fpr"] = _f(_tpr_at(fpr, tpr, 0.05))
        else:
            for k in ("ap", "auc", "tpr_at_1fpr", "tpr_at_5fpr"):
                out[k] = None
                undefined[k] = "scores of one class are all missing"
    else:
        reason = "only one class present (needs real and fake images)"
        for k in ("balanced_accuracy", "ap", "auc", "tpr_at_1fpr", "tpr_at_5fpr"):
            out[k] = None
            undefined[k] = reason
    if undefined:
        out["undefined"] = undefined
    return out


def _tpr_at(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Highest TPR reachable with FPR at or below ``target`` (a conservative operating point)."""
    ok = fpr <= target + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def compute_metrics(
    labels: Sequence[int | None],
    scores: Sequence[float],
    verdicts: Sequence[bool],
    generators: Sequence[str | None] | None = None,
    subsets: Sequence[str | None] | None = None,
) -> dict:
    """Overall metrics plus per-generator and per-subset breakdowns; unlabelled images are left out."""
    lab = np.array([-1 if l is None else int(l) for l in labels])
    keep = lab >= 0
    s = np.asarray(scores, dtype=float)
    v = np.asarray(verdicts, dtype=bool)
    result = {"overall": binary_metrics(lab[keep], s[keep], v[keep]), "unlabelled": int((~keep).sum())}
    for name, groups in (("per_generator", generators), ("per_subset", subsets)):
        if groups is None:
            continue
        g = np.array(["" if x is None else str(x) for x in groups], dtype=object)
        names = sorted({x for x in g[keep] if x})
        if names:
            result[name] = {n: binary_metrics(lab[keep & (g == n)], s[keep & (g == n)], v[keep & (g == n)]) for n in names}
    return result
