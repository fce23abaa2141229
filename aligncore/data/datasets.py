"""Dataset layouts people already use, read into one list of records.

- ``0_real`` / ``1_fake`` folders, possibly nested per generator (CNNDetection, UnivFD,
  GenImage style: ``ROOT/<generator>/[<subset>/]0_real``); the folders above the label
  folder give the generator and subset.
- ``real/`` + ``fake/`` folders; the first folder below ``fake/`` (or ``real/``) names the
  generator (or the source of the real photos).
- CSV or JSONL manifests with ``path`` (or ``file``), ``label`` (0/1, real/fake) and
  optional ``generator`` and ``subset``; paths are relative to the manifest's folder. Every
  other column is kept in :attr:`Record.extra` (e.g. a pixel set's ``pair_id``).
- A folder holding a ``manifest.csv`` (a supervision builder's output) is read through that
  manifest, never scanned: the manifest says which files belong to the set.
- Tables (:mod:`aligncore.data.tables`): ``.parquet``/``.arrow`` files, ``datasets.save_to_disk``
  folders and Hub datasets (``hf:OWNER/NAME[:SPLIT]``), one image per row; their records carry a
  :class:`~aligncore.data.sources.TableRow` that reads the image's bytes when asked.

The folder boundary is the same for scans and manifests: a path (or a file symlink) that leads
outside the data folder needs ``allow_outside`` (``--allow-outside-paths``). Symlinked folders are
not followed. Entries that are not regular files (FIFOs, devices, sockets, symlink loops, broken
symlinks) are kept as records, so the run lists each in ``skipped.csv`` with its reason instead of
dropping it silently; their bytes are never read.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import DataError
from .sources import ImageSource

IMAGE_SUFFIXES = {
    ".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".jfif", ".ppm", ".pgm", ".avif", ".heic",
}
REAL_NAMES = {"0_real", "real", "reals", "nature"}
FAKE_NAMES = {"1_fake", "fake", "fakes", "ai"}
MANIFEST_NAME = "manifest.csv"  # what a folder that is a supervision builder's output holds
PATH_COLUMNS = ("path", "file", "filepath", "image")
CORE_COLUMNS = ("label", "generator", "subset")
#: a manifest may hold at most this many bytes (about ten million rows)
MAX_MANIFEST_BYTES = 1 << 30
LABEL_WORDS = {"0": 0, "real": 0, "0_real": 0, "nature": 0, "false": 0, "1": 1, "fake": 1, "1_fake": 1, "ai": 1, "true": 1}


@dataclass(frozen=True)
class Record:
    path: str
    label: int | None  # 0 real, 1 fake, None unknown (prediction only)
    generator: str | None = None
    subset: str | None = None
    #: every manifest column beyond path/label/generator/subset, as text ({} for folder layouts)
    extra: dict[str, str] = field(default_factory=dict, hash=False)
    #: where the image's bytes are when it is not the file at ``path`` (a table row); ``path`` then names it
    source: ImageSource | None = None

    @property
    def is_file(self) -> bool:
        """The image is the file at :attr:`path` (not a row of a table)."""
        return self.source is None


@dataclass
class Dataset:
    root: str
    layout: str
    records: list[Record]
    title: str | None = None  # the dataset's name where the root does not say it (a Hub id, a split)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def name(self) -> str:
        if self.title:
            return self.title
        p = Path(self.root)
        return p.stem if p.is_file() else p.name


def hash_records(records: Sequence[Record]) -> tuple[list[str | None], list[tuple[str, str]]]:
    """The sha256 of every record's image bytes (None where they cannot be read) and (path, reason) of those.

    Table rows are hashed in record order, so a table is streamed once. Type and size are checked before a
    byte is read: a FIFO, a device, a symlink loop or a file above the image size limit is never read (nor
    hashed) and gets its reason instead.
    """
    from ..files import FileRefused
    from .sources import record_sha256

    hashes: list[str | None] = []
    unreadable = []
    for r in records:
        try:
            hashes.append(record_sha256(r))
        except FileRefused as exc:
            hashes.append(None)
            hint = " (ALIGNCORE_MAX_FILE_BYTES)" if "above the limit" in exc.reason else ""
            unreadable.append((r.path, exc.reason + hint))
        except OSError as exc:
            hashes.append(None)
            why = exc.strerror or exc
            unreadable.append((r.path, f"cannot read file ({why})" if r.is_file else str(why)))
    return hashes, unreadable


def require_files(records: Sequence[Record], what: str) -> None:
    """A clear error when ``what`` (a step that reads image files) is given table rows."""
    rows = [r for r in records if not r.is_file]
    if rows:
        raise DataError(f"{what} reads image files, and {rows[0].path} is a row of a table: export the table's images "
                        "to files (or a manifest) first.")


def parse_label(value, where: str) -> int | None:
    if value is None or str(value).strip() == "":
        return None
    key = str(value).strip().lower()
    if key in LABEL_WORDS:
        return LABEL_WORDS[key]
    raise DataError(f"{where}: label {value!r} is not one of 0/1/real/fake.")


def load_dataset(source: str | Path, allow_outside: bool = False, options: dict[str, Any] | None = None,
                 allow_download: bool = False) -> Dataset:
    """Read a folder, manifest or table into records (folders sorted by path, manifests and tables in their order).

    ``options`` (:class:`~aligncore.data.tables.TableOptions`: columns, label values, split) apply to
    tables only; ``allow_download`` lets an ``hf:`` dataset missing from the Hugging Face cache be downloaded.
    """
    from . import tables

    if tables.is_table_source(source):
        topts = tables.table_options(options)
        ts = tables.resolve_tables(source, topts, allow_download)
        recs = tables.read_table_records(ts, topts, allow_outside)
        if not recs:
            raise DataError(f"{source}: the table holds no rows.")
        return Dataset(ts.root, ts.layout, recs, ts.name)
    if options:
        raise DataError(f"{source}: data options ({', '.join(sorted(options))}) apply to parquet, Arrow and hf: "
                        "datasets only.")
    src = Path(source).expanduser()
    if not src.exists():
        raise DataError(f"{src}: no such file or folder.")
    if src.is_file():
        if src.suffix.lower() in (".csv", ".tsv"):
            recs = _read_csv_manifest(src, allow_outside)
            layout = "csv-manifest"
        elif src.suffix.lower() in (".jsonl", ".json", ".ndjson"):
            recs = _read_jsonl_manifest(src, allow_outside)
            layout = "jsonl-manifest"
        elif src.suffix.lower() in IMAGE_SUFFIXES:
            recs, layout = [Record(str(src.resolve()), None)], "single-image"
        else:
            raise DataError(f"{src}: not a manifest (.csv, .jsonl) or an image.")
        return Dataset(str(src.resolve()), layout, recs)
    if (src / MANIFEST_NAME).is_file():
        return Dataset(str(src.resolve()), "builder-manifest", _read_csv_manifest(src / MANIFEST_NAME, allow_outside))
    recs, layout = _read_folder(src.resolve(), allow_outside)
    if not recs:
        raise DataError(f"{src}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))}).")
    return Dataset(str(src.resolve()), layout, recs)


def _scan(root: Path, allow_outside: bool) -> list[Path]:
    """Every non-hidden entry below ``root`` that is not a folder (symlinked folders are not followed), sorted.

    A file symlink whose target lies outside ``root`` is an error unless ``allow_outside``: the same rule
    as a manifest row that names a path outside the manifest's folder.
    """
    found: list[Path] = []
    outside: list[str] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue  # an unreadable folder: nothing in it can be listed
        for e in entries:
            if e.name.startswith("."):
                continue
            p = Path(e.path)
            try:
                is_link = e.is_symlink()
                if not is_link and e.is_dir(follow_symlinks=False):
                    stack.append(p)
                    continue
                if is_link and e.is_dir(follow_symlinks=True):
                    continue  # a symlinked folder: not followed (no loops, no second copy of the data)
            except OSError:
                pass  # a symlink loop or an entry that vanished: a record, skipped later with its reason
            if is_link and not allow_outside:
                try:
                    target = p.resolve(strict=True)
                except (OSError, RuntimeError):
                    target = None  # loop or broken: never read, so it cannot leak anything
                if target is not None and not target.is_relative_to(root):
                    outside.append(f"{p} -> {target}")
                    continue
            found.append(p)
    if outside:
        more = f" and {len(outside) - 5} more" if len(outside) > 5 else ""
        raise DataError(
            f"{root}: {len(outside)} symlink(s) point outside the data folder: {'; '.join(outside[:5])}{more}. "
            "Remove them, or pass allow_outside=True (--allow-outside-paths) to read files outside the folder."
        )
    return sorted(found)


def _read_folder(root: Path, allow_outside: bool = False) -> tuple[list[Record], str]:
    files = _scan(root, allow_outside)
    # any file whose path contains a label folder is labelled by the innermost one
    labelled: list[Record] = []
    unlabelled: list[Path] = []
    layout = "folder"
    for f in files:
        parts = f.relative_to(root).parts[:-1]
        idx = None
        for i in range(len(parts) - 1, -1, -1):
            if parts[i].lower() in REAL_NAMES | FAKE_NAMES:
                idx = i
                break
        if idx is None:
            if f.suffix.lower() in IMAGE_SUFFIXES:
                unlabelled.append(f)
            continue
        word = parts[idx].lower()
        label = 0 if word in REAL_NAMES else 1
        above, below = parts[:idx], parts[idx + 1 :]
        if word in ("0_real", "1_fake"):
            layout = "0_real/1_fake"
            generator = above[0] if above else None
            subset = "/".join(above[1:]) or None
        else:
            layout = "real/fake" if layout == "folder" else layout
            generator = below[0] if below else (above[-1] if above else None)
            subset = "/".join(below[1:]) or None
        labelled.append(Record(str(f), label, generator, subset))
    if labelled:
        # images outside every label folder are not part of a labelled set: leave them out
        return sorted(labelled, key=lambda r: r.path), layout
    return [Record(str(f), None) for f in unlabelled], "unlabelled-folder"


def _resolve(base: Path, raw: str, where: str, allow_outside: bool) -> str:
    if not raw or not str(raw).strip():
        raise DataError(f"{where}: empty path.")
    p = Path(str(raw).strip()).expanduser()
    try:
        full = (p if p.is_absolute() else base / p).resolve()
    except RuntimeError:  # a symlink loop: kept as named (inside or not by its own path), skipped when read
        full = Path(os.path.abspath(p if p.is_absolute() else base / p))
    if not allow_outside and not full.is_relative_to(base.resolve()):
        raise DataError(
            f"{where}: path {raw!r} points outside the manifest's folder {base}; "
            "move the manifest or pass allow_outside=True (--allow-outside-paths)."
        )
    return str(full)


def _rows_to_records(rows: Iterable[tuple[str, dict]], base: Path, allow_outside: bool) -> list[Record]:
    seen: dict[str, str] = {}
    out = []
    missing: list[str] = []
    for where, row in rows:
        key = next((k for k in PATH_COLUMNS if k in row), None)
        if key is None:
            raise DataError(f"{where}: no 'path' (or 'file') column.")
        raw = row[key]
        path = _resolve(base, raw, where, allow_outside)
        if not os.path.lexists(path):  # a FIFO, device or loop exists: it is skipped with its reason when read
            missing.append(f"{where} ({str(raw).strip()!r})")
        if path in seen:
            raise DataError(f"{where}: duplicate path {raw!r} (first at {seen[path]}).")
        seen[path] = where
        out.append(
            Record(
                path,
                parse_label(row.get("label"), where),
                (str(row["generator"]).strip() or None) if row.get("generator") not in (None, "") else None,
                (str(row["subset"]).strip() or None) if row.get("subset") not in (None, "") else None,
                {k: _text(v) for k, v in row.items() if k != key and k not in CORE_COLUMNS and k is not None},
            )
        )
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DataError(
            f"{len(missing)} of {len(out)} manifest rows name files that do not exist (relative paths are read from "
            f"the manifest's folder {base}): {'; '.join(missing[:5])}{more}."
        )
    return out


def _text(value) -> str:
    """A manifest cell as text: CSV cells already are; JSONL values are written back as JSON (None is empty)."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _open_manifest(path: Path):
    from ..files import FileRefused, open_regular

    try:
        return open_regular(path, MAX_MANIFEST_BYTES, "manifest")
    except FileRefused as exc:
        raise DataError(str(exc) + ".") from None


