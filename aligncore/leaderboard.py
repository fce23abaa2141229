"""The leaderboard: one row per detector, datasets as columns, from the score store.

A row's identity is what computed its scores: every branch's fingerprint (code, config,
weights, library versions; see :meth:`aligncore.branch.Branch.fingerprint`), the fusion's
fingerprint (its code, full config and fitted state) and the perturbation. Two runs of the
same branch with different options, presets or weights are two rows. A row shows the branch
names with a short fingerprint and, in ``weights``, where each branch's weights come from
(``random`` for a random-weight preset, else a checkpoint or base-model digest); rows with
random weights are hidden unless asked for. For each row and dataset the latest result counts;
the average is over the datasets that row has. Every row carries the run ids that produced its
numbers, so it can be reproduced or inspected. Only runs in which every branch scored every
image are recorded, unless the run allowed a partial result (``--allow-partial``).
"""

from __future__ import annotations

import csv
import io
import json
import time
from typing import Sequence

from .errors import AlignCoreError
from .store import ScoreStore
from .text import csv_cell, html_text, md_cell, terminal_text

FORMATS = ("table", "md", "csv", "json", "html")
TABLE = "leaderboard"
METRICS = (
    "accuracy", "real_accuracy", "fake_accuracy", "balanced_accuracy", "ap", "auc", "eer", "tpr_at_1fpr", "tpr_at_5fpr",
)
#: columns added after the first release (older stores gain them on the first write)
ADDED = (("fingerprints", "TEXT"), ("weights", "TEXT"), ("fusion_fingerprint", "TEXT"), ("eer", "REAL"))
DEFAULT_METRIC = "auc"
#: metrics where lower is better (sorted ascending by default)
LOWER_IS_BETTER = frozenset({"eer"})
#: one row per scored run; the same table and columns as stores written before it moved here
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      TEXT NOT NULL,
    created     REAL NOT NULL,
    suite       TEXT,
    dataset     TEXT NOT NULL,
    branches    TEXT NOT NULL,
    checkpoints TEXT,
    fusion      TEXT NOT NULL,
    fusion_config TEXT,
    perturb     TEXT,
    n_images    INTEGER,
    {", ".join(f"{m} REAL" for m in METRICS)},
    metrics     TEXT,
    fingerprints TEXT,
    weights     TEXT,
    fusion_fingerprint TEXT
);
"""


def ensure_table(store: ScoreStore) -> None:
    """The table, with the columns later releases added (ALTER TABLE on an older store)."""
    store.ensure_schema(SCHEMA)
    have = {r[1] for r in store.conn.execute(f"PRAGMA table_info({TABLE})")}
    for name, typ in ADDED:
        if name not in have:
            with store.transaction() as c:
                if name not in {r[1] for r in c.execute(f"PRAGMA table_info({TABLE})")}:
                    c.execute(f"ALTER TABLE {TABLE} ADD COLUMN {name} {typ}")


def add_row(store: ScoreStore, *, run_id: str, dataset: str, branches: list[str], fusion: str, metrics: dict,
            checkpoints: dict | None = None, fusion_config: dict | None = None, suite: str | None = None,
            perturb: str | None = None, fingerprints: dict | None = None, weights: dict | None = None,
            fusion_fingerprint: str | None = None) -> None:
    """Record one run's overall metrics (``metrics`` as in ``metrics.json``) under its identity:
    ``fingerprints`` {branch: fingerprint}, ``weights`` {branch: provenance}, ``fusion_fingerprint``."""
    overall = metrics.get("overall", metrics)
    cols = ["run_id", "created", "suite", "dataset", "branches", "checkpoints", "fusion", "fusion_config", "perturb",
            "n_images", *METRICS, "metrics", "fingerprints", "weights", "fusion_fingerprint"]
    vals = (run_id, time.time(), suite, dataset, ",".join(branches), json.dumps(checkpoints or {}, sort_keys=True),
            fusion, json.dumps(fusion_config or {}, sort_keys=True), perturb, overall.get("n"),
            *[overall.get(k) for k in METRICS], json.dumps(metrics, sort_keys=True, default=str),
            json.dumps(fingerprints, sort_keys=True) if fingerprints else None,
            json.dumps(weights, sort_keys=True) if weights else None, fusion_fingerprint)
    ensure_table(store)
    with store.transaction() as c:
        c.execute(f"INSERT INTO {TABLE} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", vals)


def stored_rows(store: ScoreStore, suite: str | None = None) -> list[dict]:
    """Every recorded row (of ``suite`` when given), oldest first; none in a store that never had one."""
    if not store.has_table(TABLE):
        return []
    q, args = f"SELECT * FROM {TABLE}", ()
    if suite is not None:
        q, args = q + " WHERE suite = ?", (suite,)
    with store.reading("the leaderboard"):
        cur = store.conn.execute(q + " ORDER BY id", args)
        cols = [d[0] for d in cur.description]
        rows = [dict(zip(cols, r)) for r in cur.fetchall()]
    missing = {"run_id", "dataset", "branches", "checkpoints", "fusion", "fusion_config", "perturb"} - set(cols)
    if missing:
        raise AlignCoreError(f"the leaderboard table of the score store {store.path} lacks the column(s) "
                             f"{', '.join(sorted(missing))}: it was not written by aligncore.")
    return rows


def _json_mapping(raw) -> dict | None:
    """A stored JSON mapping, or None when the cell holds something else (shown as it is)."""
    try:
        value = json.loads(raw or "{}")
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _short_checkpoints(raw: str | None) -> str:
    ck = _json_mapping(raw)
    if ck is None:
        return str(raw)
    return ",".join(f"{b}={p}" for b, p in sorted(ck.items())) or "-"


def _fusion_label(name: str, raw_config: str | None) -> str:
    """``max`` or, when its config differs from the defaults, ``max(threshold=0.99)``."""
    cfg = _json_mapping(raw_config)
    if cfg is None:
        return f"{name}({raw_config})"
    try:
        from .registry import create_fusion

        default = create_fusion(name).config.model_dump(mode="json")
    except Exception:  # a fusion whose plugin is gone: show the whole config
        default = {}
    diff = {k: v for k, v in cfg.items() if default.get(k, object()) != v}
    return name + ("(" + ", ".join(f"{k}={json.dumps(v, sort_keys=True)}" for k, v in sorted(diff.items())) + ")" if diff else "")


def _identity(r: dict) -> tuple:
    """What computed a row's scores; rows recorded before fingerprints were stored fall back to names + paths."""
    if r.get("fingerprints"):
        fusion = r.get("fusion_fingerprint") or f"{r['fusion']}:{r['fusion_config'] or '{}'}"
        return ("fp", r["fingerprints"], fusion, r["perturb"] or "")
    return ("names", r["branches"], r["checkpoints"] or "{}", r["fusion"], r["fusion_config"] or "{}", r["perturb"] or "")


