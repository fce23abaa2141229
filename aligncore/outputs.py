"""Output folders never destroy inputs: the checks ``run``, ``build`` and ``train`` make before writing.

An output folder is refused, unless the caller passes ``overwrite`` (``--overwrite``), when it

- is the data folder, lies inside it, or holds it (for a manifest: is the manifest's folder or holds it),
  because the outputs would be written among the inputs and a later scan would read them back;
- holds files that are not this command's outputs (a folder of the user's);
- holds the outputs of a different job (a run of another configuration, a set built by another
  builder, config or sources), which would be replaced.

A folder holding the outputs of the *same* job is reused: that is how a killed run or build resumes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

from .errors import AlignCoreError


def _resolved(p: str | os.PathLike) -> Path:
    try:
        return Path(p).expanduser().resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(Path(p).expanduser()))


def overlap(out: str | os.PathLike, data: str | os.PathLike) -> str | None:
    """How the output folder ``out`` and the input ``data`` overlap, in words, or None.

    A folder input is overlapped when ``out`` is it, lies inside it or holds it; a file input (a manifest,
    an image) when ``out`` is its folder or holds it (a run folder beside a manifest is fine).
    """
    o, d = _resolved(out), _resolved(data)
    if d.is_dir():
        if o == d:
            return f"is the data folder {d}"
        if o.is_relative_to(d):
            return f"lies inside the data folder {d}"
        if d.is_relative_to(o):
            return f"holds the data folder {d}"
        return None
    if o == d.parent:
        return f"is the folder of the data file {d}"
    if d.is_relative_to(o):
        return f"holds the data file {d}"
    return None


def check_not_inputs(out: str | os.PathLike, inputs: Iterable[str | os.PathLike], option: str = "--out",
                     overwrite: bool | None = False) -> None:
    """An AlignCoreError when the output folder overlaps one of ``inputs`` (see :func:`overlap`).
    ``overwrite=None``: the command has no ``--overwrite`` (the message does not offer it)."""
    if overwrite:
        return
    for data in inputs:
        how = overlap(out, data)
        if how:
            offer = "" if overwrite is None else ", or pass --overwrite if that is what you want"
            raise AlignCoreError(
                f"{option} {out} {how}: the outputs would be written among the inputs (and could replace or be "
                f"read as them). Choose an {option} outside the data{offer}."
            )


def foreign_entries(out: str | os.PathLike, owned: Iterable[str]) -> list[str]:
    """Names directly inside ``out`` that are not in ``owned`` (sorted); [] when ``out`` does not exist."""
    try:
        names = os.listdir(out)
    except (FileNotFoundError, NotADirectoryError):
        return []
    allowed = set(owned)
    return sorted(n for n in names if n not in allowed)


def describe_names(names: Sequence[str], limit: int = 5) -> str:
    from .text import terminal_text

    shown = ", ".join(repr(terminal_text(n)) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def differences(old: dict, new: dict) -> list[str]:
    """The keys whose values differ between two identities (compared as JSON)."""
    import json

    def norm(v):
        return json.dumps(v, sort_keys=True, default=str)

    return sorted(k for k in set(old) | set(new) if norm(old.get(k)) != norm(new.get(k)))
