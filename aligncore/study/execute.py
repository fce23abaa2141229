"""Running a planned study: each unpublished cell through the library function that does its work.

data → :mod:`.data`; set → a registered builder's ``build`` (or a union of sets); train →
:func:`aligncore.train.train_branch`; score → :func:`aligncore.runner.run`; fuse →
:func:`aligncore.runner.run` over the members' stored scores, then :func:`aligncore.ablation.ablate`;
audit → a registered :class:`aligncore.audit.Audit`. Published cells are reused as they are.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import AlignCoreError
from .cells import MARKER, Cell, CellStore, write_atomic
from .plan import StudyPlan

PLAN_FILE = "plan.json"
STUDY_FILE = "study.yaml"
CELLS_DIR = "cells"
STORE_FILE = "store.sqlite"
LOCK_FILE = ".lock"
PLAN_FORMAT = 1


@dataclass
class StudyRunResult:
    out: Path
    plan: StudyPlan
    reused: list[Cell] = field(default_factory=list)
    computed: list[Cell] = field(default_factory=list)
    elapsed_s: float = 0.0


@dataclass
class _Context:
    cells: CellStore
    store: Path
    device: str
    progress: bool
    log: Callable[[str], None]

    def location(self, cell: Cell, rel: str) -> Path:
        """Where ``rel`` of ``cell``'s output lies (a data root read in place lies where it is)."""
        if cell.kind == "data":
            part, _, below = rel.partition("/")
            if cell.spec["mode"] == "as-is":
                base = Path(cell.run["sources"][part])
            else:
                base = self.cells.folder(cell) / "data" / part
            return base / below if below else base
        return self.cells.folder(cell) / rel

    def result(self, cell: Cell) -> dict[str, Any]:
        rec = self.cells.published(cell)
        if rec is None:  # the plan orders inputs first, so this is a bug or a cache changed under us
            raise AlignCoreError(f"cell {cell.label} ({cell.short}) is needed but not published in {self.cells.root}.")
        return rec["result"]

    def checkpoint(self, train: Cell) -> Path:
        return self.cells.folder(train) / self.result(train)["checkpoint"]


def resolve_paths(out: Path, cache: str | Path | None, store: str | Path | None) -> tuple[Path, Path]:
    cells = Path(cache).expanduser() if cache else out / CELLS_DIR
    return cells, Path(store).expanduser() if store else out / STORE_FILE


def plan_status(plan: StudyPlan, cells_root: Path) -> dict[str, bool]:
    """Cell key → published already."""
    cs = CellStore(cells_root)
    return {c.key: cs.published(c) is not None for c in plan.cells}


def run_study(plan: StudyPlan, out: str | Path, *, cache: str | Path | None = None, store: str | Path | None = None,
              progress: bool = True, log: Callable[[str], None] | None = None,
              overrides: list[str] | tuple[str, ...] = (), variables: dict[str, str] | None = None) -> StudyRunResult:
    """Compute every cell of ``plan`` that is not published yet, in order, into the study folder ``out``."""
    out = Path(out)
    log = log or (lambda m: None)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AlignCoreError(f"cannot create the study folder {out}: {exc.strerror or exc}. Choose another --out.") from None
    cells_root, store_path = resolve_paths(out, cache, store)
    t_start = time.monotonic()
    with _lock(out):
        _check_folder(out, plan)
        (out / STUDY_FILE).write_text(plan.file.text, encoding="utf-8")
        write_atomic(out / PLAN_FILE, json.dumps(plan_record(plan, out, cells_root, store_path, overrides, variables),
                                                 indent=1, sort_keys=True, default=str) + "\n")
        ctx = _Context(CellStore(cells_root), store_path, plan.device, progress, log)
        res = StudyRunResult(out, plan)
        n = len(plan.cells)
        for i, cell in enumerate(plan.cells, start=1):
            if ctx.cells.published(cell) is not None:
                res.reused.append(cell)
                log(f"[{i}/{n}] reused    {cell.label}")
                continue
            with _cell_lock(ctx.cells, cell, log):  # another study sharing the cache may be computing it
                if ctx.cells.published(cell) is not None:
                    res.reused.append(cell)
                    log(f"[{i}/{n}] reused    {cell.label} (computed meanwhile by another study)")
                    continue
                log(f"[{i}/{n}] computing {cell.label}  ({cell.short})")
                t0 = time.monotonic()
                try:
                    result = EXECUTORS[cell.kind](ctx, cell)
                except AlignCoreError as exc:
                    raise AlignCoreError(f"cell '{cell.label}' failed: {exc} (its work folder: "
                                         f"{ctx.cells.folder(cell)}; the cells finished so far are kept, so running "
                                         "the study again resumes here)") from None
                ctx.cells.publish(cell, result, time.monotonic() - t0)
            res.computed.append(cell)
            log(f"[{i}/{n}] done      {cell.label} in {time.monotonic() - t0:.1f}s")
        res.elapsed_s = time.monotonic() - t_start
        return res


