"""A self-contained HTML report of one run: figures (matplotlib PNGs embedded as base64) and tables.

The page needs no other file and no network: ROC curves of the fused score and of each branch,
accuracy per generator, score histograms per class and branch, the confusion matrix of the
fused verdicts, the overall metrics and the fusion ablation table.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .ablation import METRIC_TITLES, TABLE_METRICS, ablate
from .errors import AlignCoreError
from .rundir import ARTEFACTS, RunDir, RunScores
from .text import html_text, plot_text


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def make_figures(rs: RunScores) -> list[tuple[str, str, str]]:
    """(title, caption, base64 PNG) for every figure of the report. Names (branches, generators) are data:
    drawn literally, never as mathtext (a generator called ``$\\foo$`` is shown as written)."""
    import matplotlib

    matplotlib.use("Agg")
    from .text import literal_text

    with literal_text():
        return _make_figures(rs)


def _make_figures(rs: RunScores) -> list[tuple[str, str, str]]:
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix, roc_curve

    fused, verdict = rs.fused, rs.verdicts
    y = rs.labels
    lab = y >= 0
    series = {"fused": fused, **{f"branch {plot_text(b)}": rs.scores[b] for b in rs.branches}}
    figs = []

    # ROC curves
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    for name, s in series.items():
        ok = lab & np.isfinite(s)
        if len(set(y[ok].tolist())) == 2:
            fpr, tpr, _ = roc_curve(y[ok], s[ok])
            from sklearn.metrics import auc

            ax.plot(fpr, tpr, lw=2 if name == "fused" else 1.2, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
    ax.axvline(0.05, ls="--", c="grey", lw=0.8)
    ax.set(xlabel="false-positive rate (reals called fake)", ylabel="true-positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    figs.append(("ROC curves", "Fused score and each branch alone; the dashed line marks 5% FPR.", _png(fig)))

    # accuracy per generator (fused verdicts); reals grouped by their source
    groups = sorted({(int(y[i]), str(rs.generators[i]) or "(none)") for i in range(len(y)) if lab[i]})
    if groups:
        fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(groups) + 2), 4.2))
        names, accs, colors = [], [], []
        for cls, g in groups:
            m = lab & (y == cls) & (np.array([str(x) or "(none)" for x in rs.generators]) == g)
            acc = float((verdict[m] == (cls == 1)).mean())
            names.append(f"{plot_text(g)} ({m.sum()})")
            accs.append(acc)
            colors.append("#4C72B0" if cls == 0 else "#DD8452")
        ax.bar(range(len(names)), accs, color=colors)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set(ylim=(0, 1.05), ylabel="accuracy (fused verdict)", title="Accuracy per generator (orange) and real source (blue)")
        figs.append(("Accuracy per generator", "Share of images of each group given the right verdict; image counts in brackets.", _png(fig)))

    # score histograms per class, one panel per branch and the fused score
    k = len(series)
    fig, axes = plt.subplots(1, k, figsize=(3.6 * k, 3.2), squeeze=False)
    bins = np.linspace(0, 1, 26)
    for ax, (name, s) in zip(axes[0], series.items()):
        for cls, color, title in ((0, "#4C72B0", "real"), (1, "#DD8452", "fake")):
            v = s[lab & (y == cls) & np.isfinite(s)]
            if len(v):
                ax.hist(np.clip(v, 0, 1), bins=bins, alpha=0.6, color=color, label=f"{title} ({len(v)})")
        ax.set(title=name, xlabel="P(fake)", xlim=(0, 1))
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("images")
    figs.append(("Score histograms", "Per class, for each branch and for the fused score.", _png(fig)))

    # confusion matrix of the fused verdicts
    if lab.any():
        cm = confusion_matrix(y[lab], verdict[lab].astype(int), labels=[0, 1])
        fig, ax = plt.subplots(figsize=(3.8, 3.4))
        ax.imshow(cm, cmap="Blues")
        for i in range(2):
            for j in range(2):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                        color="white" if cm[i, j] > cm.max() / 2 else "black", fontsize=14)
        ax.set_xticks([0, 1], ["real", "fake"])
        ax.set_yticks([0, 1], ["real", "fake"])
        ax.set(xlabel="verdict", ylabel="true label", title="Confusion matrix (fused)")
        figs.append(("Confusion matrix", "Rows: true label; columns: the fused verdict.", _png(fig)))
    return figs


def _table(head: list[str], rows: list[list[Any]]) -> str:
    th = "".join(f"<th>{html_text(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html_text(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _f(v) -> str:
    return "n/a" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def write_report(run_dir: str | Path, out: str | Path | None = None, fusions: tuple[str, ...] | None = None,
                 target_fpr: float | None = None, note: str | None = None) -> Path:
    """Write ``RUN/report.html`` (or ``out``) and return its path."""
    rd = RunDir.open(run_dir)
    run_dir, info, metrics, cfg = rd.path, rd.info, rd.metrics(), rd.config
    figs = make_figures(rd.scores())
    from .ablation import DEFAULT_FUSIONS

    try:
        ab = ablate([run_dir], fusions or DEFAULT_FUSIONS, target_fpr=target_fpr)
        ab_rows = [[r["group"], r["method"], f"{r['n']} ({r['n_real']}/{r['n_fake']})",
                    *[_f(r.get(k)) for k in TABLE_METRICS]] for r in ab.rows]
        ablation_html = _table(["group", "method", "n (real/fake)", *[METRIC_TITLES[k] for k in TABLE_METRICS]], ab_rows)
        ablation_note = (f"Measured on the evaluation split ({1 - ab.cal_fraction:.0%} of images by content hash); "
                         "learned fusion fitted on the disjoint calibration split"
                         + (f"; thresholds calibrated to {target_fpr:.0%} FPR." if target_fpr is not None else "."))
    except AlignCoreError as exc:
        ablation_html, ablation_note = "", f"Ablation not available: {exc}"
    o = metrics.get("overall")
    if not isinstance(o, dict):
        raise AlignCoreError(f"{Path(run_dir) / 'metrics.json'} holds no overall metrics: it was not written by aligncore.")
    overall = _table(["images", "real", "fake", *[METRIC_TITLES[k] for k in TABLE_METRICS]],
                     [[o["n"], o["n_real"], o["n_fake"], *[_f(o.get(k)) for k in TABLE_METRICS]]])
    per_branch = _table(["branch", *[METRIC_TITLES[k] for k in TABLE_METRICS]],
                        [[b, *[_f(m.get(k)) for k in TABLE_METRICS]] for b, m in (metrics.get("per_branch") or {}).items()])
    setup = _table(["field", "value"], [
        ["run id", info.get("run_id")],
        ["dataset", (cfg.get("dataset") or {}).get("root", cfg.get("data"))],
        ["branches (fingerprints)", ", ".join(f"{b} [{fp}]" for b, fp in (cfg.get("fingerprints") or {}).items())],
        ["checkpoints", json.dumps(cfg.get("checkpoints") or {})],
        ["preset", cfg.get("preset") or "-"],
        ["fusion", f"{cfg.get('fusion')} {json.dumps(cfg.get('fusion_options') or {})}"],
        ["perturbation", cfg.get("perturb") or "none"],
        ["skipped files", metrics.get("skipped", 0)],
    ])
    fig_html = "".join(
        f'<figure><h2>{html.escape(t)}</h2><img alt="{html.escape(t)}" src="data:image/png;base64,{b64}">'
        f"<figcaption>{html.escape(c)}</figcaption></figure>" for t, c, b64 in figs)
    note_html = f'<p class="note">{html.escape(note)}</p>' if note else ""
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>aligncore report {html_text(info.get('run_id'))}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; max-width: 1200px; color: #222 }}
table {{ border-collapse: collapse; margin: 8px 0 20px }} td, th {{ border: 1px solid #ccc; padding: 3px 8px; font-size: 13px }}
th {{ background: #f3f3f3 }} figure {{ margin: 0 0 24px }} img {{ max-width: 100% }}
.note {{ background: #fff6d6; padding: 8px 12px; border-left: 4px solid #e0b000 }}
</style></head><body>
<h1>aligncore run report</h1>
{note_html}
<h2>Setup</h2>{setup}
<h2>Overall (configured fusion, all images)</h2>{overall}
<h2>Each branch alone (threshold 0.5)</h2>{per_branch}
{fig_html}
<h2>Fusion ablation</h2><p>{html_text(ablation_note)}</p>{ablation_html}
</body></html>
"""
    dest = Path(out) if out else run_dir / "report.html"
    if dest.resolve() in {(Path(run_dir) / name).resolve() for name in ARTEFACTS}:
        raise AlignCoreError(f"--out {dest} is a file of the run {run_dir}; choose another file for the report.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")  # a kill leaves the old report or the new one
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise AlignCoreError(f"cannot write the report {dest}: {exc.strerror or exc}.") from None
    return dest
