"""Content digests: one place that hashes files, folders and seeds.

Store keys, fingerprints, checkpoint digests and builder seeds all come from here, so
"the same bytes" means one thing everywhere.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

CHUNK = 1 << 20


def sha256_file(path: str | Path, max_bytes: int | None = None) -> str:
    """Hex sha256 of a regular file's bytes, read in 1 MiB chunks. A FIFO, a device or a file above
    ``max_bytes`` raises :class:`aligncore.files.FileRefused` before a byte is read."""
    from .files import FileRefused, open_regular

    h = hashlib.sha256()
    read = 0
    with open_regular(path, max_bytes) as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            read += len(chunk)
            if max_bytes is not None and read > max_bytes:  # grew while being read
                raise FileRefused(path, f"refused: file holds more than {max_bytes} bytes")
            h.update(chunk)
    return h.hexdigest()


def digest_files(folder: str | Path, names: Iterable[str]) -> str:
    """Hex sha256 over (name, bytes) of the named files of ``folder`` that exist, in sorted name order."""
    root = Path(folder)
    h = hashlib.sha256()
    for name in sorted(set(names)):
        f = root / name
        if f.is_file():
            h.update(name.encode("utf-8", "surrogateescape"))
            _update_from_file(h, f)
    return h.hexdigest()


def hash_directory(path: str | Path, exclude_top: Iterable[str] = ()) -> str:
    """Hex sha256 over every file below ``path`` (relative names and bytes); a file hashes alone.

    ``exclude_top`` names first-level entries to leave out (e.g. resumable trainer state).
    """
    root = Path(path)
    h = hashlib.sha256()
    if root.is_file():
        files, root = [root], root.parent
    else:
        skip = set(exclude_top)
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] not in skip)
    for f in files:
        h.update(str(f.relative_to(root)).encode("utf-8", "surrogateescape"))  # any file name, even not UTF-8
        _update_from_file(h, f)
    return h.hexdigest()


def stable_int(*parts: object, nbytes: int = 8) -> int:
    """A deterministic integer from ``parts`` (per-item seeds that do not depend on processing order)."""
    blob = ":".join(str(p) for p in parts).encode("utf-8", "surrogateescape")
    return int.from_bytes(hashlib.sha256(blob).digest()[:nbytes], "little")


def _update_from_file(h, f: Path) -> None:
    with open(f, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
