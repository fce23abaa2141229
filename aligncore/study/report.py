"""A study's tables: matrix views of its results (metric, or mean ± sample std over seeds), as Markdown,
CSV, JSON and one HTML page; every row also goes to the leaderboard (suite = the study's name).

Only published cells are read (``cell.json`` and the run folders they name); a cell that is not
published yet leaves its table cells empty and is listed, never guessed.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AlignCoreError
from ..text import csv_cell, md_cell
from .cells import CellStore
from .execute import PLAN_FILE, PLAN_FORMAT
from .spec import FUSION_METRICS, SCORE_METRICS, TableSpec

MISSING, UNDEFINED = "-", "n/a"
FORMATS = ("md", "csv", "json", "html")
TINY_NOTE = ("TINY SCALE: every model is a tiny random-initialised preset trained for seconds on a few dozen small "
             "images. These numbers show that the study runs end to end; they are not results about the method.")


@dataclass
class StudyDir:
    path: Path
    plan: dict[str, Any]
    cells: CellStore

    @classmethod
    def open(cls, path: str | Path) -> "StudyDir":
        path = Path(path)
        p = path / PLAN_FILE
        if not p.is_file():
            raise AlignCoreError(f"{path} is not a study folder (no {PLAN_FILE}): make one with `alignctl study run`.")
        try:
            plan = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AlignCoreError(f"{p} cannot be read ({exc}); run `alignctl study run` again to rewrite it.") from None
        if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
            raise AlignCoreError(f"{p} was not written by this version of aligncore; run `alignctl study run` again.")
        return cls(path, plan, CellStore(cls._under(path, plan["cells_dir"])))

    @staticmethod
    def _under(base: Path, p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() else base / q

    @property
    def store(self) -> Path:
        return self._under(self.path, self.plan["store"])

    @property
    def name(self) -> str:
        return self.plan["name"]

    def missing(self) -> list[dict]:
        return [c for c in self.plan["cells"] if self.cells.published(c["key"]) is None]


# ---------------------------------------------------------------------- rows


def result_rows(sd: StudyDir) -> dict[str, list[dict[str, Any]]]:
    """Rows per source (scores, fusions, audits): the result's fields and metrics, plus ``_id`` (what makes two rows
    the same result, so a cell listed for several seeds counts once) and ``_missing`` (its cell is not published)."""
    out: dict[str, list[dict]] = {"scores": [], "fusions": [], "audits": []}
    for ref in sd.plan["results"]:
        rec = sd.cells.published(ref["cell"])
        base = {**ref["attrs"], "_id": ref["cell"], "_missing": rec is None}
        if ref["source"] == "scores":
            out["scores"].append({**base, **(rec["result"]["overall"] if rec else {})})
        elif ref["source"] == "fusions":
            if rec is None:
                out["fusions"].append(base)
                continue
            for r in rec["result"]["rows"]:
                out["fusions"].append({**base, "method": r["method"], "group": r["group"],
                                       "_id": f"{ref['cell']}:{r['method']}:{r['group']}",
                                       **{k: r.get(k) for k in FUSION_METRICS}, "n": r["n"]})
        else:
            metrics = rec["result"]["metrics"] if rec else {}
            out["audits"].append({**base, **metrics, "_metrics": list(metrics)})
    return out


# ---------------------------------------------------------------------- tables


@dataclass
class TableCell:
    values: list[Any] = field(default_factory=list)  # one per distinct result
    missing: int = 0

    def summary(self) -> dict[str, Any]:
        nums = [v for v in self.values if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None
                and not (isinstance(v, float) and math.isnan(v))]
        words = [v for v in self.values if isinstance(v, str)]
        if nums:
            mean = sum(nums) / len(nums)
            std = math.sqrt(sum((x - mean) ** 2 for x in nums) / (len(nums) - 1)) if len(nums) > 1 else None
            # results of the cell whose metric is undefined (e.g. a degenerate learned fusion in one seed): the mean
            # is over fewer results than the others', which the cell must say
            undefined = len(self.values) - len(nums) - len(words)
            return {"mean": mean, "std": std, "n": len(nums), "values": nums, "missing": self.missing,
                    "n_undefined": undefined}
        if words:
            uniq = sorted(set(words))
            return {"value": uniq[0] if len(uniq) == 1 else "/".join(uniq), "n": len(words), "values": words,
                    "missing": self.missing}
        return {"n": 0, "values": [], "missing": self.missing, "undefined": bool(self.values)}

    def text(self) -> str:
        s = self.summary()
        if "mean" in s:
            text = f"{s['mean']:.4f}" + (f" ± {s['std']:.4f}" if s["std"] is not None else "")
            short = [f"{k} {what}" for k, what in ((s["n_undefined"], UNDEFINED), (s["missing"], "not computed")) if k]
            return text + (f" ({s['n']} of {s['n'] + s['n_undefined'] + s['missing']}; {', '.join(short)})" if short else "")
        if "value" in s:
            return str(s["value"])
        return UNDEFINED if s.get("undefined") else MISSING


@dataclass
class TableView:
    spec: TableSpec
    split: dict[str, Any]
    rows: list[str]
    cols: list[str]
    cells: dict[tuple[str, str], TableCell]

    @property
    def heading(self) -> str:
        where = ", ".join(f"{k} {v}" for k, v in self.split.items())
        return self.spec.title + (f" — {where}" if where else "")

    def filled(self) -> bool:
        return all(self.cells.get((r, c)) is not None and "n" in self.cells[(r, c)].summary()
                   and self.cells[(r, c)].summary()["n"] > 0 for r in self.rows for c in self.cols)


def default_tables(rows: dict[str, list[dict]], plan: dict) -> list[TableSpec]:
    out = []
    perturbs = {r.get("perturb") for r in rows["scores"]}
    if rows["scores"]:
        out.append(TableSpec(title="AUC per model and dataset", source="scores", rows="model", cols="dataset",
                             split=["perturb"] if len(perturbs) > 1 else [], metric="auc"))
    if rows["fusions"]:
        out.append(TableSpec(title="Fusion rules and each branch alone: AUC on the evaluation split", source="fusions",
                             rows="method", cols="dataset", split=["fusion"], metric="auc"))
    if rows["audits"]:
        metrics = list(dict.fromkeys(k for r in rows["audits"] for k in r.get("_metrics", [])))
        out.append(TableSpec(title="Audits", source="audits", rows="audit", cols="metric", metrics=metrics or ["verdict"]))
    return out


def build_table(spec: TableSpec, rows: list[dict]) -> list[TableView]:
    """One view per combination of ``split`` values; in each, the results at (row, col) over seeds."""
    def value_of(r, k):
        v = r.get(k)
        return "none" if v is None and k == "perturb" else v

    where = dict(spec.where)
    if spec.source == "fusions" and "group" not in where and "group" not in (spec.rows, spec.cols, *spec.split):
        where["group"] = "all"  # per-generator rows only when the table asks for them
    keep = []
    for r in rows:
        ok = True
        for k, want in where.items():
            have = str(value_of(r, k))
            if (have not in [str(w) for w in want]) if isinstance(want, list) else have != str(want):
                ok = False
        if ok:
            keep.append(r)
    views: dict[tuple, dict] = {}
    metric_cols = spec.cols == "metric"
    for r in keep:
        if r.get(spec.rows) is None or (not metric_cols and r.get(spec.cols) is None):
            continue
        split = tuple((k, value_of(r, k)) for k in spec.split)
        v = views.setdefault(split, {"rows": [], "cols": list(spec.metrics or []) if metric_cols else [], "hits": {}})
        row = str(r[spec.rows])
        if row not in v["rows"]:
            v["rows"].append(row)
        cols = list(spec.metrics or []) if metric_cols else [str(r[spec.cols])]
        for col in cols:
            if col not in v["cols"]:
                v["cols"].append(col)
            v["hits"].setdefault((row, col), []).append((r, col if metric_cols else spec.metric))
    out = []
    for split, v in views.items():
        cells: dict[tuple[str, str], TableCell] = {}
        for (row, col), hits in v["hits"].items():
            by_seed: dict[Any, set] = {}
            seen: dict[str, Any] = {}
            cell = TableCell()
            for r, metric in hits:
                by_seed.setdefault(r.get("seed"), set()).add(r["_id"])
                if r["_id"] in seen:
                    continue
                seen[r["_id"]] = True
                if r.get("_missing"):
                    cell.missing += 1
                else:
                    cell.values.append(r.get(metric))
            crowded = {s: ids for s, ids in by_seed.items() if len(ids) > 1}
            if crowded:
                differ = _differing(hits, spec)
                raise AlignCoreError(
                    f"table {spec.title!r}: the cell ({spec.rows}={row}, {spec.cols}={col}) gets several results per "
                    f"seed (they differ in {', '.join(differ) or 'their cells'}); add one of those fields to rows, "
                    "cols, split or where.")
            cells[(row, col)] = cell
        out.append(TableView(spec, dict(split), v["rows"], v["cols"], cells))
    return out


def _differing(hits: list, spec: TableSpec) -> list[str]:
    keys = set().union(*(set(r) for r, _ in hits)) - {"_id", "_missing", "seed", spec.rows, spec.cols, *spec.split}
    keys = {k for k in keys if k not in SCORE_METRICS and k not in ("n", "n_real", "n_fake", "undefined")}
    return sorted(k for k in keys if len({json.dumps(r.get(k), default=str) for r, _ in hits}) > 1)


@dataclass
class StudyReport:
    study: StudyDir
    views: list[TableView]
    missing: list[dict]
    files: dict[str, Path] = field(default_factory=dict)
    leaderboard_rows: int = 0


def make_report(path: str | Path) -> StudyReport:
    sd = StudyDir.open(path)
    rows = result_rows(sd)
    specs = [TableSpec(**t) for t in sd.plan["report"].get("tables") or []] or default_tables(rows, sd.plan)
    views = [v for s in specs for v in build_table(s, rows[s.source])]
    return StudyReport(sd, views, sd.missing())


# ---------------------------------------------------------------------- rendering


def _cell_text(view: TableView, r: str, c: str) -> str:
    cell = view.cells.get((r, c))
    return cell.text() if cell is not None else MISSING


def _header(view: TableView) -> list[str]:
    corner = view.spec.rows + (" \\ " + view.spec.cols if view.spec.cols != "metric" else "")
    return [corner, *view.cols]


def _what(view: TableView) -> str:
    return "" if view.spec.cols == "metric" else f"{view.spec.metric}; "


def to_markdown(rep: StudyReport) -> str:
    p = rep.study.plan
    # names and prose come from study files and data folders (anyone's): written as text, never as markup
    lines = [f"# Study {_md(p['name'])}" + (f": {_md(p['title'])}" if p.get("title") else ""), ""]
    if p["scale"] == "tiny":
        lines += [f"**{TINY_NOTE}**", ""]
    if p.get("description"):
        lines += [_md_prose(p["description"]), ""]
    note = (p.get("report") or {}).get("note")
    if note:
        lines += [_md_prose(note), ""]
    lines.append(f"Seeds {p['seeds']}; a cell shows the mean ± sample standard deviation over seeds when there are "
                 f"several results ({MISSING}: not computed yet, {UNDEFINED}: undefined for the data).")
    if rep.missing:
        lines.append(f"\n{len(rep.missing)} of {len(p['cells'])} cells are not finished: run `alignctl study run` again.")
    for v in rep.views:
        head = _header(v)
        lines += ["", f"## {_md(v.heading)}", "", f"({_md(_what(v) + v.spec.source)})", "",
                  "| " + " | ".join(_md(h) for h in head) + " |", "|" + "---|" * len(head)]
        for r in v.rows:
            lines.append("| " + " | ".join(_md(x) for x in [r, *[_cell_text(v, r, c) for c in v.cols]]) + " |")
    return "\n".join(lines) + "\n"


def _md(text: Any) -> str:
    """Literal text in Markdown (a table cell, a heading): HTML special characters as entities, inline markup
    and ``|`` backslash-escaped, control characters (a newline too) as escapes (:func:`aligncore.text.md_cell`)."""
    return md_cell(text)


def _md_prose(text: Any) -> str:
    """A paragraph of a study file (description, note) as literal text: :func:`_md` line by line."""
    return "\n".join(md_cell(line) for line in str(text).strip().split("\n"))


def _printable(text: Any) -> str:
    """Names come from study files and data folders: no control characters reach a terminal or a table."""
    return "".join(ch if ch.isprintable() else "?" for ch in str(text))


def _csv_text(value: Any) -> Any:
    """Text through :func:`aligncore.text.csv_cell` (escaped, never a formula; ``read_csv_cell`` reverses it);
    numbers, and text that is a number, pass as they are."""
    if not isinstance(value, str):
        return value
    try:
        float(value)
        return value
    except ValueError:
        return csv_cell(value)


def to_text(rep: StudyReport) -> str:
    """The tables for a terminal: aligned columns."""
    p = rep.study.plan
    out = [f"study {p['name']} ({p['scale']} scale, seeds {p['seeds']})"]
    if p["scale"] == "tiny":
        out.append(TINY_NOTE)
    for v in rep.views:
        head = _header(v)
        head = [_printable(h) for h in head]
        body = [[_printable(r), *[_printable(_cell_text(v, r, c)) for c in v.cols]] for r in v.rows]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
        out += ["", _printable(f"{v.heading}  ({_what(v)}{v.spec.source})"),
                "  ".join(str(h).ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
        out += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in body]
    if rep.missing:
        out.append(f"\n{len(rep.missing)} of {len(p['cells'])} cells are not finished: run `alignctl study run` again.")
    return "\n".join(out) + "\n"


def to_json(rep: StudyReport) -> str:
    p = rep.study.plan
    tables = []
    for v in rep.views:
        tables.append({"title": v.spec.title, "source": v.spec.source, "split": v.split, "rows_field": v.spec.rows,
                       "cols_field": v.spec.cols, "metric": v.spec.metric, "rows": v.rows, "cols": v.cols,
                       "cells": {r: {c: v.cells[(r, c)].summary() if (r, c) in v.cells else None for c in v.cols}
                                 for r in v.rows}})
    doc = {"study": p["name"], "title": p.get("title"), "scale": p["scale"], "seeds": p["seeds"],
           "cells": len(p["cells"]), "missing_cells": [c["label"] for c in rep.missing], "tables": tables}
    return json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n"


def to_csv(rep: StudyReport) -> str:
    """Long format: one line per table cell (mean, std, n and every value)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["table", "split", "row", "col", "metric", "mean", "std", "n", "value", "values"])
    for v in rep.views:
        split = ";".join(f"{k}={val}" for k, val in v.split.items())
        for r in v.rows:
            for c in v.cols:
                s = v.cells[(r, c)].summary() if (r, c) in v.cells else {"n": 0, "values": []}
                metric = c if v.spec.cols == "metric" else v.spec.metric
                w.writerow([_csv_text(x) for x in (v.spec.title, split, r, c, metric)]
                           + [_num(s.get("mean")), _num(s.get("std")), s["n"], _csv_text(s.get("value", "")),
                              json.dumps(s["values"])])
    return buf.getvalue()


