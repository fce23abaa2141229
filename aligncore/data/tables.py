"""Datasets stored as tables: parquet files, ``datasets.save_to_disk`` folders and Hub datasets (``hf:OWNER/NAME``).

A table holds one image per row in an image column (encoded bytes, a Hugging Face ``Image``
struct ``{bytes, path}``, or a path) and a label column. Reading a dataset reads every
column but the images (labels, generators, other columns kept as :attr:`Record.extra`);
each record carries a :class:`~aligncore.data.sources.TableRow`, and the images are read
only when the loader or the hasher asks for them, through a per-process cursor that streams
the table in small record batches (``ParquetFile.iter_batches``; Arrow files are memory
mapped). A table is never materialised in memory.

Columns are found by name (``image``/``img``/..., ``label``/``labels``/...); other names and
label values are set with :class:`TableOptions` (``--data-option image_column=png``,
``--data-option labels={ai: 1, human: 0}``). A label value that is not understood is an
error naming the value, the rows and the option that maps it, never a silent guess.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pydantic import Field, ValidationError, field_validator

from ..component import ComponentConfig, format_validation_error
from ..errors import ConfigError, DataError
from ..parsing import read_structured
from .sources import SourceReadError, TableRow

TABLE_SUFFIXES = (".parquet", ".arrow")
IMAGE_COLUMNS = ("image", "img", "images", "picture", "png", "jpg", "jpeg", "bytes", "image_bytes", "path", "file",
                 "file_name", "filepath")
LABEL_COLUMNS = ("label", "labels", "is_fake", "fake", "target", "class")
GENERATOR_COLUMNS = ("generator", "model", "source_model")
SUBSET_COLUMNS = ("subset",)
#: rows per record batch read by the streaming cursor (a few images in memory per worker)
BATCH_ROWS = 16
HUB_PREFIX = "hf:"


class TableOptions(ComponentConfig):
    """How to read a table dataset (``--data-option KEY=VALUE``)."""

    image_column: str | None = Field(None, description="Column with the images (bytes, an Image struct or paths); "
                                     "default: the first of " + ", ".join(IMAGE_COLUMNS[:6]) + ", ...")
    label_column: str | None = Field(None, description="Column with the labels; default: the first of "
                                     + ", ".join(LABEL_COLUMNS) + " (none: unlabelled).")
    generator_column: str | None = Field(None, description="Column naming the generator; default: generator or model.")
    subset_column: str | None = Field(None, description="Column naming the subset; default: subset.")
    labels: dict[str, int] | None = Field(None, description="Label value (or class name) → 0 (real) or 1 (fake), "
                                          "e.g. {ai: 1, human: 0}; default: 0/1, real/fake, true/false and the "
                                          "dataset's class names when they are such words.")
    split: str | None = Field(None, description="Split to read when the dataset has several (hf:OWNER/NAME:SPLIT).")

    @field_validator("labels")
    @classmethod
    def _binary(cls, v):
        if v is not None:
            bad = {k: x for k, x in v.items() if x not in (0, 1)}
            if bad:
                raise ValueError(f"labels must map to 0 (real) or 1 (fake), not {bad}")
            return {str(k).strip().lower(): int(x) for k, x in v.items()}
        return v


def table_options(options: dict[str, Any] | None) -> TableOptions:
    try:
        return TableOptions(**(options or {}))
    except ValidationError as err:
        raise ConfigError(format_validation_error("the data options (--data-option)", err, TableOptions.model_fields)) from None


# ---------------------------------------------------------------------- what is a table dataset


def is_table_source(src: str | Path) -> bool:
    """``hf:...``, a ``.parquet``/``.arrow`` file (or a glob of them), a ``save_to_disk`` folder, or a folder
    with parquet files and no images in its top two levels (a downloaded Hub dataset).

    Only the top two levels of a folder are looked at, so an image folder is not walked twice.
    """
    text = str(src)
    if text.startswith(HUB_PREFIX):
        return True
    p = Path(text).expanduser()
    if p.is_file():
        return p.suffix.lower() in TABLE_SUFFIXES
    if p.is_dir():
        if _is_saved_dataset(p):
            return True
        from .datasets import IMAGE_SUFFIXES

        parquet = False
        for pattern in ("*", "*/*"):
            for f in p.glob(pattern):  # names only: stops at the first image, stats nothing else
                suffix = f.suffix.lower()
                if suffix in IMAGE_SUFFIXES:
                    return False
                parquet = parquet or (suffix == ".parquet" and f.is_file())
        return parquet
    return any(ch in text for ch in "*?[") and bool(_glob(text))


def _glob(pattern: str) -> list[Path]:
    import glob

    return sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern), recursive=True)
                  if Path(p).suffix.lower() in TABLE_SUFFIXES)


def _is_saved_dataset(p: Path) -> bool:
    return (p / "state.json").is_file() or (p / "dataset_dict.json").is_file()


def _parquet_files(p: Path) -> list[Path]:
    return sorted(f for f in p.rglob("*.parquet") if f.is_file() and not any(s.startswith(".") for s in f.relative_to(p).parts))


@dataclass
class TableSet:
    """The files of one table dataset, in order, and where relative image paths are read from."""

    root: str  # what the user named (hf:..., a file, a folder)
    name: str  # the dataset's name (leaderboard, reports)
    files: list[Path]
    base: Path
    layout: str
    features: dict[str, Any] | None = None  # Hugging Face features (ClassLabel names), when recorded


def resolve_tables(source: str | Path, options: TableOptions, allow_download: bool = False) -> TableSet:
    """The table files ``source`` names (a split chosen where there are several)."""
    text = str(source)
    if text.startswith(HUB_PREFIX):
        return _hub_dataset(text, options, allow_download)
    p = Path(text).expanduser()
    if p.is_file():
        _regular(p)
        return TableSet(str(p.resolve()), p.stem, [p.resolve()], p.resolve().parent,
                        "parquet" if p.suffix.lower() == ".parquet" else "arrow")
    if p.is_dir():
        if _is_saved_dataset(p):
            return _saved_dataset(p.resolve(), options)
        files, split = _split_files(p.resolve(), _parquet_files(p.resolve()), options.split, text)
        return TableSet(str(p.resolve()), p.resolve().name + (f":{split}" if split else ""), files, p.resolve(), "parquet")
    files = _glob(text)
    if not files:
        raise DataError(f"{text}: no such file or folder.")
    for f in files:
        _regular(f)
    return TableSet(text, Path(text).parent.name or "tables", [f.resolve() for f in files], files[0].resolve().parent,
                    "parquet" if files[0].suffix.lower() == ".parquet" else "arrow")


def _regular(p: Path) -> None:
    try:
        mode = p.stat().st_mode
    except OSError as exc:
        raise DataError(f"{p}: cannot read ({exc.strerror or exc}).") from None
    if not stat.S_ISREG(mode):
        raise DataError(f"{p}: not a regular file.")


def parse_hub_dataset(text: str) -> tuple[str, str | None, str | None]:
    """``hf:OWNER/NAME[@REV][:SPLIT]`` → (repo id, revision, split)."""
    spec = text[len(HUB_PREFIX):]
    split = None
    if ":" in spec:
        spec, split = spec.split(":", 1)
    rev = None
    if "@" in spec:
        spec, rev = spec.split("@", 1)
    from ..hub import is_hub_id

    if not spec or not is_hub_id(spec) or (split is not None and not split) or (rev is not None and not rev):
        raise DataError(f"{text!r} is not a Hub dataset: write hf:OWNER/NAME, hf:OWNER/NAME:SPLIT or hf:OWNER/NAME@REVISION:SPLIT.")
    return spec, rev, split


def _hub_dataset(text: str, options: TableOptions, allow_download: bool) -> TableSet:
    from ..hub import resolve_weights

    repo, rev, split = parse_hub_dataset(text)
    if split and options.split and split != options.split:
        raise ConfigError(f"{text} names split {split!r} and the data options split {options.split!r}; give one.")
    how = ("Download it where the Hub is reachable (`hf download --repo-type dataset " + repo + "`), or allow the "
           "download (--allow-download).")
    folder = resolve_weights(repo, allow_download=allow_download, revision=rev, how=how, repo_type="dataset")
    if _is_saved_dataset(folder):
        ts = _saved_dataset(folder, options.model_copy(update={"split": split or options.split}))
        ts.root, ts.name = text, repo.split("/")[-1] + (f":{split}" if split else "")
        return ts
    files = _parquet_files(folder)
    if not files:
        raise DataError(f"{text}: the cached dataset ({folder}) holds no parquet files; point --data at its image "
                        "folder instead.")
    files, chosen = _split_files(folder, files, split or options.split, text)
    return TableSet(text, repo.split("/")[-1] + (f":{chosen}" if chosen else ""), files, folder, "hub-parquet")


_SHARD = re.compile(r"^(?P<split>[A-Za-z0-9_.]+?)-\d+-of-\d+$")


def _split_of(root: Path, f: Path) -> str:
    """The split a parquet file belongs to, by the Hub's naming conventions."""
    m = _SHARD.match(f.stem)
    if m:
        return m.group("split")
    rel = f.relative_to(root).parts
    if len(rel) > 1 and rel[-2] not in ("data",):
        return rel[-2]
    m = re.match(r"^(?P<split>[A-Za-z0-9_]+?)(-\d+)?$", f.stem)
    return m.group("split") if m else f.stem


