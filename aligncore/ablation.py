"""Fusion ablation on stored scores: every fusion rule, and every branch alone, side by side.

Nothing here loads a model or imports torch: the per-branch scores come from the run folder
(:class:`aligncore.rundir.RunDir`, full-precision scores as the run wrote them). Each run's images are split by a
hash of their content into a calibration part (learned fusions are fitted there, and
thresholds picked there for ``target_fpr``) and a disjoint evaluation part on which every
row of the table is measured. Identical files always fall on the same side, so a
duplicated image can never leak from calibration into evaluation.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import AlignCoreError
from .fusion import FusionInputError, calibration_note, state_entry, threshold_for_fpr
from .metrics import binary_metrics, generator_groups
from .registry import get_registry
from .rundir import FolderLayout, RunDir, RunScores, publish_folder
from .text import csv_cell, md_cell, read_csv_cell, terminal_text

DEFAULT_FUSIONS = ("or", "and", "max", "weighted", "learned")
TABLE_METRICS = ("accuracy", "real_accuracy", "fake_accuracy", "balanced_accuracy", "ap", "auc", "eer", "tpr_at_5fpr")
METRIC_TITLES = {"accuracy": "acc", "real_accuracy": "real acc", "fake_accuracy": "fake acc",
                 "balanced_accuracy": "bal acc", "ap": "AP", "auc": "AUC", "eer": "EER", "tpr_at_5fpr": "TPR@5%FPR",
                 "calib_fpr": "calib FPR", "eval_fpr": "eval FPR"}


ABLATION_FILES = frozenset({"ablation.csv", "ablation.md", "fusions.json", "split.json"})


def _ablation_file(name: str) -> bool:
    return name in ABLATION_FILES or name.endswith((".state.json", ".tmp"))


#: an ablation folder holds only these files; a new ablation replaces the previous one as a whole
ABLATION_LAYOUT = FolderLayout(owned=_ablation_file, replaced=_ablation_file)


def calibration_mask(sha256: Sequence[str], fraction: float, seed: int = 0) -> np.ndarray:
    """True for images in the calibration split: a content-hash draw, so duplicates share a side."""
    if not 0.0 < fraction < 1.0:
        raise AlignCoreError(f"--cal-fraction must lie strictly between 0 and 1, not {fraction}.")
    out = np.empty(len(sha256), dtype=bool)
    for i, h in enumerate(sha256):
        d = hashlib.sha256(f"{seed}:{h}".encode()).digest()
        out[i] = int.from_bytes(d[:8], "big") / 2**64 < fraction
    return out


@dataclass
class AblationResult:
    rows: list[dict]
    fitted: dict[str, dict[str, dict]]  # dataset → method → {"name", "config", "state", "calib_fpr", ...}
    splits: dict[str, dict[str, list[str]]]  # dataset → {"calibration", "evaluation", "left_out": [sha256]}
    target_fpr: float | None
    cal_fraction: float
    files: dict[str, Path] = field(default_factory=dict)
    states: dict[str, dict[str, dict]] = field(default_factory=dict)  # dataset → fusion → state file entry
    seed: int = 0


def _groups(rs: RunScores) -> list[tuple[str, str, np.ndarray]]:
    """(scope, group, mask): the whole dataset, then each generator of fakes (see
    :func:`aligncore.metrics.generator_groups`: its own reals when its folder has them, else all reals)."""
    lab = rs.labels
    return [("dataset", "all", lab >= 0)] + [("generator", g, m) for g, m in generator_groups(lab, rs.generators)]


def _fpr(verdict: np.ndarray, labels: np.ndarray) -> float | None:
    reals = labels == 0
    return round(float(verdict[reals].mean()), 6) if reals.any() else None


def complete_rows(rs: RunScores) -> np.ndarray:
    """Images every branch scored: the only ones a fusion (or a comparison of branches) is measured on."""
    if not rs.branches:
        return np.zeros(len(rs), dtype=bool)
    return np.all([np.isfinite(rs.scores[b]) for b in rs.branches], axis=0)


def ablate_run(rs: RunScores, fusions: Sequence[str] = DEFAULT_FUSIONS, target_fpr: float | None = None,
               cal_fraction: float = 0.3, seed: int = 0, fusion_options: dict[str, dict] | None = None,
               include_branches: bool = True) -> tuple[list[dict], dict[str, dict], dict[str, list[str]]]:
    reg = get_registry()
    labelled = rs.labels >= 0
    if not labelled.any():
        raise AlignCoreError(f"run {rs.run_id} has no labelled images; an ablation needs labels.")
    usable = labelled & complete_rows(rs)
    in_cal = calibration_mask(rs.sha256, cal_fraction, seed)
    cal, ev = in_cal & usable, ~in_cal & usable
    c, e = rs.subset(cal), rs.subset(ev)
    for part, name in ((c, "calibration"), (e, "evaluation")):
        if not ((part.labels == 0).any() and (part.labels == 1).any()):
            raise AlignCoreError(
                f"dataset {rs.dataset}: the {name} split has {(part.labels == 0).sum()} real and "
                f"{(part.labels == 1).sum()} fake images (scored by every branch); both classes are needed. "
                "Use more images or change --cal-fraction."
            )
    c_real = int((c.labels == 0).sum())
    methods: list[tuple[str, Any]] = []  # (row label, callable giving (score, verdict) on a RunScores)
    fitted: dict[str, dict] = {}
    for name in fusions:
        opts = dict((fusion_options or {}).get(name, {}))
        if "seed" in reg.get("fusion", name).cls.config_class.model_fields:
            opts.setdefault("seed", seed)  # --seed reaches a fusion's own randomness (the learned fusion's CV folds)
        fusion = reg.create("fusion", name, opts)
        if fusion.needs_fit:
            fusion.fit(c.scores, c.labels)
        bad = fusion.degenerate()
        if target_fpr is not None and not bad:
            fusion.calibrate(c.scores, c.labels, target_fpr)
        cal_v = fusion.predict(c.scores).verdict
        note = bad or (calibration_note(int(cal_v[c.labels == 0].sum()), c_real, target_fpr) if target_fpr is not None
                       else "")
        fitted[f"fusion:{name}"] = {
            "name": name, "config": fusion.config.model_dump(mode="json"), "state": fusion.state_dict(),
            "calib_fpr": None if bad else _fpr(cal_v, c.labels), "note": note, "degenerate": bool(bad),
            "fitted": bool(fusion.needs_fit or target_fpr is not None), "fusion": fusion,
        }
        methods.append((f"fusion:{name}", None if bad else (lambda part, f=fusion: _fused(f, part))))
    if include_branches:
        for b in rs.branches:
            t = 0.5 if target_fpr is None else threshold_for_fpr(c.scores[b][c.labels == 0], target_fpr)
            cal_v = c.scores[b] >= t
            fitted[f"branch:{b}"] = {
                "name": b, "config": {"threshold": t}, "state": {}, "calib_fpr": _fpr(cal_v, c.labels),
                "note": calibration_note(int(cal_v[c.labels == 0].sum()), c_real, target_fpr) if target_fpr is not None else "",
                "degenerate": False, "fitted": target_fpr is not None,
            }
            methods.append((f"branch:{b}", lambda part, b=b, t=t: (part.scores[b], part.scores[b] >= t)))
    rows = []
    outputs = [(label, fn(e) if fn is not None else None) for label, fn in methods]
    for scope, group, mask in _groups(e):
        for label, out in outputs:
            if out is None:  # a degenerate fit: reported as such, never as a result
                m = binary_metrics(e.labels[mask], np.full(int(mask.sum()), np.nan), np.zeros(int(mask.sum()), bool))
                m.update({k: None for k in TABLE_METRICS}, n=int(mask.sum()), n_real=int((e.labels[mask] == 0).sum()),
                         n_fake=int((e.labels[mask] == 1).sum()))
                eval_fpr = None
            else:
                score, verdict = out
                m = binary_metrics(e.labels[mask], score[mask], verdict[mask])
                eval_fpr = _fpr(verdict[mask], e.labels[mask])
            row = {"dataset": rs.dataset, "run_id": rs.run_id, "scope": scope, "group": group, "method": label,
                   "n": m["n"], "n_real": m["n_real"], "n_fake": m["n_fake"]}
            row.update({k: m.get(k) for k in TABLE_METRICS})
            row.update(calib_fpr=fitted[label]["calib_fpr"], eval_fpr=eval_fpr, note=fitted[label]["note"])
            rows.append(row)
    split = {"calibration": list(c.sha256), "evaluation": list(e.sha256),
             "left_out": [h for h, u, lab in zip(rs.sha256, usable, labelled) if lab and not u]}
    return rows, fitted, split


def _fused(fusion, part: RunScores) -> tuple[np.ndarray, np.ndarray]:
    out = fusion.predict(part.scores)
    return out.score, out.verdict


def ablate(run_dirs: Sequence[str | Path], fusions: Sequence[str] = DEFAULT_FUSIONS, target_fpr: float | None = None,
           cal_fraction: float = 0.3, seed: int = 0, fusion_options: dict[str, dict] | None = None,
           out_dir: str | Path | None = None) -> AblationResult:
    """Run the ablation over one or more finished runs (one dataset each) and write CSV, Markdown and JSON,
    plus one reusable state file per fitted or calibrated fusion (never for a degenerate fit)."""
    if target_fpr is not None and not 0.0 <= target_fpr < 1.0:
        raise AlignCoreError(f"--target-fpr must lie in [0, 1), not {target_fpr}.")
    reg = get_registry()
    for name in fusions:
        reg.get("fusion", name)  # unknown names fail before any work
    all_rows: list[dict] = []
    fitted: dict[str, dict] = {}
    splits: dict[str, dict] = {}
    states: dict[str, dict] = {}
    for rd in run_dirs:
        rs = RunDir.open(rd).scores()
        key = rs.dataset if rs.dataset not in fitted else f"{rs.dataset}#{rs.run_id}"
        try:
            rows, fit, split = ablate_run(rs, fusions, target_fpr, cal_fraction, seed, fusion_options)
        except FusionInputError as exc:
            raise AlignCoreError(f"run {rd} (dataset {rs.dataset}): {exc}.") from None
        for r in rows:
            r["dataset"] = key
        all_rows += rows
        for method, entry in fit.items():
            fusion = entry.pop("fusion", None)
            if fusion is not None and entry["fitted"] and not entry["degenerate"]:
                states.setdefault(key, {})[entry["name"]] = state_entry(
                    fusion, split["calibration"], run_id=rs.run_id, dataset=key, target_fpr=target_fpr,
                    calib_fpr=entry["calib_fpr"], cal_fraction=cal_fraction, seed=seed)
        fitted[key] = fit
        splits[key] = split
    result = AblationResult(all_rows, fitted, splits, target_fpr, cal_fraction, states=states, seed=seed)
    out = Path(out_dir) if out_dir else Path(run_dirs[0]) / "ablation"
    texts = {
        "csv": ("ablation.csv", to_csv(all_rows)),
        "md": ("ablation.md", to_markdown(all_rows, target_fpr, cal_fraction)),
        "fusions": ("fusions.json", json.dumps(fitted, indent=2, sort_keys=True) + "\n"),
        "split": (SETTINGS, json.dumps(
            {"cal_fraction": cal_fraction, "seed": seed, "target_fpr": target_fpr, "fusions": list(fusions),
             "splits": splits}, indent=1, sort_keys=True) + "\n"),
    }
    for ds, entries in states.items():  # one file per fitted fusion, ready for --fusion-state
        for name, entry in entries.items():
            safe = state_file_part(ds)
            texts[f"state:{ds}:{name}"] = (f"{name}-{safe}.state.json", json.dumps(entry, indent=2, sort_keys=True) + "\n")
    # one step: a kill leaves the previous ablation or this one, never a mix of both; states an earlier
    # ablation left here go with it (they would not match this table)
    try:
        publish_folder(out, {name: text.encode("utf-8") for name, text in texts.values()}, ABLATION_LAYOUT)
    except OSError as exc:
        raise AlignCoreError(f"cannot write the ablation to {out}: {exc.strerror or exc}. Choose another --out.") from None
    result.files = {key: out / name for key, (name, _) in texts.items()}
    return result


SETTINGS = "split.json"


def state_file_part(dataset: str) -> str:
    """The dataset's part of a state file's name: its letters, digits and ``-_.`` (others become ``_``), at most
    64 characters; a name that had to change gets a digest of the original, so two datasets never share a file."""
    safe = "".join(ch if (ch.isascii() and ch.isalnum()) or ch in "-_." else "_" for ch in dataset)
    if safe == dataset and len(safe) <= 64:
        return safe
    digest = hashlib.sha256(dataset.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{safe[:64]}-{digest}"


def read_ablation(folder: str | Path) -> tuple[list[dict], dict]:
    """The rows of an ablation folder's ``ablation.csv`` (numbers as numbers, empty cells as None) and its
    settings (``split.json``: cal_fraction, seed, target_fpr, fusions); nothing is recomputed."""
    folder = Path(folder)
    with open(folder / "ablation.csv", newline="", encoding="utf-8") as f:
        raw = list(csv.DictReader(f))
    rows = []
    for r in raw:
        row: dict[str, Any] = dict(r)
        for k in ("n", "n_real", "n_fake"):
            row[k] = int(r[k]) if r.get(k) not in (None, "") else None
        for k in (*TABLE_METRICS, "calib_fpr", "eval_fpr"):
            row[k] = float(r[k]) if r.get(k) not in (None, "") else None
        for k in TEXT_COLUMNS:  # written through csv_cell: the exact names back, not their spreadsheet spelling
            if r.get(k):
                row[k] = read_csv_cell(r[k])
        rows.append(row)
    try:
        settings = json.loads((folder / SETTINGS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        settings = {}
    return rows, {k: settings.get(k) for k in ("cal_fraction", "seed", "target_fpr", "fusions")}


# ---------------------------------------------------------------------- formatting

COLUMNS = ("dataset", "scope", "group", "method", "n", "n_real", "n_fake", *TABLE_METRICS, "calib_fpr", "eval_fpr", "note")
#: shown after the metrics: the FPR the thresholds give on the calibration split and on the evaluated images
FPR_COLUMNS = ("calib_fpr", "eval_fpr")


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


#: text columns of ablation.csv: written through :func:`aligncore.text.csv_cell` (escaped, never a formula)
TEXT_COLUMNS = ("dataset", "scope", "group", "method", "note", "run_id")


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[*COLUMNS, "run_id"], lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else csv_cell(r[k]) if k in TEXT_COLUMNS else r.get(k))
                    for k in [*COLUMNS, "run_id"]})
    return buf.getvalue()


def describe(target_fpr: float | None, cal_fraction: float) -> str:
    """One sentence on what the table measures."""
    thr = f"thresholds calibrated to {target_fpr:.2%} FPR on the calibration reals" if target_fpr is not None \
        else "configured thresholds (0.5 unless set)"
    return (f"Evaluation split only ({1 - cal_fraction:.0%} of images by content hash, those every branch scored); "
            f"learned fusions fitted on the disjoint calibration split; {thr}; calib FPR / eval FPR: the share of "
            "reals called fake on the calibration split / on the evaluated images.")


def note_rows(rows: list[dict]) -> list[tuple[str, str, str]]:
    """``(dataset, method, note)`` once per dataset and method that has one (a degenerate fit, an unreachable
    calibration target). The dataset is a folder's name: each output escapes it in its own way."""
    seen: dict[tuple[str, str], str] = {}
    for r in rows:
        key = (str(r["dataset"]), str(r["method"]))
        if r.get("note") and key not in seen:
            seen[key] = str(r["note"])
    return [(d, m, n) for (d, m), n in seen.items()]


