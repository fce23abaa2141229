"""Built-in weights: trained files that ship inside a package, so a branch detects without a checkpoint.

A branch declares them with the class attribute ``builtin_weights = "PACKAGE:FOLDER"`` (a folder of
package data, read through :mod:`importlib.resources`); the core never names a branch. The folder holds
the branch's ordinary checkpoint files plus ``SHA256SUMS`` (``<sha256>  <file>`` per line, written by the
build that produced them); every listed file is checked before use, so a missing or altered file is an
error naming it, never silently random weights. A branch uses its built-in weights when neither
``checkpoint`` nor ``preset`` is set (``preset=tiny`` still means random weights).

The default ensemble (``alignctl detect``, ``aligncore.Detector()``) is data too: ``DETECTOR_FILE`` in
:data:`DEFAULT_ENSEMBLE` names its branches (by registered name), the fusion, its fitted state and threshold.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from contextvars import ContextVar
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import AlignCoreError

SUMS_FILE = "SHA256SUMS"
#: the package resource folder of the default ensemble and the file describing it
DEFAULT_ENSEMBLE = "aligncore.resources:builtin"
DETECTOR_FILE = "detector.json"

_verified: dict[tuple[str, int], str] = {}
_not_used: ContextVar[bool] = ContextVar("aligncore_builtin_not_used", default=False)


@contextmanager
def not_used():
    """Inside this block no branch adopts built-in weights: training starts from the configured architecture
    (an option that differs from the built-in one is no conflict there), and needs no built-in files."""
    token = _not_used.set(True)
    try:
        yield
    finally:
        _not_used.reset(token)


def in_use() -> bool:
    """False inside :func:`not_used`."""
    return not _not_used.get()


class BuiltinWeightsError(AlignCoreError):
    """Built-in weights are missing or do not match their recorded digests."""


def resource_folder(spec: str) -> Path:
    """``"PACKAGE:FOLDER"`` → the folder on disk (an installed package is a plain folder)."""
    package, sep, sub = spec.partition(":")
    if not sep or not package or not sub:
        raise BuiltinWeightsError(f"built-in weights {spec!r}: expected 'PACKAGE:FOLDER'.")
    try:
        root = resources.files(package)
    except ModuleNotFoundError:
        raise BuiltinWeightsError(f"built-in weights {spec!r}: package {package!r} is not installed.") from None
    folder = Path(str(root.joinpath(*sub.split("/"))))
    if not folder.is_dir():
        raise BuiltinWeightsError(f"built-in weights {spec!r} are missing ({folder} is not a folder): reinstall the "
                                  "package, or rebuild them (see the model card).")
    return folder


def read_sums(folder: Path) -> dict[str, str]:
    f = folder / SUMS_FILE
    if not f.is_file():
        raise BuiltinWeightsError(f"built-in weights in {folder} have no {SUMS_FILE}: their digests cannot be checked.")
    sums = {}
    for line in f.read_text(encoding="utf-8").splitlines():
        if line.strip():
            digest, _, name = line.partition("  ")
            if len(digest) != 64 or not name or "/" in name or name.startswith("."):
                raise BuiltinWeightsError(f"{f}: malformed line {line!r}.")
            sums[name] = digest
    if not sums:
        raise BuiltinWeightsError(f"{f} lists no files.")
    return sums


def verify(folder: Path) -> str:
    """Check every file ``SHA256SUMS`` lists; return the digest of the set (sha256 of ``SHA256SUMS``)."""
    from .hashing import sha256_file

    sums_path = folder / SUMS_FILE
    key = (str(folder), sums_path.stat().st_mtime_ns if sums_path.exists() else 0)
    if key in _verified:
        return _verified[key]
    for name, digest in read_sums(folder).items():
        p = folder / name
        if not p.is_file():
            raise BuiltinWeightsError(f"built-in weights: {p} is missing (listed in {SUMS_FILE}); reinstall the package.")
        got = sha256_file(p)
        if got != digest:
            raise BuiltinWeightsError(f"built-in weights: {p} has sha256 {got[:16]}…, {SUMS_FILE} records "
                                      f"{digest[:16]}…; the file was altered or damaged: reinstall the package.")
    set_digest = hashlib.sha256(sums_path.read_bytes()).hexdigest()
    _verified[key] = set_digest
    return set_digest


def builtin_folder(spec: str) -> Path:
    """The checked folder of ``spec`` (see :func:`resource_folder`, :func:`verify`)."""
    folder = resource_folder(spec)
    verify(folder)
    return folder


def write_sums(folder: Path, files: list[str]) -> str:
    """Write ``SHA256SUMS`` for ``files`` of ``folder`` (sorted, so the bytes depend only on the files)."""
    from .hashing import sha256_file

    text = "".join(f"{sha256_file(folder / n)}  {n}\n" for n in sorted(files))
    (folder / SUMS_FILE).write_text(text, encoding="utf-8")
    return hashlib.sha256(text.encode()).hexdigest()


def default_ensemble(spec: str = DEFAULT_ENSEMBLE) -> dict[str, Any]:
    """The default detector's description: {"branches": {name: options}, "fusion": {"name", "options", "state"}, ...}."""
    folder = builtin_folder(spec)
    f = folder / DETECTOR_FILE
    try:
        desc = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BuiltinWeightsError(f"the built-in detector description {f} cannot be read ({exc}).") from None
    if not isinstance(desc.get("branches"), dict) or not desc["branches"] or not isinstance(desc.get("fusion"), dict):
        raise BuiltinWeightsError(f"{f} is not a detector description (expected 'branches' and 'fusion').")
    return desc
