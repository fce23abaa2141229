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

from .ablation import FPR_COLUMNS, METRIC_TITLES, TABLE_METRICS, ablate, describe, notes, read_ablation
from .errors import AlignCoreError
from .rundir import ARTEFACTS, RunDir, RunScores
from .text import html_text, plot_text


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


#: colours of the two classes (colour-blind safe pair) and of threshold lines
REAL_COLOR, FAKE_COLOR, LINE_COLOR = "#4C72B0", "#DD8452", "#222222"


def _count(n_all: int, n_real: int, n_fake: int) -> str:
    return f"n = {n_all} images ({n_real} real, {n_fake} fake)"


def make_figures(rs: RunScores, fused_threshold: float | None = 0.5) -> list[tuple[str, str, str]]:
    """(title, caption, base64 PNG) for every figure of the report; every caption starts with its sample size.

    ``fused_threshold`` is the fused score at or above which the fusion says fake (None when the
    verdicts are not a threshold on the fused score: no line is drawn then).
    """
    import matplotlib

    matplotlib.use("Agg")
    from .text import literal_text

    with literal_text():  # names are data: drawn as written, never as mathtext (a generator called $\\foo$)
        return [(title, caption, _png(fig)) for title, caption, fig in figures(rs, fused_threshold)]


def figures(rs: RunScores, fused_threshold: float | None = 0.5) -> list[tuple[str, str, Any]]:
    """(title, caption, matplotlib figure) for every figure of the report (the caller closes them). Names are
    drawn literally: every label is made with mathtext off (:func:`aligncore.text.literal_text`)."""
    from .text import literal_text

    with literal_text():
        return _figures(rs, fused_threshold)


def _figures(rs: RunScores, fused_threshold: float | None) -> list[tuple[str, str, Any]]:
    lab = rs.labels >= 0
    judged = lab & np.isfinite(rs.fused)  # a fused verdict exists only where every branch scored the image
    figs = [_roc_figure(rs, lab)]
    acc = _group_accuracy_figure(rs, judged)
    if acc is not None:
        figs.append(acc)
    figs.append(_histograms_figure(rs, lab, fused_threshold))
    if judged.any():
        figs.append(_confusion_figure(rs, judged))
    return figs


def _series(rs: RunScores) -> dict[str, np.ndarray]:
    return {"fused": rs.fused, **{f"branch {plot_text(b)}": rs.scores[b] for b in rs.branches}}