def _split_files(root: Path, files: list[Path], split: str | None, what: str) -> tuple[list[Path], str | None]:
    if not files:
        raise DataError(f"{what}: no parquet files found.")
    by: dict[str, list[Path]] = {}
    for f in files:
        by.setdefault(_split_of(root, f), []).append(f)
    if split is None:
        if len(by) == 1:
            return files, (next(iter(by)) if len(files) > 1 else None)
        raise DataError(f"{what} has the splits {', '.join(sorted(by))}: choose one "
                        "(hf:OWNER/NAME:SPLIT, or --data-option split=NAME).")
    if split not in by:
        raise DataError(f"{what} has no split {split!r} (splits: {', '.join(sorted(by))}).")
    chosen = by[split]
    tops = {f.relative_to(root).parts[0] for f in chosen if len(f.relative_to(root).parts) > 2}
    if len(tops) > 1:
        raise DataError(f"{what}: split {split!r} exists in several configurations ({', '.join(sorted(tops))}); "
                        "point --data at the folder of one of them.")
    return chosen, split


def _saved_dataset(folder: Path, options: TableOptions) -> TableSet:
    """A ``datasets`` ``save_to_disk`` folder (one split), or a DatasetDict folder (choose a split)."""
    if (folder / "dataset_dict.json").is_file():
        try:
            splits = list(read_structured(folder / "dataset_dict.json", "datasets split list", "json", DataError)["splits"])
        except DataError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{folder / 'dataset_dict.json'} cannot be read ({exc}).") from None
        split = options.split
        if split is None:
            if len(splits) != 1:
                raise DataError(f"{folder} has the splits {', '.join(splits)}: choose one with --data-option split=NAME.")
            split = splits[0]
        if split not in splits:
            raise DataError(f"{folder} has no split {split!r} (splits: {', '.join(splits)}).")
        ts = _saved_dataset(folder / split, options.model_copy(update={"split": None}))
        ts.root, ts.name = str(folder), f"{folder.name}:{split}"
        return ts
    try:
        state = read_structured(folder / "state.json", "datasets state", "json", DataError)
        files = [folder / d["filename"] for d in state["_data_files"]]
    except DataError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{folder / 'state.json'} is not a datasets save_to_disk state ({exc}).") from None
    for f in files:
        if not f.resolve().is_relative_to(folder) or not f.is_file():
            raise DataError(f"{folder}: data file {f.name} is missing or lies outside the folder.")
    features = None
    info = folder / "dataset_info.json"
    if info.is_file():
        try:
            features = read_structured(info, "datasets info", "json", DataError).get("features")
        except (OSError, ValueError, AttributeError, DataError):
            features = None
    return TableSet(str(folder), folder.name, files, folder, "saved-dataset", features)


