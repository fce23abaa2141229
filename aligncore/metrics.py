"""Detection metrics as the field reports them, computed with scikit-learn.

Accuracy is at the configured threshold (the verdicts), balanced accuracy is the mean
of real and fake accuracy, AP and ROC-AUC use the continuous fused score, TPR is read
off the ROC curve at 1% and 5% false-positive rate, and the EER is where the ROC curve,
linearly interpolated between its points, crosses FPR = 1 − TPR (what
``brentq(lambda x: 1 - x - interp1d(fpr, tpr)(x), 0, 1)`` finds on scikit-learn's
``roc_curve``). A metric that is undefined for the data (one class only) is ``None``
with the reason in ``undefined``.

Every metric is computed over the same images: those with a finite score. An image
without one (its branch failed on it) is counted in ``unscored`` and left out of all of
them, accuracy included: a missing score is never read as "real".
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

KEYS = ("accuracy", "real_accuracy", "fake_accuracy", "balanced_accuracy", "ap", "auc", "eer", "tpr_at_1fpr",
        "tpr_at_5fpr")


def _f(x) -> float | None:
    return None if x is None else round(float(x), 6)


def equal_error_rate(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """The EER of a ROC curve (scikit-learn's ``roc_curve`` points, FPR ascending): the FPR where the
    piecewise-linear curve meets FPR = 1 − TPR (the false-negative rate)."""
    d = np.asarray(fpr, dtype=float) - (1.0 - np.asarray(tpr, dtype=float))  # rises from -1 at (0, 0) to 1 at (1, 1)
    k = int(np.argmax(d >= 0))  # first point at or past the crossing
    if d[k] == 0 or k == 0:
        return float(fpr[k])
    # the crossing lies on the segment (k-1, k): interpolate both rates linearly along it
    t = -d[k - 1] / (d[k] - d[k - 1])
    return float(fpr[k - 1] + t * (fpr[k] - fpr[k - 1]))


def binary_metrics(labels: Sequence[int], scores: Sequence[float], verdicts: Sequence[bool]) -> dict:
    """Metrics of labelled (0 real, 1 fake) images; images whose score is not finite are left out of all of them."""
    from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score, roc_curve

    y_all = np.asarray(labels, dtype=int)
    s_all = np.asarray(scores, dtype=float)
    scored = np.isfinite(s_all)
    y, s = y_all[scored], s_all[scored]
    v = np.asarray(verdicts, dtype=bool)[scored].astype(int)
    out: dict = {"n": int(len(y)), "n_real": int((y == 0).sum()), "n_fake": int((y == 1).sum())}
    if (~scored).any():
        out["unscored"] = int((~scored).sum())
    undefined: dict[str, str] = {}
    if len(y) == 0:
        out.update({k: None for k in KEYS})
        why = "no scored images" if len(y_all) else "no labelled images"
        out["undefined"] = {k: why for k in KEYS}
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
        out["ap"] = _f(average_precision_score(y, s))
        out["auc"] = _f(roc_auc_score(y, s))
        fpr, tpr, _ = roc_curve(y, s)
        out["eer"] = _f(equal_error_rate(fpr, tpr))
        out["tpr_at_1fpr"] = _f(_tpr_at(fpr, tpr, 0.01))
        out["tpr_at_5fpr"] = _f(_tpr_at(fpr, tpr, 0.05))
    else:
        reason = "only one class present (needs real and fake images)"
        for k in ("balanced_accuracy", "ap", "auc", "eer", "tpr_at_1fpr", "tpr_at_5fpr"):
            out[k] = None
            undefined[k] = reason
    if undefined:
        out["undefined"] = undefined
    return out


def _tpr_at(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Highest TPR reachable with FPR at or below ``target`` (a conservative operating point)."""
    ok = fpr <= target + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def generator_groups(labels: np.ndarray, generators: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(generator, mask) for every generator with fakes among ``labels >= 0``.

    A generator whose group holds reals of its own (GenImage / UnivFD layouts: ``<gen>/0_real``)
    is measured on its own reals and fakes; a generator with fakes only (``real/`` + ``fake/<gen>/``
    layouts) is measured with its fakes against every real image.
    """
    lab = np.asarray(labels, dtype=int)
    g = np.array(["" if x is None else str(x) for x in generators], dtype=object)
    out = []
    for name in sorted({x for x in g[lab == 1] if x}):
        mine = g == name
        if ((lab == 0) & mine).any():
            out.append((name, mine & (lab >= 0)))
        else:
            out.append((name, (mine & (lab == 1)) | (lab == 0)))
    return out


def compute_metrics(
    labels: Sequence[int | None],
    scores: Sequence[float],
    verdicts: Sequence[bool],
    generators: Sequence[str | None] | None = None,
    subsets: Sequence[str | None] | None = None,
) -> dict:
    """Overall metrics plus per-generator, per-source and per-subset breakdowns; unlabelled images are left out.

    ``per_generator``: one entry per generator with fakes (see :func:`generator_groups`).
    ``per_source``: the groups named only by reals (a ``real/<source>/`` folder), with their real accuracy.
    """
    lab = np.array([-1 if l is None else int(l) for l in labels])
    keep = lab >= 0
    s = np.asarray(scores, dtype=float)
    v = np.asarray(verdicts, dtype=bool)
    result = {"overall": binary_metrics(lab[keep], s[keep], v[keep]), "unlabelled": int((~keep).sum())}
    if generators is not None:
        g = np.array(["" if x is None else str(x) for x in generators], dtype=object)
        per_gen = {n: binary_metrics(lab[m], s[m], v[m]) for n, m in generator_groups(lab, g)}
        if per_gen:
            result["per_generator"] = per_gen
        sources = sorted({x for x in g[lab == 0] if x} - set(per_gen))
        if sources:
            result["per_source"] = {n: binary_metrics(lab[(g == n) & keep], s[(g == n) & keep], v[(g == n) & keep])
                                    for n in sources}
    if subsets is not None:
        g = np.array(["" if x is None else str(x) for x in subsets], dtype=object)
        names = sorted({x for x in g[keep] if x})
        if names:
            result["per_subset"] = {n: binary_metrics(lab[keep & (g == n)], s[keep & (g == n)], v[keep & (g == n)])
                                    for n in names}
    return result