def _roc_figure(rs: RunScores, lab: np.ndarray) -> tuple[str, str, Any]:
    import matplotlib.pyplot as plt
    from sklearn.metrics import auc, roc_curve

    y = rs.labels
    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    for name, s in _series(rs).items():
        ok = lab & np.isfinite(s)
        if len(set(y[ok].tolist())) == 2:
            fpr, tpr, _ = roc_curve(y[ok], s[ok])
            ax.plot(fpr, tpr, lw=2 if name == "fused" else 1.2,
                    label=f"{name}: AUC {auc(fpr, tpr):.3f}, n={int(ok.sum())}")
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1, label="chance")
    ax.axvline(0.05, ls="--", c="grey", lw=0.8)
    ax.set(xlabel="false-positive rate (reals called fake)", ylabel="true-positive rate (fakes caught)", title="ROC",
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    n_real, n_fake = int((lab & (y == 0)).sum()), int((lab & (y == 1)).sum())
    caption = (f"{_count(n_real + n_fake, n_real, n_fake)} with labels; each curve uses the images its branch scored "
               "(n in the legend). The fused score and each branch alone; the dashed line marks 5% FPR.")
    return "ROC curves", caption, fig


def _group_accuracy_figure(rs: RunScores, lab: np.ndarray) -> tuple[str, str, Any] | None:
    """Horizontal bars (full group names, however long), each labelled with its value and count, so a
    group at 0 shows a visible "0.00" instead of a missing bar."""
    import matplotlib.pyplot as plt

    y, verdict = rs.labels, rs.verdicts
    gens = np.array([str(x) or "(none)" for x in rs.generators])
    groups = sorted({(int(y[i]), gens[i]) for i in range(len(y)) if lab[i]})
    if not groups:
        return None
    names, accs, colors, counts = [], [], [], []
    for cls, g in groups:
        m = lab & (y == cls) & (gens == g)
        names.append(f"{plot_text(g)} ({'real' if cls == 0 else 'fake'})")
        accs.append(float((verdict[m] == (cls == 1)).mean()))
        colors.append(REAL_COLOR if cls == 0 else FAKE_COLOR)
        counts.append(int(m.sum()))
    fig, ax = plt.subplots(figsize=(7.5, 0.38 * len(groups) + 1.4))
    pos = np.arange(len(groups))[::-1]
    ax.barh(pos, accs, color=colors, edgecolor=LINE_COLOR, linewidth=0.6, height=0.7)
    for p, a, n in zip(pos, accs, counts):
        ax.plot([0, 0], [p - 0.35, p + 0.35], color=LINE_COLOR, lw=2.5, solid_capstyle="butt")  # visible at 0 too
        ax.text(min(a, 1.0) + 0.01, p, f"{a:.2f}  (n={n})", va="center", fontsize=8, color=LINE_COLOR)
    ax.set_yticks(pos, names, fontsize=8)
    ax.set(xlim=(0, 1.25), xlabel="accuracy of the fused verdict",
           title="Accuracy per generator (orange) and real source (blue)")
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
    n = sum(counts)
    caption = (f"{_count(n, sum(c for c, (k, _) in zip(counts, groups) if k == 0), sum(c for c, (k, _) in zip(counts, groups) if k == 1))}"
               "; each bar: the share of that group's images given the right verdict, with its own n.")
    return "Accuracy per generator", caption, fig


def _histograms_figure(rs: RunScores, lab: np.ndarray, fused_threshold: float | None) -> tuple[str, str, Any]:
    import matplotlib.pyplot as plt

    y = rs.labels
    series = _series(rs)
    k = len(series)
    cols = min(k, 3)
    rows = (k + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    bins = np.linspace(0, 1, 26)
    for ax in axes.flat[k:]:
        ax.set_visible(False)
    for ax, (name, s) in zip(axes.flat, series.items()):
        for cls, color, title in ((0, REAL_COLOR, "real"), (1, FAKE_COLOR, "fake")):
            v = s[lab & (y == cls) & np.isfinite(s)]
            if len(v):
                ax.hist(np.clip(v, 0, 1), bins=bins, alpha=0.6, color=color, label=f"{title} (n={len(v)})")
        t = fused_threshold if name == "fused" else 0.5
        if t is not None:
            ax.axvline(t, color=LINE_COLOR, ls="--", lw=1.2, label=f"threshold {t:.3g}")
        ax.set(title=name, xlabel="P(fake)" if name != "fused" else "fused score", xlim=(0, 1), ylabel="images")
        ax.legend(fontsize=7)
    n_real, n_fake = int((lab & (y == 0)).sum()), int((lab & (y == 1)).sum())
    caption = (f"{_count(n_real + n_fake, n_real, n_fake)} with labels (each panel counts the images it scored); "
               "dashed: the threshold at or above which an image is called fake"
               + ("" if fused_threshold is not None else " (the fusion's verdicts are not a threshold on its score, "
                  "so its panel has none)") + ".")
    return "Score histograms", caption, fig


def _confusion_figure(rs: RunScores, lab: np.ndarray) -> tuple[str, str, Any]:
    import matplotlib.pyplot as plt
    from matplotlib import colors as mcolors
    from sklearn.metrics import confusion_matrix

    y, verdict = rs.labels, rs.verdicts
    cm = confusion_matrix(y[lab], verdict[lab].astype(int), labels=[0, 1])
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    cmap = plt.get_cmap("Blues")
    norm = mcolors.Normalize(vmin=0, vmax=max(int(cm.max()), 1))
    ax.imshow(cm, cmap=cmap, norm=norm)
    rows = cm.sum(axis=1)
    for i in range(2):
        for j in range(2):
            share = f"\n{cm[i, j] / rows[i]:.0%} of row" if rows[i] else ""
            ax.text(j, i, f"{cm[i, j]}{share}", ha="center", va="center", fontsize=12,
                    color=text_color_on(cmap(norm(cm[i, j]))))
    ax.set_xticks([0, 1], ["real", "fake"])
    ax.set_yticks([0, 1], ["real", "fake"])
    ax.set(xlabel="verdict", ylabel="true label", title="Confusion matrix (fused)")
    caption = (f"{_count(int(cm.sum()), int(rows[0]), int(rows[1]))}; rows: true label, columns: the fused verdict.")
    return "Confusion matrix", caption, fig


def relative_luminance(rgba) -> float:
    """WCAG relative luminance of an sRGB colour (components in [0, 1])."""
    def lin(c: float) -> float:
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = rgba[:3]
    return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b)


def text_color_on(rgba) -> str:
    """Black or white, whichever contrasts more with a cell of colour ``rgba`` (so no light-on-light number)."""
    bg = relative_luminance(rgba)
    on_black = (bg + 0.05) / 0.05
    on_white = 1.05 / (bg + 0.05)
    return "black" if on_black >= on_white else "white"


def fused_decision_threshold(rs: RunScores, metrics: dict) -> float | None:
    """The fused score at or above which the run's fusion says fake, checked against the run's verdicts.

    Asked of the fusion itself (rebuilt from ``metrics.json``); None when it cannot be rebuilt or when
    its verdicts are not that threshold on the fused score (then no line would be honest).
    """
    from .registry import get_registry

    info = metrics.get("fusion") or {}
    try:
        fusion = get_registry().create("fusion", info.get("name"), info.get("config") or {})
        if info.get("state"):
            fusion.load_state_dict(info["state"])
        t = float(fusion.decision_threshold())
    except Exception:  # a fusion whose plugin is gone, or one without a single threshold
        return None
    ok = np.isfinite(rs.fused)
    if rs.verdicts is None or not ok.any() or not np.array_equal(rs.fused[ok] >= t, rs.verdicts[ok]):
        return None
    return t


GLOSSARY = [
    ("P(fake)", "what a branch outputs for an image: a score in [0, 1], higher meaning more likely generated. "
                "It is a model's score, not a calibrated probability."),
    ("threshold, verdict", "an image is called fake when its score is at or above the threshold (0.5 for a branch "
                           "alone; the fusion's own for the fused score, drawn as a dashed line in the histograms)."),
    ("accuracy", "the share of images given the right verdict at that threshold; real acc / fake acc: the same "
                 "within each class, and balanced accuracy their mean (it does not reward predicting the larger class)."),
    ("AUC (ROC-AUC)", "the chance that a random fake scores higher than a random real: it looks at the ranking only, "
                      "at every threshold at once. 0.5 is chance, 1.0 a perfect ranking."),
    ("AP (average precision)", "the area under the precision-recall curve: how clean the images with the highest "
                               "scores are, summed over recall levels. Its chance level is the share of fakes."),
    ("EER (equal error rate)", "the error rate at the threshold where the share of reals called fake equals the "
                               "share of fakes missed; lower is better."),
    ("TPR@5%FPR", "the share of fakes caught at the threshold that calls 5% of the reals fake (TPR@1%FPR: 1%): "
                  "what a detector catches when false alarms must stay rare."),
    ("why accuracy and AUC disagree", "AUC judges the ranking, accuracy the ranking cut at one threshold. A detector "
                                      "whose scores rank every fake above every real but all sit above 0.5 has AUC "
                                      "1.0 and accuracy 0.5 (every real is called fake): its threshold is wrong, "
                                      "not its ranking. Calibrating the threshold (alignctl ablate --target-fpr) "
                                      "fixes the accuracy without changing the AUC."),
    ("n", "every figure and table says how many images it counts: an image a branch could not score is left out of "
          "that branch's numbers, and a metric on a few images is uncertain."),
]


def glossary_html() -> str:
    items = "".join(f"<dt>{html.escape(term)}</dt><dd>{html.escape(text)}</dd>" for term, text in GLOSSARY)
    return f'<section class="glossary"><h2>How to read this</h2><dl>{items}</dl></section>'


def _table(head: list[str], rows: list[list[Any]]) -> str:
    th = "".join(f"<th>{html_text(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html_text(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _f(v) -> str:
    return "n/a" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def ablation_section(run_dir: Path, fusions: tuple[str, ...] | None, target_fpr: float | None) -> tuple[str, str]:
    """(table HTML, note) of the run's ablation: read from ``RUN/ablation/`` when it exists (never rewritten,
    so a third-party fusion's rows or an ``ablate --target-fpr`` calibration stay as they were); run with
    ``fusions`` and ``target_fpr`` only when the folder is absent."""
    from .ablation import DEFAULT_FUSIONS

    folder = run_dir / "ablation"
    try:
        if (folder / "ablation.csv").is_file():
            rows, settings = read_ablation(folder)
            cal_fraction, target = settings.get("cal_fraction"), settings.get("target_fpr")
            origin = f"read from {folder.name}/ (written by alignctl ablate)"
        else:
            ab = ablate([run_dir], fusions or DEFAULT_FUSIONS, target_fpr=target_fpr)
            rows, cal_fraction, target = ab.rows, ab.cal_fraction, target_fpr
            origin = f"computed now and written to {folder.name}/"
    except AlignCoreError as exc:
        return "", f"Ablation not available: {exc}"
    cols = (*TABLE_METRICS, *FPR_COLUMNS)
    body = [[r["group"], r["method"], f"{r['n']} ({r['n_real']}/{r['n_fake']})", *[_f(r.get(k)) for k in cols]]
            for r in rows]
    table = _table(["group", "method", "n (real/fake)", *[METRIC_TITLES[k] for k in cols]], body)
    note = (describe(target, cal_fraction) if cal_fraction is not None else "") + f" ({origin})"
    extra = notes(rows, escape=html_text)
    if extra:
        table += "<ul>" + "".join(f"<li>{n}</li>" for n in extra) + "</ul>"
    return table, note.strip()


def write_report(run_dir: str | Path, out: str | Path | None = None, fusions: tuple[str, ...] | None = None,
                 target_fpr: float | None = None, note: str | None = None) -> Path:
    """Write ``RUN/report.html`` (or ``out``) and return its path."""
    rd = RunDir.open(run_dir)
    run_dir, info, metrics, cfg = rd.path, rd.info, rd.metrics(), rd.config
    rs = rd.scores()
    figs = make_figures(rs, fused_decision_threshold(rs, metrics))
    ablation_html, ablation_note = ablation_section(run_dir, fusions, target_fpr)
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
        f'<figcaption class="n">{html.escape(c)}</figcaption></figure>' for t, c, b64 in figs)
    note_html = f'<p class="note">{html.escape(note)}</p>' if note else ""
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>aligncore report {html_text(info.get('run_id'))}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; max-width: 1200px; color: #222 }}
table {{ border-collapse: collapse; margin: 8px 0 20px }} td, th {{ border: 1px solid #ccc; padding: 3px 8px; font-size: 13px }}
th {{ background: #f3f3f3 }} figure {{ margin: 0 0 24px }} img {{ max-width: 100% }}
figcaption {{ color: #333; font-size: 14px; max-width: 900px }}
.note {{ background: #fff6d6; padding: 8px 12px; border-left: 4px solid #e0b000 }}
.glossary {{ background: #f6f8fa; padding: 4px 16px 8px; border-left: 4px solid #4C72B0; max-width: 1000px }}
.glossary dt {{ font-weight: 600; margin-top: 6px }} .glossary dd {{ margin: 0 0 0 16px; font-size: 14px }}
</style></head><body>
<h1>aligncore run report</h1>
{note_html}
{glossary_html()}
<h2>Setup</h2>{setup}
<h2>Overall (configured fusion, all images)</h2><p class="n">{html.escape(_count(o["n"], o["n_real"], o["n_fake"]))}</p>{overall}
<h2>Each branch alone (threshold 0.5)</h2><p class="n">Each branch over the images it scored.</p>{per_branch}
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