def _branch_label(r: dict) -> str:
    """``npr#1a2b3c4d,qwen#5e6f7a8b``: names with the first 8 hex digits of each fingerprint."""
    fps = json.loads(r["fingerprints"]) if r.get("fingerprints") else {}
    names = [b for b in (r["branches"] or "").split(",") if b]
    return ",".join(f"{b}#{fps[b].split('@')[0].rsplit('-', 1)[-1][:8]}" if b in fps else b for b in names)


def _weights_label(r: dict) -> tuple[str, bool]:
    """(``npr=random,qwen=pretrained:...``, whether any branch has random weights); ``?`` for older rows."""
    w = json.loads(r["weights"]) if r.get("weights") else None
    if not w:
        return "?", False
    names = [b for b in (r["branches"] or "").split(",") if b] or sorted(w)
    random = any(w.get(b) == "random" for b in names)
    if len(set(w.values())) == 1:  # one branch, or every branch alike (e.g. all random)
        return next(iter(w.values())), random
    return ",".join(f"{b}={w.get(b, '?')}" for b in names), random


def _metric_value(r: dict, metric: str):
    v = r.get(metric)
    if v is None and metric == "eer" and r.get("metrics"):  # a row recorded before the eer column
        try:
            v = json.loads(r["metrics"]).get("overall", {}).get("eer")
        except ValueError:
            v = None
    return v