def _num(x) -> str:
    return "" if x is None else repr(float(x))


def to_html(rep: StudyReport) -> str:
    p = rep.study.plan
    e = html.escape
    parts = [f"<h1>Study {e(p['name'])}{(': ' + e(p['title'])) if p.get('title') else ''}</h1>"]
    if p["scale"] == "tiny":
        parts.append(f'<p class="note">{e(TINY_NOTE)}</p>')
    if p.get("description"):
        parts.append(f"<p>{e(p['description'])}</p>")
    note = (p.get("report") or {}).get("note")
    if note:
        parts.append(f"<p>{e(note)}</p>")
    kinds: dict[str, int] = {}
    for c in p["cells"]:
        kinds[c["kind"]] = kinds.get(c["kind"], 0) + 1
    parts.append(f"<p>Scale {e(p['scale'])}; seeds {e(str(p['seeds']))}; {len(p['cells'])} cells "
                 f"({e(', '.join(f'{n} {k}' for k, n in kinds.items()))}). Cells show the mean ± sample standard "
                 f"deviation over seeds where there are several results; {MISSING}: not computed yet, "
                 f"{UNDEFINED}: undefined for the data.</p>")
    if rep.missing:
        parts.append(f'<p class="note">{len(rep.missing)} cells are not finished: '
                     f"{e(', '.join(c['label'] for c in rep.missing[:10]))}{' ...' if len(rep.missing) > 10 else ''}</p>")
    for v in rep.views:
        head = "".join(f"<th>{e(h)}</th>" for h in _header(v))
        body = "".join("<tr><th>" + e(r) + "</th>" + "".join(f"<td>{e(_cell_text(v, r, c))}</td>" for c in v.cols)
                       + "</tr>" for r in v.rows)
        parts.append(f"<h2>{e(v.heading)}</h2><p class=\"what\">{e(_what(v) + v.spec.source)}</p>"
                     f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>aligncore study {e(p['name'])}</title><style>"
            "body{font-family:system-ui,sans-serif;margin:24px;max-width:1200px;color:#222}"
            "table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}"
            "th{background:#f3f3f3;text-align:left}td{text-align:right;font-variant-numeric:tabular-nums}"
            ".note{background:#fff6d6;padding:8px 12px;border-left:4px solid #e0b000}.what{color:#666;font-size:12px}"
            "</style></head><body>" + "".join(parts) + "</body></html>\n")