def plan_record(plan: StudyPlan, out: Path, cells_root: Path, store: Path, overrides=(), variables=None) -> dict:
    """What ``study report`` reads: the cells, what each result row is called, the tables."""
    st = plan.study

    def rel(p: Path) -> str:
        try:
            return str(p.resolve().relative_to(out.resolve()))
        except ValueError:
            return str(p.resolve())

    return {
        "format": PLAN_FORMAT, "name": st.name, "title": st.title, "description": st.description.strip(),
        "scale": plan.scale, "seeds": plan.seeds, "study_file": plan.file.display, "overrides": list(overrides),
        "vars": dict(variables or {}), "data_root": str(plan.data_root) if plan.data_root else None,
        "device": plan.device, "cells_dir": rel(cells_root), "store": rel(store), "written": time.time(),
        "cells": [{"key": c.key, "kind": c.kind, "label": c.label, "inputs": {n: i.key for n, i in c.inputs.items()}}
                  for c in plan.cells],
        "results": [{"source": r.source, "cell": r.cell.key, "attrs": r.attrs} for r in plan.results],
        "report": st.report.model_dump(mode="json"),
        "tags": {k: sorted(v) for k, v in plan.tags.items()},
    }


def _check_folder(out: Path, plan: StudyPlan) -> None:
    """One study and one scale per folder: its store's leaderboard rows and its tables must not mix."""
    p = out / PLAN_FILE
    if not p.exists():
        if any(e.name not in (LOCK_FILE, CELLS_DIR, STORE_FILE) for e in out.iterdir()):
            raise AlignCoreError(f"{out} is not empty and holds no study; choose another --out (a new folder, or the "
                                 "folder of an earlier run of this study).")
        return
    try:
        old = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return  # a plan written by an older version or damaged: this run rewrites it
    if old.get("name") != plan.study.name or old.get("scale") != plan.scale:
        raise AlignCoreError(f"{out} holds the study {old.get('name')!r} at scale {old.get('scale')!r}; run "
                             f"{plan.study.name!r} at scale {plan.scale!r} into another --out.")


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    import fcntl

    f = open(out / LOCK_FILE, "a+")
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise AlignCoreError(f"another `alignctl study run` is working in {out}; wait for it or use another --out.") from None
        yield
    finally:
        f.close()