def leaderboard(store: ScoreStore, suite: str | None = None, metric: str = DEFAULT_METRIC,
                sort: str | None = None, descending: bool | None = None,
                include_random: bool = False) -> tuple[list[str], list[dict]]:
    """(dataset names, rows); each row has branches (with short fingerprints), weights, checkpoints, fusion,
    perturb, one column per dataset, ``average``, ``n_datasets`` and ``run_ids``. Rows whose branches
    include random weights are left out unless ``include_random``. ``descending`` defaults to "best first"
    (ascending for EER)."""
    if metric not in METRICS:
        raise AlignCoreError(f"--metric {metric!r} is not one of {', '.join(METRICS)}.")
    if descending is None:
        descending = metric not in LOWER_IS_BETTER
    raw = stored_rows(store, suite)
    datasets: list[str] = []
    table: dict[tuple, dict] = {}
    for r in raw:  # ordered by id: a later result for the same (identity, dataset) replaces an earlier one
        weights, random = _weights_label(r)
        if random and not include_random:
            continue
        key = _identity(r)
        if r["dataset"] not in datasets:
            datasets.append(r["dataset"])
        row = table.setdefault(key, {
            "branches": _branch_label(r), "weights": weights, "checkpoints": _short_checkpoints(r["checkpoints"]),
            "fusion": _fusion_label(r["fusion"], r["fusion_config"]),
            "fusion_config": r["fusion_config"] or "{}", "perturb": r["perturb"] or "none", "_cells": {}, "_runs": {},
        })
        row["_cells"][r["dataset"]] = _metric_value(r, metric)
        row["_runs"][r["dataset"]] = r["run_id"]
    datasets.sort()
    rows = []
    for row in table.values():
        cells, runs = row.pop("_cells"), row.pop("_runs")
        vals = [cells[d] for d in datasets if cells.get(d) is not None]
        for d in datasets:
            row[d] = cells.get(d)
        row["average"] = sum(vals) / len(vals) if vals else None
        row["n_datasets"] = len(cells)
        row["run_ids"] = " ".join(runs[d] for d in datasets if d in runs)
        rows.append(row)
    col = sort or "average"
    if rows and col not in rows[0]:
        raise AlignCoreError(f"--sort {col!r}: choose one of {', '.join(k for k in rows[0] if k != 'fusion_config')}.")
    present = [r for r in rows if r.get(col) is not None]
    absent = [r for r in rows if r.get(col) is None]
    present.sort(key=lambda r: r[col], reverse=descending)
    return datasets, present + absent


def render(datasets: Sequence[str], rows: list[dict], fmt: str = "table", metric: str = DEFAULT_METRIC,
           suite: str | None = None) -> str:
    cols = ["branches", "weights", "fusion", "perturb", *datasets, "average", "run_ids"]
    if fmt == "json":
        return json.dumps({"suite": suite, "metric": metric, "datasets": list(datasets), "rows": rows}, indent=2) + "\n"

    def cell(v) -> str:
        if v is None:
            return "-"
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    if fmt == "csv":  # names are data: escaped and never a spreadsheet formula (aligncore.text.csv_cell)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow([csv_cell(c) for c in cols])
        for r in rows:
            w.writerow(["" if r.get(c) is None else r[c] if isinstance(r[c], (int, float)) else csv_cell(r[c])
                        for c in cols])
        return buf.getvalue()
    if fmt == "md":  # names are data: no HTML, links or extra columns (aligncore.text.md_cell)
        title = md_cell(f"Leaderboard ({metric}{', suite ' + suite if suite else ''})")
        out = [f"{title}\n", "| " + " | ".join(md_cell(c) for c in cols) + " |", "|" + "---|" * len(cols)]
        out += ["| " + " | ".join(md_cell(cell(r.get(c))) for c in cols) + " |" for r in rows]
        return "\n".join(out) + "\n"
    if fmt == "html":
        head = "".join(f"<th>{html_text(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{html_text(cell(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows)
        title = html_text(f"aligncore leaderboard: {metric}" + (f", suite {suite}" if suite else ""))
        return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>"
                "<style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
                "padding:3px 8px;font-size:13px}</style></head>"
                f"<body><h1>{title}</h1><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></body></html>\n")
    if fmt != "table":
        raise AlignCoreError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}.")
    short = [terminal_text(c) for c in cols if c != "run_ids"]
    body = [[terminal_text(cell(r.get(c))) for c in cols if c != "run_ids"] for r in rows]
    widths = [max(len(x) for x in colv) for colv in zip(short, *body)] if rows else [len(c) for c in short]
    lines = [terminal_text(f"metric: {metric}" + (f"   suite: {suite}" if suite else "")),
             "  ".join(c.ljust(w) for c, w in zip(short, widths)), "  ".join("-" * w for w in widths)]
    for r, vals in zip(rows, body):
        lines.append("  ".join(v.ljust(w) for v, w in zip(vals, widths)))
        lines.append(f"    runs: {terminal_text(r['run_ids'])}")
    return "\n".join(lines) + "\n"
