"""Audits: the ``Audit`` base that plugins register, and the core's format-bias audit.

An :class:`Audit` checks a labelled set (a plugin registers it with ``register_audits``,
e.g. the pixel-leakage audit of a semantic set); studies run audits by registered name.

Format-bias audit: does a detector tell real from fake, or JPEG from PNG?

Public real/fake collections often differ in file format between the classes (camera JPEGs
against generator PNGs or WebPs). A detector can score well there by reading compression
traces. The audit counts the formats per class, then scores the data twice: as the files
are, and with both classes re-encoded identically (``jpeg:95`` by default). A branch whose
accuracy falls a lot under identical re-encoding was leaning on the format.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

from .component import Component, ComponentConfig
from .data import load_dataset, record_bytes

AUDIT_METRICS = ("accuracy", "real_accuracy", "fake_accuracy", "auc")


# ---------------------------------------------------------------------- audits registered by plugins


class AuditConfig(ComponentConfig):
    """Base of every audit's options (unknown fields are errors)."""


@dataclass
class AuditOutcome:
    """What an audit found: flat ``metrics`` for tables (numbers, or short words such as a verdict) and the
    full ``details`` (JSON-serialisable)."""

    metrics: dict[str, float | int | str | None]
    details: dict[str, Any] = field(default_factory=dict)


class Audit(Component):
    """A check of a labelled set. Subclasses set ``config_class`` and implement :meth:`run`."""

    config_class: ClassVar[type[AuditConfig]] = AuditConfig
    config: AuditConfig

    @classmethod
    def kind_name(cls) -> str:
        return "audit"

    def check(self) -> None:
        """Checks that need no data (e.g. that the components it names exist and accept its options), so a
        study can refuse a bad audit before any work; raise :class:`aligncore.errors.AlignCoreError`."""

    def run(self, target: str | Path, out_dir: str | Path, log: Callable[[str], None] | None = None) -> AuditOutcome:
        """Audit the set ``target`` (a folder or manifest), writing work files under ``out_dir``."""
        raise NotImplementedError


# ---------------------------------------------------------------------- format-bias audit


def format_census(data: str, allow_outside: bool = False) -> dict[str, dict[str, int]]:
    """{'real': {'JPEG': n, ...}, 'fake': {...}} from the file headers (no full decode)."""
    from PIL import Image

    out: dict[str, Counter] = {"real": Counter(), "fake": Counter()}
    for r in load_dataset(data, allow_outside=allow_outside).records:
        if r.label is None:
            continue
        try:
            with Image.open(r.path if r.is_file else io.BytesIO(record_bytes(r))) as im:
                fmt = im.format or "unknown"
        except Exception:
            fmt = "unreadable"
        out["real" if r.label == 0 else "fake"][fmt] += 1
    return {k: dict(sorted(v.items())) for k, v in out.items()}


@dataclass
class AuditResult:
    census: dict[str, dict[str, int]]
    runs: dict[str, str]  # condition → run id
    rows: list[dict]  # one per (branch or fused, condition)


def audit_format(data: str, run_options: dict[str, Any], reencode: Sequence[str] = ("jpeg:95",),
                 progress: bool = True, log: Callable[[str], None] | None = None,
                 out: str | None = None) -> AuditResult:
    """Score ``data`` as-is and re-encoded; with ``out``, each condition's run goes to ``out/<condition>`` and
    the table to ``out/audit.json`` and ``out/audit.csv``."""
    from .config import make_run_config
    from .perturb import normalize_perturb
    from .runner import run

    census = format_census(data, bool(run_options.get("allow_outside_paths")))
    conditions = ["as-is", *[normalize_perturb(s) for s in reencode]]
    results, runs = {}, {}
    for cond in conditions:
        if log:
            log(f"scoring condition {cond}")
        where = {"out": str(Path(out) / cond.replace(":", "-"))} if out else {}
        cfg = make_run_config(None, **{**run_options, **where, "data": data, "perturb": None if cond == "as-is" else cond})
        res = run(cfg, progress=progress)
        results[cond], runs[cond] = res.metrics, res.run_id
    rows = []
    base = results["as-is"]
    for cond in conditions:
        m = results[cond]
        entries = {**{f"branch:{b}": v for b, v in m["per_branch"].items()}, f"fused:{m['fusion']['name']}": m["overall"]}
        base_entries = {**{f"branch:{b}": v for b, v in base["per_branch"].items()}, f"fused:{base['fusion']['name']}": base["overall"]}
        for name, vals in entries.items():
            row = {"detector": name, "condition": cond}
            for k in AUDIT_METRICS:
                row[k] = vals.get(k)
                b = base_entries[name].get(k)
                row[f"delta_{k}"] = None if (vals.get(k) is None or b is None) else round(vals[k] - b, 6)
            rows.append(row)
    result = AuditResult(census, runs, rows)
    if out:
        write_audit(result, Path(out))
    return result


def write_audit(result: AuditResult, out: Path) -> None:
    """``out/audit.json`` (census, run ids, rows) and ``out/audit.csv`` (the rows)."""
    import csv
    import io
    import json

    out.mkdir(parents=True, exist_ok=True)
    (out / "audit.json").write_text(json.dumps({"census": result.census, "runs": result.runs, "rows": result.rows},
                                               indent=2, sort_keys=True) + "\n", encoding="utf-8")
    cols = ["detector", "condition", *AUDIT_METRICS, *[f"delta_{k}" for k in AUDIT_METRICS]]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    w.writerows([{k: ("" if r.get(k) is None else r.get(k)) for k in cols} for r in result.rows])
    (out / "audit.csv").write_text(buf.getvalue(), encoding="utf-8")
