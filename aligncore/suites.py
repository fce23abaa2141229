"""Benchmark suites: named collections of datasets.

Suites ship inside the package (``aligncore/resources/suites/*.yaml``, read through
``importlib.resources``, so an installed wheel has them); folders named in
``$ALIGNCORE_SUITES_DIR`` (several joined with the path separator) add suites and take
precedence over a shipped suite of the same name. A suite file says, for each dataset, where it lies below a root folder, its layout, its
subsets and how to obtain it. ``alignctl bench SUITE --root DIR`` scores every dataset
that is present and prints one skip line for each one that is not. The root is, in order:
``--root``, the environment variable the suite names in ``root_env``, ``$ALIGNCORE_BENCH_ROOT``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .component import format_validation_error
from .errors import AlignCoreError, ConfigError

BENCH_ROOT_ENV = "ALIGNCORE_BENCH_ROOT"
SUITES_DIR_ENV = "ALIGNCORE_SUITES_DIR"


class SuiteDataset(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., description="Dataset name (a leaderboard column).")
    path: str = Field(..., description="Folder or manifest below the suite root.")
    layout: str = Field("0_real/1_fake", description="Layout, for people: 0_real/1_fake, real/fake, GenImage ai/nature, manifest.")
    obtain: str = Field(..., description="How to get the data (where, licence, which split).")
    url: str | None = Field(None, description="Where to start.")
    reference: str | None = Field(None, description="Paper that introduced it.")
    subsets: list[str] = Field(default_factory=list, description="Subsets / generators it contains, if known.")
    notes: str | None = Field(None, description="Anything that matters when reading its numbers.")


class Suite(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    title: str = ""
    description: str = ""
    root_env: str | None = Field(None, description="Environment variable that holds this suite's root folder.")
    datasets: list[SuiteDataset]
    source: str | None = None  # file it was read from


def suites_dirs() -> list[Path]:
    """Folders searched for ``*.yaml`` suites, first match wins: ``$ALIGNCORE_SUITES_DIR``'s, then the shipped one."""
    from .resources import resource_dir

    extra = [Path(d).expanduser() for d in os.environ.get(SUITES_DIR_ENV, "").split(os.pathsep) if d.strip()]
    return [d for d in [*extra, resource_dir("suites")] if d.is_dir()]


def list_suites() -> list[Path]:
    """One file per suite name (the first found in :func:`suites_dirs`' order)."""
    seen: dict[str, Path] = {}
    for d in suites_dirs():
        for p in sorted(d.glob("*.yaml")):
            seen.setdefault(p.stem, p)
    return list(seen.values())


def load_suite(name_or_path: str | Path) -> Suite:
    p = Path(name_or_path).expanduser()
    if not p.is_file():
        matches = [s for s in list_suites() if s.stem == str(name_or_path)]
        if not matches:
            known = ", ".join(s.stem for s in list_suites()) or "none found"
            raise ConfigError(f"no benchmark suite {name_or_path!r}: give a YAML path or one of: {known}.")
        p = matches[0]
    from .parsing import read_structured

    data = read_structured(p, "suite file", fmt="yaml") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"suite file {p} must hold a mapping of fields, not {type(data).__name__}.")
    try:
        suite = Suite(**data)
    except (ValidationError, TypeError) as err:
        msg = format_validation_error(f"suite {p.name}", err) if isinstance(err, ValidationError) else f"suite file {p}: {err}"
        raise ConfigError(msg) from None
    suite.source = str(p)
    return suite


def resolve_root(suite: Suite, root: str | Path | None) -> tuple[Path | None, str]:
    """The root folder and where it came from (for the log)."""
    if root:
        return Path(root).expanduser(), "--root"
    for env in (suite.root_env, BENCH_ROOT_ENV):
        if env and os.environ.get(env):
            return Path(os.environ[env]).expanduser(), f"${env}"
    return None, "no root"


@dataclass
class Located:
    entry: SuiteDataset
    path: Path | None
    skip_reason: str | None = None


def locate(suite: Suite, root: Path | None) -> list[Located]:
    from .data import load_dataset
    from .errors import DataError

    out = []
    for ds in suite.datasets:
        if root is None:
            envs = " or ".join(f"${e}" for e in (suite.root_env, BENCH_ROOT_ENV) if e)
            out.append(Located(ds, None, f"no root folder (give --root or set {envs})"))
            continue
        p = root / ds.path
        if not p.exists():
            out.append(Located(ds, None, f"not found at {p}"))
            continue
        try:
            dataset = load_dataset(p)
        except (DataError, AlignCoreError) as exc:
            out.append(Located(ds, None, f"present at {p} but not readable: {exc}"))
            continue
        labels = {r.label for r in dataset.records}
        if not {0, 1} <= labels:
            out.append(Located(ds, None, f"present at {p} but lacks real and fake labels (layout {dataset.layout})"))
            continue
        out.append(Located(ds, p))
    return out


@dataclass
class BenchOutcome:
    name: str
    status: str  # "ran" or "skipped"
    detail: str
    run_id: str | None = None
    metrics: dict | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def run_suite(suite: Suite, root: Path | None, run_options: dict[str, Any], progress: bool = True,
              on_event: Callable[[BenchOutcome], None] | None = None) -> list[BenchOutcome]:
    """Score every present dataset of ``suite`` (one run each, recorded under the suite's name)."""
    from .config import make_run_config
    from .runner import run

    outcomes = []
    for loc in locate(suite, root):
        if loc.path is None:
            how = " ".join(loc.entry.obtain.split()) + (f" <{loc.entry.url}>" if loc.entry.url else "")
            o = BenchOutcome(loc.entry.name, "skipped", f"{loc.skip_reason}. To obtain: {how}")
        else:
            cfg = make_run_config(None, **{**run_options, "data": str(loc.path), "suite": suite.name,
                                          "dataset_name": loc.entry.name})
            res = run(cfg, progress=progress)
            o = BenchOutcome(loc.entry.name, "ran", str(res.out_dir), res.run_id, res.metrics)
        outcomes.append(o)
        if on_event:
            on_event(o)
    return outcomes
