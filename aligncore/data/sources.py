"""Where an image's bytes come from: its own file, or a row of a table (parquet or Arrow).

A :class:`~aligncore.data.datasets.Record` whose ``source`` is None is the file at its
``path``; every other record carries an :class:`ImageSource` that reads its encoded bytes.
The loader, content hashing and the run folder only ever ask a record for its bytes
(:func:`record_bytes`, :func:`record_sha256`, :func:`load_record_image`), so a table row
gets what a file gets: the same decoding guards (:func:`aligncore.data.images.load_image`
on the bytes), and the same store key (the sha256 of the bytes, which equals the sha256 of
the file they came from).

Files keep their fast path: a file record is hashed and decoded straight from disk, as
before. Sources are small frozen dataclasses, so they travel to data-loader workers as
cheaply as a path; a table row is read through a per-process streaming cursor
(:mod:`aligncore.data.tables`), so rows read in order stream the table batch by batch and
the table is never held in memory.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class SourceReadError(OSError):
    """The bytes of one image could not be read (the message says where and why)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.strerror = message


class ImageSource:
    """The bytes of one image that is not a file of its own. Subclasses are frozen dataclasses."""

    def read_bytes(self) -> bytes:
        """The encoded image (PNG, JPEG, ...) as stored; :class:`SourceReadError` when it cannot be read."""
        raise NotImplementedError

    def describe(self) -> str:
        """Where the image lies, for messages (``train.parquet row 17``)."""
        raise NotImplementedError


@dataclass(frozen=True)
class TableRow(ImageSource):
    """Row ``row`` of the parquet or Arrow file ``table``; its image lies in column ``column``.

    The column holds encoded bytes, or a Hugging Face ``Image`` struct (``{bytes, path}``)
    whose ``path`` names a file (relative to ``base``) when ``bytes`` is empty.
    """

    table: str
    row: int
    column: str
    base: str
    allow_outside: bool = False

    def describe(self) -> str:
        return f"{Path(self.table).name} row {self.row}"

    def read_bytes(self) -> bytes:
        from . import tables

        try:
            value = tables.cell(self.table, self.column, self.row)
        except SourceReadError:
            raise
        except Exception as exc:  # pyarrow raises many types on a damaged file
            raise SourceReadError(f"{self.describe()}: cannot read the table ({type(exc).__name__}: {exc})") from None
        if isinstance(value, dict):  # a Hugging Face Image struct
            data, path = value.get("bytes"), value.get("path")
            if data:
                return _checked(bytes(data), self)
            if path:
                return read_file_bytes(self._resolve(str(path)))
            raise SourceReadError(f"{self.describe()}: the image cell holds neither bytes nor a path")
        if isinstance(value, (bytes, bytearray, memoryview)):
            if not value:
                raise SourceReadError(f"{self.describe()}: empty image cell (0 bytes)")
            return _checked(bytes(value), self)
        if isinstance(value, str) and value.strip():
            return read_file_bytes(self._resolve(value))
        raise SourceReadError(f"{self.describe()}: the image cell is empty")

    def _resolve(self, raw: str) -> str:
        base = Path(self.base)
        p = Path(raw).expanduser()
        full = (p if p.is_absolute() else base / p).resolve()
        if not self.allow_outside and not full.is_relative_to(base.resolve()):
            raise SourceReadError(f"{self.describe()}: image path {raw!r} points outside the table's folder {base} "
                                  "(allow it with --allow-outside-paths)")
        return str(full)


def _checked(data: bytes, src: ImageSource) -> bytes:
    from .images import MAX_FILE_BYTES

    if len(data) > MAX_FILE_BYTES:
        raise SourceReadError(f"{src.describe()}: refused: the image is {len(data)} bytes, above the limit of "
                              f"{MAX_FILE_BYTES} (ALIGNCORE_MAX_FILE_BYTES)")
    return data


def read_file_bytes(path: str) -> bytes:
    """A regular file's bytes, refused above the loader's size limit before reading (a FIFO or a device is
    refused unread, see :func:`aligncore.files.open_regular`)."""
    from ..files import FileRefused, open_regular, read_capped
    from .images import MAX_FILE_BYTES

    try:
        with open_regular(path, MAX_FILE_BYTES, limit_hint="ALIGNCORE_MAX_FILE_BYTES") as f:
            return read_capped(f, MAX_FILE_BYTES)
    except FileRefused as exc:
        raise SourceReadError(f"{path}: {exc.reason}") from None
    except OSError as exc:
        raise SourceReadError(f"{path}: cannot read file ({exc.strerror or exc})") from None


# ---------------------------------------------------------------------- what the pipeline asks of a record


def record_bytes(record: Any) -> bytes:
    """The encoded bytes of a record's image (its file, or its source)."""
    src = getattr(record, "source", None)
    return src.read_bytes() if src is not None else read_file_bytes(record.path)


def record_sha256(record: Any) -> str:
    """Hex sha256 of the record's image bytes: the store key, equal for a file and the same bytes in a table."""
    src = getattr(record, "source", None)
    if src is None:
        from ..hashing import sha256_file
        from .images import MAX_FILE_BYTES

        return sha256_file(record.path, MAX_FILE_BYTES)  # a file above the limit is refused, never hashed
    return hashlib.sha256(src.read_bytes()).hexdigest()


def load_record_image(path: str, source: ImageSource | None = None):
    """Decode one image with the hardened loader: from the file at ``path``, or from ``source``'s bytes.

    Raises :class:`aligncore.data.images.ImageLoadError` (never anything else).
    """
    from .images import ImageLoadError, load_image

    if source is None:
        return load_image(path)
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise ImageLoadError(path, str(exc.strerror or exc)) from None
    try:
        return load_image(data)
    except ImageLoadError as exc:
        raise ImageLoadError(path, exc.reason) from None
