"""The leaderboard: one row per detector configuration, datasets as columns, from the score store.

A configuration is (branches, checkpoints, fusion, perturbation). For each configuration and
dataset the latest result counts; the average is over the datasets that configuration has.
Every row carries the run ids that produced its numbers, so it can be reproduced or inspected.
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
    "accuracy", "real_accuracy", "fake_accuracy", "balanced_accuracy", "ap", "auc", "tpr_at_1fpr", "tpr_at_5fpr",
)
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
    metrics     TEXT
);
"""


def add_row(store: ScoreStore, *, run_id: str, dataset: str, branches: list[str], fusion: str, metrics: dict,
            checkpoints: dict | None = None, fusion_config: dict | None = None, suite: str | None = None,
            perturb: str | None = None) -> None:
    """Record one run's overall metrics (``metrics`` as in ``metrics.json``)."""
    overall = metrics.get("overall", metrics)
    cols = ["run_id", "created", "suite", "dataset", "branches", "checkpoints", "fusion", "fusion_config", "perturb",
            "n_images", *METRICS, "metrics"]
    vals = (run_id, time.time(), suite, dataset, ",".join(branches), json.dumps(checkpoints or {}, sort_keys=True),
            fusion, json.dumps(fusion_config or {}, sort_keys=True), perturb, overall.get("n"),
            *[overall.get(k) for k in METRICS], json.dumps(metrics, sort_keys=True, default=str))
    store.ensure_schema(SCHEMA)
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


def leaderboard(store: ScoreStore, suite: str | None = None, metric: str = "accuracy",
                sort: str | None = None, descending: bool = True) -> tuple[list[str], list[dict]]:
    """(dataset names, rows); each row has branches, checkpoints, fusion, perturb, one column per dataset,
    ``average``, ``n_datasets`` and ``run_ids``."""
    if metric not in METRICS:
        raise AlignCoreError(f"--metric {metric!r} is not one of {', '.join(METRICS)}.")
    raw = stored_rows(store, suite)
    datasets: list[str] = []
    table: dict[tuple, dict] = {}
    for r in raw:  # ordered by id: a later result for the same (config, dataset) replaces an earlier one
        key = (r["branches"], r["checkpoints"] or "{}", r["fusion"], r["fusion_config"] or "{}", r["perturb"] or "")
        if r["dataset"] not in datasets:
            datasets.append(r["dataset"])
        row = table.setdefault(key, {
            "branches": r["branches"], "checkpoints": _short_checkpoints(r["checkpoints"]), "fusion": _fusion_label(r["fusion"], r["fusion_config"]),
            "fusion_config": r["fusion_config"] or "{}", "perturb": r["perturb"] or "none", "_cells": {}, "_runs": {},
        })
        row["_cells"][r["dataset"]] = r[metric]
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


def render(datasets: Sequence[str], rows: list[dict], fmt: str = "table", metric: str = "accuracy",
           suite: str | None = None) -> str:
    cols = ["branches", "checkpoints", "fusion", "perturb", *datasets, "average", "run_ids"]
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