@contextlib.contextmanager
def _cell_lock(cells: CellStore, cell: Cell, log: Callable[[str], None]) -> Iterator[None]:
    """An exclusive lock on one cell (``CACHE/.locks/KEY``), waited for: studies may share one cache."""
    import fcntl

    d = cells.root / ".locks"
    d.mkdir(parents=True, exist_ok=True)
    with open(d / cell.key, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log(f"waiting for another study that is computing {cell.label} ({cell.short})")
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        yield


def _fresh(folder: Path) -> Path:
    """An empty folder (what a killed attempt left there is removed)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def _rel(path: Path, base: Path) -> str:
    return str(Path(path).resolve().relative_to(base.resolve()))


# ---------------------------------------------------------------------- executors


def _run_data(ctx: _Context, cell: Cell) -> dict[str, Any]:
    from .data import make_offline_data, sample_parts

    mode = cell.spec["mode"]
    folder = ctx.cells.folder(cell)
    if mode == "offline-photos":
        return {"counts": make_offline_data(_fresh(folder / "data"), ctx.log)}
    if mode == "sample":
        sources = {n: Path(p) for n, p in cell.run["sources"].items()}
        return {"counts": sample_parts(sources, _fresh(folder / "data"), cell.spec["per_group"], cell.spec["seed"])}
    from ..data import load_dataset

    folder.mkdir(parents=True, exist_ok=True)
    return {"counts": {n: {"images": len(load_dataset(p).records)} for n, p in cell.run["sources"].items()}}


def _run_set(ctx: _Context, cell: Cell) -> dict[str, Any]:
    if cell.spec["mode"] == "mix":
        return _mix(ctx, cell)
    from ..registry import create_builder

    spec = cell.spec
    sources = [s["prefix"] + str(ctx.location(cell.inputs[s["input"]], s["rel"])) for s in spec["sources"]]
    builder = create_builder(spec["builder"], cell.run["options"])
    out = ctx.cells.folder(cell) / "set"
    builder.build(sources, out, progress=ctx.progress)  # resumes from its journal after a kill
    from ..data import load_dataset

    recs = load_dataset(out).records
    return {"rows": len(recs), "real": sum(r.label == 0 for r in recs), "fake": sum(r.label == 1 for r in recs),
            "summary": builder.summary()}


def _mix(ctx: _Context, cell: Cell) -> dict[str, Any]:
    """The union of the member sets: their files linked (or copied) under ``set/<member>/``, one manifest.

    Path-valued extra columns (``*_path``) are left out: they point into the member's own folder.
    """
    from ..data import load_dataset
    from ..supervision import write_manifest

    out = _fresh(ctx.cells.folder(cell) / "set")
    rows, dropped = [], set()
    for m in cell.spec["members"]:
        src = ctx.location(cell.inputs[m["input"]], m["rel"])
        ds = load_dataset(src)
        base = Path(ds.root).parent if Path(ds.root).is_file() else Path(ds.root)
        for r in ds.records:
            rel = Path(os.path.relpath(r.path, base))
            if rel.parts and rel.parts[0] == "..":
                rel = Path("_outside") / Path(r.path).name
            dest = out / m["name"] / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(r.path, dest)
            except OSError:
                shutil.copyfile(r.path, dest)
            extra = {k: v for k, v in r.extra.items() if not k.endswith("_path")}
            dropped |= {k for k in r.extra if k.endswith("_path")}
            rows.append({**extra, "path": (Path(m["name"]) / rel).as_posix(), "label": r.label, "generator": r.generator,
                         "subset": r.subset, "member": m["name"]})
    rows.sort(key=lambda r: r["path"])
    write_manifest(out / "manifest.csv", rows)
    return {"rows": len(rows), "real": sum(r["label"] == 0 for r in rows), "fake": sum(r["label"] == 1 for r in rows),
            "members": [m["name"] for m in cell.spec["members"]], "dropped_columns": sorted(dropped)}


def _run_train(ctx: _Context, cell: Cell) -> dict[str, Any]:
    from ..train import train_branch

    spec = cell.spec
    out = ctx.cells.folder(cell) / "checkpoint"
    data = ctx.location(cell.inputs["set"], spec["set_rel"])
    res = train_branch(spec["branch"], str(data), out, branch_options=cell.run["branch_options"],
                       train_options=spec["train_options"], progress=ctx.progress,
                       log=ctx.log if ctx.progress else None)  # resumes after a kill
    return {"checkpoint": _rel(res.checkpoint, ctx.cells.folder(cell)), "summary": res.summary}


def _member_options(ctx: _Context, cell: Cell, options: dict, checkpoint: str | None, train: Cell | None) -> dict:
    opts = dict(options)
    if train is not None:
        opts["checkpoint"] = str(ctx.checkpoint(train))
    elif checkpoint:
        opts["checkpoint"] = checkpoint
    return opts


def _run_score(ctx: _Context, cell: Cell) -> dict[str, Any]:
    from ..config import RunConfig
    from ..runner import run

    spec = cell.spec
    branch = spec["member"]["branch"]
    opts = _member_options(ctx, cell, cell.run["branch_options"], cell.run["checkpoint"], cell.inputs.get("model"))
    data = ctx.location(cell.inputs["data"], spec["dataset_rel"])
    cfg = RunConfig(branches=[branch], data=str(data), device=ctx.device, out=str(ctx.cells.folder(cell) / "run"),
                    store=str(ctx.store), branch_options={branch: opts}, suite=spec["suite"],
                    dataset_name=spec["dataset_name"], perturb=spec["perturb"])
    res = run(cfg, progress=ctx.progress)
    return {"run": "run", "run_id": res.run_id, "overall": res.metrics["overall"],
            "per_generator": res.metrics.get("per_generator", {}), "skipped": len(res.skipped),
            "branches": {k: vars(v) for k, v in res.branches.items()}}


def _run_fuse(ctx: _Context, cell: Cell) -> dict[str, Any]:
    from ..ablation import ablate
    from ..config import RunConfig
    from ..runner import run

    spec = cell.spec
    members = cell.run["members"]
    options = {m["branch"]: _member_options(ctx, cell, m["branch_options"], m["checkpoint"],
                                            cell.inputs.get(m["input"]) if m["input"] else None) for m in members}
    folder = ctx.cells.folder(cell)
    data = ctx.location(cell.inputs["data"], spec["dataset_rel"])
    cfg = RunConfig(branches=[m["branch"] for m in members], fusion=spec["run_fusion"], data=str(data), device=ctx.device,
                    out=str(folder / "run"), store=str(ctx.store), branch_options=options, suite=spec["suite"],
                    dataset_name=spec["dataset_name"], perturb=spec["perturb"])
    res = run(cfg, progress=ctx.progress)  # the members' scores come from the store
    ab = ablate([res.out_dir], spec["rules"], spec["target_fpr"], spec["cal_fraction"], spec["seed"], spec["options"],
                out_dir=folder / "ablation")
    return {"run": "run", "run_id": res.run_id, "rows": ab.rows, "fitted": ab.fitted,
            "branches": {k: vars(v) for k, v in res.branches.items()}}


def _run_audit(ctx: _Context, cell: Cell) -> dict[str, Any]:
    from ..registry import create_audit

    spec = cell.spec
    audit = create_audit(spec["audit"], spec["options"])
    folder = ctx.cells.folder(cell)
    outcome = audit.run(ctx.location(cell.inputs["set"], spec["set_rel"]), folder / "audit", log=ctx.log)
    (folder / "audit.json").write_text(json.dumps(outcome.details, indent=2, sort_keys=True, default=str) + "\n")
    return {"metrics": outcome.metrics, "details": "audit.json"}


EXECUTORS: dict[str, Callable[[_Context, Cell], dict[str, Any]]] = {
    "data": _run_data, "set": _run_set, "train": _run_train, "score": _run_score, "fuse": _run_fuse,
    "audit": _run_audit,
}

__all__ = ["run_study", "plan_status", "StudyRunResult", "PLAN_FILE", "MARKER"]
