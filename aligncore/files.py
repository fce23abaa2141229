"""Opening files named by data or by strangers: the file type and size are checked before a byte is read.

A path in a dataset, a manifest, a config or a checkpoint may name a FIFO (``open`` would wait for a
writer forever), a device (``/dev/zero`` never ends), a symlink loop, or a sparse file of 16 GB.
:func:`open_regular` opens without blocking (``O_NONBLOCK``), then checks with ``fstat`` on the open
descriptor (no race with a file swapped in between) that it holds a regular file within the size limit;
anything else raises :class:`FileRefused` with a reason a person can act on.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from .errors import AlignCoreError

_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a folder"),
)


class FileRefused(AlignCoreError):
    """A path that is not a readable regular file within its size limit; ``reason`` says why (without the path)."""

    def __init__(self, path: str | os.PathLike, reason: str, what: str = ""):
        self.path, self.reason = str(path), reason
        super().__init__(f"{what + ' ' if what else ''}{path}: {reason}")


def kind_of(mode: int) -> str:
    """What a ``st_mode`` is, in words (``"a FIFO (named pipe)"``, ``"a regular file"``...)."""
    for test, words in _KINDS:
        if test(mode):
            return words
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def _open_error(path: str | os.PathLike, exc: OSError, what: str) -> FileRefused:
    if exc.errno == errno.ELOOP:
        return FileRefused(path, "a symlink loop (following its links never reaches a file)", what)
    if exc.errno == errno.ENOENT and os.path.islink(path):
        return FileRefused(path, f"a broken symlink (its target {os.readlink(path)!r} does not exist)", what)
    return FileRefused(path, f"cannot read file ({exc.strerror or exc})", what)


def open_regular(path: str | os.PathLike, max_bytes: int | None = None, what: str = "",
                 limit_hint: str = "") -> BinaryIO:
    """``open(path, "rb")`` that never blocks and never reads without end: only a regular file of at most
    ``max_bytes`` bytes is opened; anything else raises :class:`FileRefused`. ``what`` names the file's
    role in the message (``"config file"``); ``limit_hint`` says how to raise the limit."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _open_error(path, exc, what) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused(path, f"not a regular file: it is {kind_of(st.st_mode)}", what)
        if max_bytes is not None and st.st_size > max_bytes:
            raise FileRefused(path, f"refused: file is {st.st_size} bytes, above the limit of {max_bytes}"
                              + (f" ({limit_hint})" if limit_hint else ""), what)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_capped(f: BinaryIO, max_bytes: int) -> bytes:
    """The rest of an open file, at most ``max_bytes + 1`` bytes (one more than the limit, so the caller sees
    a file that grew past it since its size was checked).

    Sized by ``fstat``: ``f.read(max_bytes + 1)`` would allocate the whole limit (512 MB for images) on every
    call and fault in fresh pages for each file's bytes; a file that grew is read on, up to the limit.
    """
    try:
        size = os.fstat(f.fileno()).st_size - f.tell()
    except (OSError, AttributeError, ValueError):  # not a file with a descriptor: read up to the limit
        return f.read(max_bytes + 1)
    data = f.read(max(0, min(size, max_bytes)) + 1)
    if len(data) > size and len(data) <= max_bytes:  # grew since fstat: the rest, still capped
        data += f.read(max_bytes + 1 - len(data))
    return data


def read_bytes(path: str | os.PathLike, max_bytes: int, what: str = "", limit_hint: str = "") -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (a file that grows while read is refused too)."""
    with open_regular(path, max_bytes, what, limit_hint) as f:
        data = read_capped(f, max_bytes)
    if len(data) > max_bytes:
        raise FileRefused(path, f"refused: file holds more than {max_bytes} bytes", what)
    return data


def read_text(path: str | os.PathLike, max_bytes: int, what: str = "", limit_hint: str = "") -> str:
    """The UTF-8 text of a regular file of at most ``max_bytes`` (a BOM is dropped)."""
    data = read_bytes(path, max_bytes, what, limit_hint)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FileRefused(path, f"not UTF-8 text (byte {exc.start}: {data[exc.start:exc.start + 1]!r})", what) from None


def check_regular(path: str | os.PathLike, what: str = "") -> os.stat_result:
    """The ``stat`` of ``path`` (symlinks followed) when it is a regular file, else :class:`FileRefused`."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise _open_error(path, exc, what) from None
    if not stat.S_ISREG(st.st_mode):
        raise FileRefused(path, f"not a regular file: it is {kind_of(st.st_mode)}", what)
    return st


def is_within(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """True when ``path`` (symlinks resolved) is ``folder`` or lies inside it; a loop counts as outside."""
    try:
        return Path(path).resolve().is_relative_to(Path(folder).resolve())
    except (OSError, RuntimeError):
        return False
