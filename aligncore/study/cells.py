"""Cells: the units of a study (data, set, train, score, fuse, audit), content-addressed like the score store.

A cell's key is a sha256 over its kind, its own resolved options and its inputs' keys (and the
aligncore version), never over names, paths of the study folder or execution-only settings such as
the device. A cell works in ``CACHE/<key>/`` and is *published* when ``CACHE/<key>/cell.json`` exists:
that file is written last, to a temporary name, flushed and renamed, so a kill at any moment leaves
either a published cell or an unpublished folder. An unpublished folder is resumed where the library
step resumes (a builder's journal, a trainer's saved state) and cleared otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CELL_FORMAT = 1
MARKER = "cell.json"
KINDS = ("data", "set", "train", "score", "fuse", "audit")
#: fields that say where or how fast something runs, never what it computes: left out of every key
EXECUTION_ONLY = frozenset({"device", "threads"})


@dataclass(eq=False)
class Cell:
    kind: str
    label: str
    spec: dict[str, Any]  # the cell's own resolved options (part of the key)
    inputs: dict[str, "Cell"] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)  # execution-only settings (not part of the key)
    key: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown cell kind {self.kind!r}")
        self.key = cell_key(self.kind, self.spec, {n: c.key for n, c in self.inputs.items()})

    @property
    def short(self) -> str:
        return self.key[:12]


def cell_key(kind: str, spec: dict[str, Any], inputs: dict[str, str]) -> str:
    from .. import __version__

    payload = {"format": CELL_FORMAT, "aligncore": __version__, "kind": kind, "spec": spec,
               "inputs": dict(sorted(inputs.items()))}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def without_execution_only(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k not in EXECUTION_ONLY}


class CellStore:
    """The cache folder: ``<key>/`` per cell, ``<key>/cell.json`` once published."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def folder(self, cell: Cell | str) -> Path:
        return self.root / (cell if isinstance(cell, str) else cell.key)

    def published(self, cell: Cell | str) -> dict[str, Any] | None:
        """The published record of ``cell`` (None when it is not published, or the record is not this cell's)."""
        key = cell if isinstance(cell, str) else cell.key
        p = self.folder(key) / MARKER
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        return rec if isinstance(rec, dict) and rec.get("key") == key else None

    def publish(self, cell: Cell, result: dict[str, Any], elapsed_s: float) -> dict[str, Any]:
        """Write ``cell.json`` atomically (temporary file, fsync, rename, fsync of the folder)."""
        folder = self.folder(cell)
        folder.mkdir(parents=True, exist_ok=True)
        rec = {"format": CELL_FORMAT, "key": cell.key, "kind": cell.kind, "label": cell.label, "spec": cell.spec,
               "inputs": {n: c.key for n, c in cell.inputs.items()}, "published": time.time(),
               "elapsed_s": round(elapsed_s, 3), "result": result}
        write_atomic(folder / MARKER, json.dumps(rec, indent=2, sort_keys=True, default=str) + "\n")
        return rec


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