def notes(rows: list[dict], escape=terminal_text) -> list[str]:
    """``dataset method: note`` lines, each part through ``escape`` (default: safe for a terminal)."""
    return [f"{escape(d)} {escape(m)}: {escape(n)}" for d, m, n in note_rows(rows)]


def to_markdown(rows: list[dict], target_fpr: float | None = None, cal_fraction: float | None = None) -> str:
    head = ["dataset", "group", "method", "n (real/fake)", *[METRIC_TITLES[k] for k in (*TABLE_METRICS, *FPR_COLUMNS)]]
    lines = []
    if cal_fraction is not None:
        lines.append(describe(target_fpr, cal_fraction) + "\n")
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for r in rows:
        vals = [md_cell(r["dataset"]), md_cell(r["group"]), md_cell(r["method"]),
                f"{r['n']} ({r['n_real']}/{r['n_fake']})", *[_fmt(r.get(k)) for k in (*TABLE_METRICS, *FPR_COLUMNS)]]
        lines.append("| " + " | ".join(vals) + " |")
    extra = note_rows(rows)
    if extra:  # the method (a registered name) starts the item: a dataset name cannot open a heading or a list
        lines.append("")
        lines += [f"- {md_cell(m)} on {md_cell(d)}: {md_cell(n)}" for d, m, n in extra]
    return "\n".join(lines) + "\n"


def to_text(rows: list[dict]) -> str:
    cols = (*TABLE_METRICS, *FPR_COLUMNS)
    head = ["dataset", "group", "method", "n", *[METRIC_TITLES[k] for k in cols]]
    body = [[terminal_text(r["dataset"]), terminal_text(r["group"]), terminal_text(r["method"]), str(r["n"]),
             *[_fmt(r.get(k)) for k in cols]] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    out.append("  ".join("-" * w for w in widths))
    prev = None
    for r, vals in zip(rows, body):
        if prev is not None and (r["dataset"], r["group"]) != prev:
            out.append("")
        prev = (r["dataset"], r["group"])
        out.append("  ".join(v.ljust(w) for v, w in zip(vals, widths)))
    extra = notes(rows)
    if extra:
        out += ["", "notes:", *[f"  {n}" for n in extra]]
    return "\n".join(out)