def write_report(rep: StudyReport, out_dir: str | Path | None = None) -> dict[str, Path]:
    out = Path(out_dir) if out_dir else rep.study.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    files = {"md": out / "tables.md", "csv": out / "tables.csv", "json": out / "tables.json", "html": out / "report.html"}
    texts = {"md": to_markdown(rep), "csv": to_csv(rep), "json": to_json(rep), "html": to_html(rep)}
    from .cells import write_atomic

    for k, p in files.items():
        write_atomic(p, texts[k])
    rep.files = files
    return files


# ---------------------------------------------------------------------- leaderboard


def publish_leaderboard(rep: StudyReport, store: str | Path | None = None) -> int:
    """Every finished result row into the leaderboard of ``store`` (default: the study's), suite = the study's name.

    A scoring run is recorded by the runner as it finishes; this adds what is not there yet (e.g. a report
    written to another store) and the fusion ablation's rows, which are measured on the evaluation split
    only and so go to a dataset column of their own (``DATASET:eval-split``). Rows already recorded (same
    run id) are not added twice. Returns the number of rows added.
    """
    from .. import leaderboard
    from ..rundir import RunDir
    from ..store import ScoreStore

    sd = rep.study
    suite = sd.name
    added = 0
    with ScoreStore(store or sd.store) as st:
        have = {r["run_id"] for r in leaderboard.stored_rows(st, suite)}
        for ref in sd.plan["results"]:
            rec = sd.cells.published(ref["cell"])
            if rec is None or "run" not in rec["result"]:
                continue
            rd = RunDir.open(sd.cells.folder(ref["cell"]) / rec["result"]["run"])
            cfg, attrs = rd.config, ref["attrs"]
            if ref["source"] == "scores" and rd.run_id not in have:
                metrics = rd.metrics()
                leaderboard.add_row(st, run_id=rd.run_id, dataset=attrs["dataset"], branches=list(cfg["branches"]),
                                    fusion=cfg["fusion"], metrics=metrics, checkpoints=cfg.get("checkpoints"),
                                    fusion_config=metrics.get("fusion", {}).get("config"), suite=suite,
                                    perturb=cfg.get("perturb"))
                have.add(rd.run_id)
                added += 1
            if ref["source"] != "fusions":
                continue
            fitted = rec["result"]["fitted"]
            for row in rec["result"]["rows"]:
                if row["scope"] != "dataset":
                    continue
                rid = f"{rd.run_id}#{row['method']}"
                if rid in have:
                    continue
                entry = next(iter(fitted.values()), {}).get(row["method"], {})
                kind, _, name = row["method"].partition(":")
                fusion = name if kind == "fusion" else "alone"
                branches = list(cfg["branches"]) if kind == "fusion" else [name]
                config = {**(entry.get("config") or {}), "calibrated_to_fpr": rec["spec"].get("target_fpr")}
                leaderboard.add_row(st, run_id=rid, dataset=f"{attrs['dataset']}:eval-split", branches=branches,
                                    fusion=fusion, metrics={"overall": {k: row.get(k) for k in
                                                                        ("n", *FUSION_METRICS)}},
                                    checkpoints={b: p for b, p in (cfg.get("checkpoints") or {}).items() if b in branches},
                                    fusion_config=config, suite=suite, perturb=cfg.get("perturb"))
                have.add(rid)
                added += 1
    rep.leaderboard_rows = added
    return added
