"""Run folders: what a scoring run (or a re-fusion) leaves on disk, written and read by one type.

A run folder holds ``predictions.csv`` (one row per image that could be read, scores as round-trippable
floats, so any tool recomputes ``metrics.json`` from it exactly, plus a ``logit_<branch>`` column for
branches that compute a logit; an empty score is a branch that failed on the image, and the fused score
and verdict are empty unless every branch scored it), ``skipped.csv`` (files that could not be read),
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
from .parsing import read_structured
from .text import csv_cell, decode_path, encode_path, read_csv_cell

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
#: 2: run.json lists a digest of every file; 3: text cells escaped (:func:`aligncore.text.csv_cell`) and an exact
#: ``path_encoded`` column. Runs written before run.json carry no "format".
FORMAT = 3
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
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of files that could not be read
    logits: dict[str, np.ndarray] = field(default_factory=dict)  # branch → float, NaN = no logit (branches that have one)

    def __len__(self) -> int:
        return len(self.paths)

    @classmethod
    def from_records(cls, records: Sequence[Any], hashes: Sequence[str], scores: dict[str, dict[str, float | None]],
                     errors: dict[str, dict[str, str]], skipped: list[tuple[str, str]],
                     logits: dict[str, dict[str, float | None]] | None = None) -> "ScoreTable":
        """Rows of ``records`` (with their ``hashes``): ``scores`` {branch: {sha256: score}}, ``errors``
        {sha256: {branch: why}}, ``logits`` like scores (only branches that gave one); a missing value is NaN."""
        return cls(
            branches=list(scores), paths=[r.path for r in records], sha256=list(hashes),
            labels=np.array([-1 if r.label is None else r.label for r in records], dtype=int),
            generators=np.array([r.generator or "" for r in records], dtype=object),
            subsets=np.array([r.subset or "" for r in records], dtype=object),
            scores={b: np.array([np.nan if got.get(h) is None else got[h] for h in hashes], dtype=float)
                    for b, got in scores.items()},
            errors=["; ".join(f"{b}: {e}" for b, e in sorted(errors.get(h, {}).items()) if b) for h in hashes],
            skipped=skipped,
            logits={b: np.array([np.nan if got.get(h) is None else got[h] for h in hashes], dtype=float)
                    for b, got in (logits or {}).items() if any(got.get(h) is not None for h in hashes)},
        )

    def complete(self) -> np.ndarray:
        """True for the images every branch scored: the only ones a fused result is given for."""
        if not self.branches:
            return np.zeros(len(self), dtype=bool)
        return np.all([np.isfinite(self.scores[b]) for b in self.branches], axis=0)

    def coverage(self) -> dict[str, dict[str, int]]:
        """{branch: {"scored", "failed", "total"}} over the table's images (every readable image of the run)."""
        n = len(self)
        out = {}
        for b in self.branches:
            k = int(np.isfinite(self.scores[b]).sum())
            out[b] = {"scored": k, "failed": n - k, "total": n}
        return out

    def subset(self, mask: np.ndarray):
        """The rows where ``mask`` is True (same type, other fields kept)."""
        idx = np.flatnonzero(mask)
        cols: dict[str, Any] = {k: [getattr(self, k)[i] for i in idx] for k in ("paths", "sha256", "errors")}
        cols.update({k: getattr(self, k)[idx] for k in ("labels", "generators", "subsets")})
        cols["scores"] = {b: s[idx] for b, s in self.scores.items()}
        cols["logits"] = {b: s[idx] for b, s in self.logits.items()}
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
        cfg = self.info.get("config", {})
        if not isinstance(cfg, dict):
            raise AlignCoreError(f"{self.path / RUN_INFO}: its config is a {type(cfg).__name__}, not a mapping.")
        return cfg

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
            info = read_structured(info_path, "run description", fmt="json", error=AlignCoreError)
        except AlignCoreError as exc:
            raise AlignCoreError(f"{exc} Re-run the same `alignctl run` to rewrite it.") from None
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
        # JSON has no aliases: its size is its file's; per-generator and per-subset metrics may be many
        metrics = read_structured(self.path / METRICS, "run metrics", fmt="json", error=AlignCoreError,
                                  max_bytes=1 << 30, max_nodes=1 << 27, max_chars=1 << 30)
        if not isinstance(metrics, dict):
            raise AlignCoreError(f"{self.path / METRICS} holds a {type(metrics).__name__}, not the metrics aligncore writes.")
        return metrics

    @property
    def escaped(self) -> bool:
        """True when the CSV text cells are escaped (format 3 on): read them with :func:`read_csv_cell`."""
        return int(self.info.get("format") or 0) >= 3

    def _text(self, row: dict, column: str) -> str:
        cell = row.get(column) or ""
        return read_csv_cell(cell) if self.escaped else cell

    def _path(self, row: dict) -> str:
        return decode_path(row["path_encoded"]) if self.escaped and row.get("path_encoded") else self._text(row, "path")

    def skipped(self) -> list[tuple[str, str]]:
        if not (self.path / SKIPPED).is_file():
            return []
        return [(self._path(r), self._text(r, "reason")) for r in self._rows(SKIPPED, ("path", "reason"))]

    def _rows(self, name: str, required: Sequence[str]) -> list[dict]:
        """The rows of one of the run's CSV files, with the columns it must have checked."""
        path = self.path / name
        try:
            rows, columns = _read_csv(path)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise AlignCoreError(f"{path} cannot be read ({exc}); re-run the same `alignctl run`.") from None
        missing = [c for c in required if c not in columns]
        if missing:
            raise AlignCoreError(f"{path} has no column {', '.join(repr(c) for c in missing)}: it was not written by "
                                 "aligncore, or was edited.")
        return rows

    def scores(self) -> RunScores:
        """Full-precision per-branch scores, labels, hashes and the fused output, as written."""
        cfg = self.config
        branches = list(cfg.get("fingerprints") or cfg.get("branches") or [])
        if not all(isinstance(b, str) for b in branches):
            raise AlignCoreError(f"{self.path / RUN_INFO}: the run's branches {branches!r} are not names.")
        where = self.path / PREDICTIONS
        rows = self._rows(PREDICTIONS, ["path", "sha256", "label", "generator", "subset",
                                        *[f"score_{b}" for b in branches], "fused_score", "verdict"])
        dataset = cfg.get("dataset_name") or Path((cfg.get("dataset") or {}).get("root", self.path.name)).name
        try:
            return RunScores(
                branches=branches, paths=[self._path(r) for r in rows], sha256=[r["sha256"] for r in rows],
                labels=np.array([_label(r["label"]) for r in rows], dtype=int),
                generators=np.array([self._text(r, "generator") for r in rows], dtype=object),
                subsets=np.array([self._text(r, "subset") for r in rows], dtype=object),
                scores={b: np.array([_num(r[f"score_{b}"]) for r in rows], dtype=float) for b in branches},
                logits={b: np.array([_num(r[f"logit_{b}"]) for r in rows], dtype=float)
                        for b in branches if rows and f"logit_{b}" in rows[0]},
                errors=[self._text(r, "error") for r in rows], skipped=self.skipped(),
                run_id=self.run_id, run_dir=self.path, dataset=str(dataset), perturb=cfg.get("perturb"),
                fused=np.array([_num(r["fused_score"]) for r in rows], dtype=float),
                verdicts=np.array([r["verdict"] == "fake" for r in rows], dtype=bool),
            )
        except (ValueError, TypeError) as exc:
            raise AlignCoreError(f"{where} holds a value that is not a number or label ({exc}): it was not written "
                                 "by aligncore, or was edited.") from None

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

    @staticmethod
    def check_output(out: str | Path, config: dict, data: str | Path | None = None, overwrite: bool = False) -> None:
        """Refuse to publish a run with ``config`` (its resolved config, see :func:`run_identity`) at ``out``
        when ``out`` overlaps the ``data``, holds files that are not a run's, or holds a run of another
        configuration, unless ``overwrite``. A run folder of the same configuration is reused."""
        from .outputs import check_not_inputs, describe_names, differences, foreign_entries

        if overwrite:
            return
        out = Path(out)
        if data is not None:
            check_not_inputs(out, [data], "--out")
        if not out.is_dir():
            return
        again = "Choose another --out, or pass --overwrite to write the run there anyway"
        foreign = foreign_entries(out, OWNED)
        if foreign:
            raise AlignCoreError(f"--out {out} holds files that are not a run's ({describe_names(foreign)}). {again} "
                                 "(they are kept; the run's files are written beside them).")
        if not (out / RUN_INFO).exists():
            return  # nothing published yet (an interrupted run): its files are rewritten
        try:
            old = RunDir.open(out).config
        except AlignCoreError:
            raise AlignCoreError(f"--out {out} holds a run folder aligncore cannot read as one complete run. {again} "
                                 "(it is replaced).") from None
        diff = differences(run_identity(old), run_identity(config))
        if diff:
            raise AlignCoreError(f"--out {out} holds run {old.get('run_id', '?')} of another configuration (it differs "
                                 f"in: {', '.join(diff)}). {again} (it is replaced), or re-run with the same settings "
                                 "to reuse it.")

    @classmethod
    def write(cls, out: str | Path, *, run_id: str, kind: str, table: ScoreTable, fused, metrics: dict, config: dict,
              summary: dict | None = None) -> "RunDir":
        """Publish one run (``fused``: the fusion's output over ``table``) at ``out`` atomically."""
        files = {
            PREDICTIONS: _predictions_csv(table, fused),
            SKIPPED: _skipped_csv(table.skipped),
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


def run_identity(config: dict) -> dict:
    """What decides a run's results, from its resolved config: the data, each branch's fingerprint (settings,
    weights, perturbation) and the fusion. Two runs with equal identities give the same predictions."""
    dataset = config.get("dataset") if isinstance(config.get("dataset"), dict) else {}
    return {"data": dataset.get("root") or config.get("data"), "fingerprints": config.get("fingerprints"),
            "fusion": config.get("fusion"), "fusion_options": config.get("fusion_options") or {},
            "fusion_state": config.get("fusion_state")}


def make_run_id(config) -> str:
    """A fresh run id: the time, then a digest of the config (a pydantic model) and the clock."""
    blob = json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()
    return time.strftime("%Y%m%d-%H%M%S") + "-" + hashlib.sha256(blob + str(time.time_ns()).encode()).hexdigest()[:6]


# ---------------------------------------------------------------------- file contents


def _num(v: str | None) -> float:
    if v is None:
        raise ValueError("a cell is missing")
    return math.nan if v == "" else float(v)


def _label(v: str | None) -> int:
    if v is None or v == "":
        return -1
    if v not in ("0", "1"):
        raise ValueError(f"label {v!r}")
    return int(v)


def _float_cell(v: float) -> str:
    return "" if math.isnan(v) else repr(float(v))  # repr: the shortest text that reads back as the same float


def _predictions_csv(table: ScoreTable, fused) -> bytes:
    """Text cells through :func:`csv_cell` (escaped, never a formula); ``path_encoded``: the path's exact bytes."""
    with_logit = [b for b in table.branches if b in table.logits]
    cols = ["path", "sha256", "label", "generator", "subset", *[f"score_{b}" for b in table.branches],
            *[f"logit_{b}" for b in with_logit], "fused_score", "verdict", "error", "path_encoded"]
    rows = []
    for k in range(len(table)):
        row = {"path": csv_cell(table.paths[k]), "sha256": table.sha256[k],
               "label": "" if table.labels[k] < 0 else int(table.labels[k]),
               "generator": csv_cell(table.generators[k] or ""), "subset": csv_cell(table.subsets[k] or "")}
        row.update({f"score_{b}": _float_cell(table.scores[b][k]) for b in table.branches})
        row.update({f"logit_{b}": _float_cell(table.logits[b][k]) for b in with_logit})
        verdict = "" if math.isnan(fused.score[k]) else ("fake" if fused.verdict[k] else "real")
        row.update(fused_score=_float_cell(fused.score[k]), verdict=verdict,
                   error=csv_cell(table.errors[k] or ""), path_encoded=encode_path(table.paths[k]))
        rows.append(row)
    return _csv_bytes(rows, cols)


def _skipped_csv(skipped: Sequence[tuple[str, str]]) -> bytes:
    rows = [{"path": csv_cell(p), "reason": csv_cell(why), "path_encoded": encode_path(p)} for p, why in skipped]
    return _csv_bytes(rows, ["path", "reason", "path_encoded"])


def _csv_bytes(rows: list[dict], columns: list[str]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode("utf-8")


def _read_csv(path: Path) -> tuple[list[dict], list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return rows, list(reader.fieldnames or [])


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


@dataclass(frozen=True)
class FolderLayout:
    """What a published folder may hold, for :func:`publish_folder`.

    ``owned(name)``: an entry that belongs to such a folder (a folder holding anything else is never swapped);
    ``replaced(name)``: an entry of the previous folder that leaves with it (the rest is carried over);
    ``marker``: written last and removed first when files must be replaced in place, so readers refuse the
    folder meanwhile; ``derived``: entries computed from the previous contents, removed in place.
    """

    owned: Any
    replaced: Any
    marker: str | None = None
    derived: tuple[str, ...] = ()


RUN_LAYOUT = FolderLayout(owned=lambda n: n in OWNED, replaced=lambda n: n in ARTEFACTS or n in DERIVED,
                          marker=RUN_INFO, derived=DERIVED)


def publish_folder(out: Path, files: dict[str, bytes], layout: FolderLayout = RUN_LAYOUT) -> None:
    """Publish ``files`` as the folder ``out`` in one step: written into a hidden sibling, then swapped with
    ``out`` (``renameat2(RENAME_EXCHANGE)``), so a SIGKILL at any moment leaves the old folder or the new one.
    Where the swap is impossible (a folder holding other entries, no ``renameat2``, a read-only parent) the
    files are replaced one by one, the layout's marker removed first and written last."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _sweep(out, layout)
    try:
        stage = _new_stage(out)
    except OSError:
        stage = None  # a read-only parent: replace the files inside ``out``
    if stage is not None:
        for name, data in files.items():  # the marker last: a stage without it is an unfinished write
            (stage / name).write_bytes(data)
        if not out.exists():
            try:
                os.rename(stage, out)
                return
            except OSError:
                pass  # created meanwhile (another writer): swap with it instead
        if all(layout.owned(e.name) for e in out.iterdir()) and _exchange(stage, out):
            _carry_over(stage, out, layout)
            return
        shutil.rmtree(stage, ignore_errors=True)
    _replace_in_place(out, files, layout)


def _publish(out: Path, files: dict[str, bytes]) -> None:
    publish_folder(out, files, RUN_LAYOUT)


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


def _carry_over(old: Path, out: Path, layout: FolderLayout = RUN_LAYOUT) -> None:
    """Move what leaves not with the old folder (a run's ``shards/``) into ``out``; drop the rest."""
    keep = False
    for entry in sorted(old.iterdir()):
        if layout.replaced(entry.name):
            continue
        if os.path.lexists(out / entry.name):
            keep = True  # both hold it: never delete what cannot be put back
            continue
        os.rename(entry, out / entry.name)
    if not keep:
        shutil.rmtree(old, ignore_errors=True)


def _sweep(out: Path, layout: FolderLayout = RUN_LAYOUT) -> None:
    """Finish what a killed publish left beside ``out``: carry its entries over, then remove it."""
    for left in out.parent.glob(f".{glob.escape(out.name)}{_STAGE}*"):
        pid = left.name.rsplit(_STAGE, 1)[1].split("-", 1)[0]
        if not left.is_dir() or (pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid))):
            continue
        if out.is_dir():
            _carry_over(left, out, layout)
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


def _replace_in_place(out: Path, files: dict[str, bytes], layout: FolderLayout = RUN_LAYOUT) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if layout.marker:
        (out / layout.marker).unlink(missing_ok=True)  # from here until the end the folder reads as incomplete
    for name, data in files.items():
        if name != layout.marker:
            _replace_file(out / name, data)
    for name in layout.derived:
        p = out / name
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    if layout.marker:
        _replace_file(out / layout.marker, files[layout.marker])


def _replace_file(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