def _read_csv_manifest(path: Path, allow_outside: bool) -> list[Record]:
    delim = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with io.TextIOWrapper(_open_manifest(path), newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter=delim)
            if not reader.fieldnames:
                raise DataError(f"{path}: empty manifest (no header).")
            rows = [(f"{path.name} line {i}", row) for i, row in enumerate(reader, start=2)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable CSV manifest ({exc}).") from None
    return _rows_to_records(rows, path.parent, allow_outside)


def _read_jsonl_manifest(path: Path, allow_outside: bool) -> list[Record]:
    from ..parsing import check_size

    rows = []
    try:
        with io.TextIOWrapper(_open_manifest(path), encoding="utf-8") as f:
            lines = list(f)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a readable JSONL manifest (not UTF-8: {exc.reason}).") from None
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path.name} line {i}: not valid JSON ({exc.msg}).") from None
        except RecursionError:
            raise DataError(f"{path.name} line {i}: nested too deeply.") from None
        check_size(obj, f"{path.name} line {i}", DataError, max_nodes=10_000, max_depth=16)
        if not isinstance(obj, dict):
            raise DataError(f"{path.name} line {i}: expected a JSON object.")
        rows.append((f"{path.name} line {i}", obj))
    return _rows_to_records(rows, path.parent, allow_outside)
