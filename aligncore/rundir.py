"""Run folders: what a scoring run (or a re-fusion) leaves on disk, written and read by one type.

A run folder holds ``predictions.csv`` (one row per scored image, scores as round-trippable
floats, so any tool recomputes ``metrics.json`` from it exactly), ``skipped.csv``,
``metrics.json``, ``config.yaml`` and ``run.json``; ``run.json`` lists the sha256 of every other
file. :meth:`RunDir.write` publishes a run atomically: every file is written into a hidden
sibling folder, which is then swapped with the run folder in one ``renameat2(RENAME_EXCHANGE)``,
so a SIGKILL at any moment leaves either the old complete run or the new one. Outputs computed
from the old run (``ablation/``, ``fusions/``, ``report.html``) leave with it; a distributed run's
``shards/`` moves into the new folder. A folder that holds anything else (files of the user, or
the data itself) is never moved: there, as where the swap is not possible (no ``renameat2``, a
read-only parent), the run's files are replaced one by one, ``run.json`` removed first and written
last, so an interrupted publish leaves a folder that :meth:`RunDir.open` refuses.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import hashlib
import io
import json
import math
import os
import secrets
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import AlignCoreError

PREDICTIONS = "predictions.csv"
SKIPPED = "skipped.csv"
METRICS = "metrics.json"
CONFIG = "config.yaml"
RUN_INFO = "run.json"
ARTEFACTS = (PREDICTIONS, SKIPPED, METRICS, CONFIG, RUN_INFO)
PROFILE = "profile.json"  # `alignctl run --profile`: where the run spent its time (a measurement, not a result)
#: computed from a run's files by later commands, or about the run: replaced together with the run they describe
DERIVED = ("ablation", "fusions", "report.html", PROFILE)
SHARDS = "shards"  # a distributed run's per-rank stores (merged into the main store, then removed)
#: what a folder may hold for it to be swapped as a whole
OWNED = frozenset({*ARTEFACTS, *DERIVED, SHARDS, *(f"{a}.tmp" for a in (*ARTEFACTS, PROFILE))})
FORMAT = 2  # run.json with a digest of every file; runs written before carry no "format"
_STAGE = ".rundir-"


@dataclass
class ScoreTable:
    """Per-image branch scores of one run: what the runner gathers, and what a run folder gives back."""

    branches: list[str]
    paths: list[str]
    sha256: list[str]
    labels: np.ndarray  # int, -1 = unlabelled
    generators: np.ndarray  # object: str, "" when none
    subsets: np.ndarray  # object: str, "" when none
    scores: dict[str, np.ndarray]  # branch → float, NaN = this branch did not score the image
    errors: list[str]  # per image, "" when none
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of images no branch scored

    def __len__(self) -> int:
        return len(self.paths)

    @classmethod
    def from_records(cls, records: Sequence[Any], hashes: Sequence[str], scores: dict[str, dict[str, float | None]],
                     errors: dict[str, dict[str, str]], skipped: list[tuple[str, str]]) -> "ScoreTable":
        """Rows of ``records`` (with their ``hashes``): ``scores`` {branch: {sha256: score}}, ``errors``
        {sha256: {branch: why}}; a score missing for an image is NaN."""
        return cls(
            branches=list(scores), paths=[r.path for r in records], sha256=list(hashes),
            labels=np.array([-1 if r.label is None else r.label for r in records], dtype=int),
            generators=np.array([r.generator or "" for r in records], dtype=object),
            subsets=np.array([r.subset or "" for r in records], dtype=object),
            scores={b: np.array([np.nan if got.get(h) is None else got[h] for h in hashes], dtype=float)
                    for b, got in scores.items()},
            errors=["; ".join(f"{b}: {e}" for b, e in sorted(errors.get(h, {}).items())) for h in hashes],
            skipped=skipped,
        )

    def subset(self, mask: np.ndarray):
        """The rows where ``mask`` is True (same type, other fields kept)."""
        idx = np.flatnonzero(mask)
        cols: dict[str, Any] = {k: [getattr(self, k)[i] for i in idx] for k in ("paths", "sha256", "errors")}
        cols.update({k: getattr(self, k)[idx] for k in ("labels", "generators", "subsets")})
        cols["scores"] = {b: s[idx] for b, s in self.scores.items()}
        for k in ("fused", "verdicts"):
            if getattr(self, k, None) is not None:
                cols[k] = getattr(self, k)[idx]
        return dataclasses.replace(self, **cols)


@dataclass
class RunScores(ScoreTable):
    """A finished run's table, read without loading any model, with the run's identity and fused output."""

    run_id: str = ""
    run_dir: Path | None = None
    dataset: str = ""
    perturb: str | None = None
    fused: np.ndarray | None = None  # float, NaN where no branch scored
    verdicts: np.ndarray | None = None  # bool, True = fake


class RunDir:
    """A complete run folder. Make one with :meth:`write`, read one with :meth:`open`."""

    def __init__(self, path: Path, info: dict):
        self.path, self.info = path, info

    @property
    def run_id(self) -> str:
        return self.info.get("run_id", self.path.name)

    @property
    def config(self) -> dict:
        return self.info.get("config", {})

    # ------------------------------------------------------------------ reading
    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        """The run in ``path``; an AlignCoreError for a folder that is not one complete run."""
        path = Path(path)
        again = "re-run the same `alignctl run` (scores already computed are reused from the store)"
        info_path = path / RUN_INFO
        if not info_path.is_file():
            raise AlignCoreError(f"{path} is not a finished run folder (no {RUN_INFO}): make one with `alignctl run`, "
                                 f"or, if a run into it was interrupted, {again}.")
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AlignCoreError(f"{info_path} cannot be read ({exc}); {again}.") from None
        files = info.get("files") if isinstance(info, dict) else None
        if not isinstance(info, dict) or (info.get("format") is not None and not isinstance(files, dict)):
            raise AlignCoreError(f"{info_path} is not a run description written by aligncore; {again}.")
        if files is None and not (path / PREDICTIONS).is_file():  # a run written before run.json listed its files
            raise AlignCoreError(f"{path} has no {PREDICTIONS}: the run is incomplete; {again}.")
        for name, digest in (files or {}).items():
            f = path / name
            if not f.is_file() or _sha256(f.read_bytes()) != digest:
                raise AlignCoreError(f"{path}: {name} is {'missing' if not f.is_file() else 'not the file this run wrote'}"
                                     f" (the folder mixes files of different runs, or was edited); {again}.")
        return cls(path, info)

    def metrics(self) -> dict:
        return json.loads((self.path / METRICS).read_text(encoding="utf-8"))

    def skipped(self) -> list[tuple[str, str]]:
        if not (self.path / SKIPPED).is_file():
            return []
        return [(r["path"], r["reason"]) for r in _read_csv(self.path / SKIPPED)]

    def scores(self) -> RunScores:
        """Full-precision per-branch scores, labels, hashes and the fused output, as written."""
        cfg = self.config
        branches = list(cfg.get("fingerprints") or cfg.get("branches") or [])
        rows = _read_csv(self.path / PREDICTIONS)
        missing = [b for b in branches if rows and f"score_{b}" not in rows[0]]
        if missing:
            raise AlignCoreError(f"{self.path / PREDICTIONS} has no score column for branch(es) {missing}.")
        dataset = cfg.get("dataset_name") or Path((cfg.get("dataset") or {}).get("root", self.path.name)).name
        return RunScores(
            branches=branches, paths=[r["path"] for r in rows], sha256=[r["sha256"] for r in rows],
            labels=np.array([int(r["label"]) if r["label"] != "" else -1 for r in rows], dtype=int),
            generators=np.array([r["generator"] for r in rows], dtype=object),
            subsets=np.array([r["subset"] for r in rows], dtype=object),
            scores={b: np.array([_num(r[f"score_{b}"]) for r in rows], dtype=float) for b in branches},
            errors=[r.get("error") or "" for r in rows], skipped=self.skipped(),
            run_id=self.run_id, run_dir=self.path, dataset=dataset, perturb=cfg.get("perturb"),
            fused=np.array([_num(r["fused_score"]) for r in rows], dtype=float),
            verdicts=np.array([r["verdict"] == "fake" for r in rows], dtype=bool),
        )

    # ------------------------------------------------------------------ writing
    @staticmethod
    def check_writable(out: str | Path) -> None:
        """Fail now, before any scoring, when a run cannot be published at ``out``."""
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise AlignCoreError(f"the run directory {out} exists and is not a folder. Choose another with --out.")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            os.rmdir(_new_stage(out))
            return
        except OSError:
            pass  # no sibling folder possible: the files are replaced inside ``out`` instead
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / f"{_STAGE}probe"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise AlignCoreError(f"cannot write to the run directory {out}: {exc.strerror or exc}. "
                                 "Choose another with --out.") from None

    @classmethod
    def write(cls, out: str | Path, *, run_id: str, kind: str, table: ScoreTable, fused, metrics: dict, config: dict,
              summary: dict | None = None) -> "RunDir":
        """Publish one run (``fused``: the fusion's output over ``table``) at ``out`` atomically."""
        files = {
            PREDICTIONS: _predictions_csv(table, fused),
            SKIPPED: _csv_bytes([{"path": p, "reason": why} for p, why in table.skipped], ["path", "reason"]),
            METRICS: _json_bytes(metrics),
            CONFIG: _yaml_bytes(config),
        }
        info = {"format": FORMAT, "run_id": run_id, "kind": kind, "config": config, "skipped": len(table.skipped),
                **(summary or {}), "files": {name: _sha256(data) for name, data in files.items()}}
        files[RUN_INFO] = _json_bytes(info)
        out = Path(out)
        try:
            _publish(out.resolve() if out.is_symlink() else out, files)
        except OSError as exc:
            raise AlignCoreError(f"cannot write the run folder {out}: {exc.strerror or exc}. Free disk space or choose "
                                 "another --out; the scores are already in the store, so a re-run only rewrites the "
                                 "reports.") from None
        return cls(out, json.loads(files[RUN_INFO]))


    @staticmethod
    def write_profile(out: str | Path, profile: dict) -> Path:
        """Write ``profile.json`` into a published run folder (atomically; it is not among run.json's files:
        it measures the run, including its publication, and leaves with the run it describes)."""
        path = Path(out) / PROFILE
        _replace_file(path, _json_bytes(profile))
        return path


def make_run_id(config) -> str:
    """A fresh run id: the time, then a digest of the config (a pydantic model) and the clock."""
    blob = json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()
    return time.strftime("%Y%m%d-%H%M%S") + "-" + hashlib.sha256(blob + str(time.time_ns()).encode()).hexdigest()[:6]


# ---------------------------------------------------------------------- file contents


def _num(v: str) -> float:
    return math.nan if v == "" else float(v)


def _float_cell(v: float) -> str:
    return "" if math.isnan(v) else repr(float(v))  # repr: the shortest text that reads back as the same float


def _predictions_csv(table: ScoreTable, fused) -> bytes:
    cols = ["path", "sha256", "label", "generator", "subset", *[f"score_{b}" for b in table.branches],
            "fused_score", "verdict", "error"]
    rows = []
    for k in range(len(table)):
        row = {"path": table.paths[k], "sha256": table.sha256[k], "label": "" if table.labels[k] < 0 else int(table.labels[k]),
               "generator": table.generators[k] or "", "subset": table.subsets[k] or ""}
        row.update({f"score_{b}": _float_cell(table.scores[b][k]) for b in table.branches})
        row.update(fused_score=_float_cell(fused.score[k]), verdict="fake" if fused.verdict[k] else "real",
                   error=table.errors[k] or "")
        rows.append(row)
    return _csv_bytes(rows, cols)


def _csv_bytes(rows: list[dict], columns: list[str]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode("utf-8")


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def json_default(o):
    """numpy scalars and arrays as plain JSON values; anything else as its text."""
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n").encode("utf-8")


def _yaml_bytes(obj: Any) -> bytes:
    import yaml

    return yaml.safe_dump(json.loads(json.dumps(obj, default=json_default)), sort_keys=True).encode("utf-8")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------- atomic publication


def _publish(out: Path, files: dict[str, bytes]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    _sweep(out)
    try:
        stage = _new_stage(out)
    except OSError:
        stage = None  # a read-only parent: replace the files inside ``out``
    if stage is not None:
        for name, data in files.items():  # run.json last: a stage without it is an unfinished write
            (stage / name).write_bytes(data)
        if not out.exists():
            try:
                os.rename(stage, out)
                return
            except OSError:
                pass  # created meanwhile (another writer): swap with it instead
        if all(e.name in OWNED for e in out.iterdir()) and _exchange(stage, out):
            _carry_over(stage, out)
            return
        shutil.rmtree(stage, ignore_errors=True)
    _replace_in_place(out, files)


def _new_stage(out: Path) -> Path:
    """An empty hidden sibling of ``out`` named after this process (made with the umask's permissions)."""
    stage = out.parent / f".{out.name}{_STAGE}{os.getpid()}-{secrets.token_hex(4)}"
    stage.mkdir()
    return stage


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where that is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    # on failure (EINVAL, ENOSYS, EXDEV, EBUSY...: this file system or place cannot swap) the caller replaces in place
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _carry_over(old: Path, out: Path) -> None:
    """Move what is neither a run file nor computed from the old run (``shards/``) into ``out``; drop the rest."""
    keep = False
    for entry in sorted(old.iterdir()):
        if entry.name in ARTEFACTS or entry.name in DERIVED:
            continue
        if os.path.lexists(out / entry.name):
            keep = True  # both hold it: never delete what cannot be put back
            continue
        os.rename(entry, out / entry.name)
    if not keep:
        shutil.rmtree(old, ignore_errors=True)


def _sweep(out: Path) -> None:
    """Finish what a killed publish left beside ``out``: carry its entries over, then remove it."""
    for left in out.parent.glob(f".{glob.escape(out.name)}{_STAGE}*"):
        pid = left.name.rsplit(_STAGE, 1)[1].split("-", 1)[0]
        if not left.is_dir() or (pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid))):
            continue
        if out.is_dir():
            _carry_over(left, out)
        else:
            shutil.rmtree(left, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _replace_in_place(out: Path, files: dict[str, bytes]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_INFO).unlink(missing_ok=True)  # from here until the end the folder reads as incomplete
    for name, data in files.items():
        if name != RUN_INFO:
            _replace_file(out / name, data)
    for name in DERIVED:
        p = out / name
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    _replace_file(out / RUN_INFO, files[RUN_INFO])


def _replace_file(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