# ---------------------------------------------------------------------- reading the non-image columns


def _schema(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.suffix.lower() == ".parquet":
        return pq.ParquetFile(path).schema_arrow
    with pa.memory_map(str(path)) as mm:
        return pa.ipc.open_stream(mm).schema


def _features(schema, ts: TableSet) -> dict[str, Any]:
    if ts.features:
        return ts.features
    meta = schema.metadata or {}
    raw = meta.get(b"huggingface")
    if raw:
        try:
            return json.loads(raw).get("info", {}).get("features") or {}
        except ValueError:
            return {}
    return {}


def _pick(kind: str, given: str | None, candidates: Iterable[str], names: list[str], what: str, required: bool):
    if given is not None:
        if given not in names:
            from ..component import did_you_mean

            raise DataError(f"{what}: no column {given!r} for the {kind}s.{did_you_mean(given, names)} "
                            f"Columns: {', '.join(names)}.")
        return given
    lower = {n.lower(): n for n in names}
    for c in candidates:
        if c in lower:
            return lower[c]
    if required:
        raise DataError(f"{what}: no {kind} column found (looked for {', '.join(candidates)}); columns: {', '.join(names)}. "
                        f"Name it with --data-option {kind}_column=NAME.")
    return None


def _image_kind(field) -> str:
    import pyarrow as pa

    t = field.type
    if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0:
        return "struct"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return "bytes"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "path"
    raise DataError(f"column {field.name!r} holds {t}, not images (bytes, an Image struct or paths).")


def _iter_columns(path: Path, columns: list[str]) -> Iterable[dict[str, list]]:
    """Record batches of ``columns`` (never the image column unless asked) as Python lists."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not columns:
        n = _num_rows(path)
        yield {"__rows__": [None] * n}
        return
    if path.suffix.lower() == ".parquet":
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096, columns=columns, use_threads=False):
            yield batch.to_pydict()
        return
    with pa.memory_map(str(path)) as mm:
        for batch in pa.ipc.open_stream(mm):
            yield batch.select(columns).to_pydict()


def _num_rows(path: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.suffix.lower() == ".parquet":
        return pq.ParquetFile(path).metadata.num_rows
    with pa.memory_map(str(path)) as mm:
        return sum(b.num_rows for b in pa.ipc.open_stream(mm))


def _label_mapper(column: str | None, features: dict[str, Any], options: TableOptions, what: str):
    """value → 0/1/None, and a collector of values that could not be mapped."""
    from .datasets import LABEL_WORDS

    names = None
    feat = features.get(column) if column else None
    if isinstance(feat, dict) and feat.get("_type") == "ClassLabel":
        names = feat.get("names")
    given = options.labels
    bad: dict[str, list[int]] = {}

    def mapper(value, row: int) -> int | None:
        if value is None:
            return None
        keys = [str(value).strip().lower()]
        if names is not None and isinstance(value, int) and 0 <= value < len(names):
            keys.insert(0, str(names[value]).strip().lower())  # the class name first, then the index
        if isinstance(value, bool):
            keys = ["true" if value else "false"]
        table = given if given is not None else LABEL_WORDS
        for k in keys:
            if k in table:
                return table[k]
        bad.setdefault(keys[0], []).append(row)
        return None

    return mapper, bad, names


def read_table_records(ts: TableSet, options: TableOptions, allow_outside: bool) -> list:
    """One :class:`Record` per row of every file of ``ts``, in file and row order (no image is read)."""
    from .datasets import Record, _rows_to_records, _text

    out: list = []
    for f in ts.files:
        what = str(f.relative_to(ts.base)) if f.is_relative_to(ts.base) else f.name
        try:
            schema = _schema(f)
        except Exception as exc:
            raise DataError(f"{f}: not a readable {'parquet' if f.suffix.lower() == '.parquet' else 'Arrow'} file "
                            f"({type(exc).__name__}: {exc}).") from None
        names = list(schema.names)
        image = _pick("image", options.image_column, IMAGE_COLUMNS, names, what, True)
        kind = _image_kind(schema.field(image))
        label = _pick("label", options.label_column, LABEL_COLUMNS, names, what, False)
        gen = _pick("generator", options.generator_column, GENERATOR_COLUMNS, names, what, False)
        sub = _pick("subset", options.subset_column, SUBSET_COLUMNS, names, what, False)
        if options.labels is not None and label is None:
            raise DataError(f"{what}: --data-option labels is set but there is no label column; name it with "
                            "--data-option label_column=NAME.")
        import pyarrow as pa

        scalar = [n for n in names if n not in (image, label, gen, sub) and _is_scalar(schema.field(n).type, pa)]
        wanted = [c for c in (label, gen, sub) if c] + scalar + ([image] if kind == "path" else [])
        mapper, bad, class_names = _label_mapper(label, _features(schema, ts), options, what)
        row = 0
        rows_as_paths = []
        for batch in _iter_columns(f, wanted):
            n = len(next(iter(batch.values()))) if batch else 0
            for i in range(n):
                lab = mapper(batch[label][i], row) if label else None
                g = batch[gen][i] if gen else None
                s = batch[sub][i] if sub else None
                extra = {c: _text(batch[c][i]) for c in scalar}
                extra["row"] = str(row)
                if kind == "path":
                    rows_as_paths.append((f"{what} row {row}", {"path": batch[image][i] or "", "label": lab,
                                          "generator": g, "subset": s, **extra}))
                else:
                    out.append(Record(f"{what}#{row}", lab, (str(g).strip() or None) if g is not None else None,
                                      (str(s).strip() or None) if s is not None else None, extra,
                                      TableRow(str(f), row, image, str(ts.base), allow_outside)))
                row += 1
        if bad:
            shown = "; ".join(f"{v!r} (rows {', '.join(map(str, rows[:3]))}{', ...' if len(rows) > 3 else ''})"
                              for v, rows in list(bad.items())[:5])
            known = f" The dataset's classes: {class_names}." if class_names else ""
            raise DataError(f"{what}: label column {label!r} holds values that are not real/fake labels: {shown}.{known} "
                            "Map them with --data-option labels='{VALUE: 0 or 1, ...}' (0 = real, 1 = fake).")
        if rows_as_paths:
            out.extend(_rows_to_records(rows_as_paths, ts.base, allow_outside))
    return out


def _is_scalar(t, pa) -> bool:
    return (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
            or pa.types.is_string(t) or pa.types.is_large_string(t))


# ---------------------------------------------------------------------- streaming reads of image cells


class _ParquetCursor:
    """Rows of one column of one parquet file, read forward in small record batches."""

    def __init__(self, path: str, column: str):
        import pyarrow.parquet as pq

        self.pf = pq.ParquetFile(path)
        self.column = column
        md = self.pf.metadata
        self.starts = [0]
        for i in range(md.num_row_groups):
            self.starts.append(self.starts[-1] + md.row_group(i).num_rows)
        self.it = None
        self.next_start = 0
        self.batch = None
        self.batch_start = 0

    def get(self, row: int):
        if not 0 <= row < self.starts[-1]:
            raise SourceReadError(f"row {row} is beyond the table's {self.starts[-1]} rows")
        if self.batch is not None and self.batch_start <= row < self.batch_start + len(self.batch):
            return self.batch[row - self.batch_start].as_py()
        rg = bisect.bisect_right(self.starts, row) - 1
        # read forward within the row group the cursor is in; restart at the row group of ``row`` when
        # the row lies behind the cursor or in a later row group (skipping whole groups unread)
        if self.it is None or row < self.next_start or self.next_start < self.starts[rg]:
            self.it = self.pf.iter_batches(batch_size=BATCH_ROWS, row_groups=list(range(rg, len(self.starts) - 1)),
                                           columns=[self.column], use_threads=False)
            self.next_start = self.starts[rg]
        for batch in self.it:
            start = self.next_start
            self.next_start += batch.num_rows
            if start <= row < self.next_start:
                self.batch, self.batch_start = batch.column(0), start
                return self.batch[row - start].as_py()
        raise SourceReadError(f"row {row} not found")


class _ArrowCursor:
    """Rows of one column of a memory-mapped Arrow stream file (zero copy: pages are read on demand)."""

    def __init__(self, path: str, column: str):
        import pyarrow as pa

        self.mm = pa.memory_map(path)
        self.col = pa.ipc.open_stream(self.mm).read_all().column(column)

    def get(self, row: int):
        if not 0 <= row < len(self.col):
            raise SourceReadError(f"row {row} is beyond the table's {len(self.col)} rows")
        return self.col[row].as_py()


_cursors: dict[tuple[int, str, str], Any] = {}
_lock = threading.Lock()
MAX_OPEN_TABLES = 4


def cell(table: str, column: str, row: int):
    """The value of one image cell, through this process's cursor on ``table`` (opened on first use)."""
    key = (os.getpid(), table, column)  # a forked data-loader worker opens its own
    with _lock:
        cur = _cursors.pop(key, None)
        if cur is None:
            for k in [k for k in _cursors if k[0] != os.getpid()]:
                _cursors.pop(k)
            while len(_cursors) >= MAX_OPEN_TABLES:
                _cursors.pop(next(iter(_cursors)))
            cur = _ParquetCursor(table, column) if table.lower().endswith(".parquet") else _ArrowCursor(table, column)
        _cursors[key] = cur  # most recently used last
        return cur.get(row)
