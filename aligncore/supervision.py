"""SupervisionBuilder: turn source images into a labelled training set, resumably.

A builder plans work items with stable keys, processes each one into manifest rows,
and journals finished items so that a re-run (after a crash or a kill) skips them.
The final ``manifest.csv`` is written from the journal in key order, with no
timestamps, so the same inputs and seed give a byte-identical manifest.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Sequence

from pydantic import Field

from .component import Component, ComponentConfig
from .errors import AlignCoreError

MANIFEST_NAME = "manifest.csv"
JOURNAL_NAME = "journal.jsonl"
PROVENANCE_NAME = "provenance.json"
#: which build a folder holds (builder, config, sources), written before the first item: a re-run of the
#: same build resumes, another build into the folder is refused unless ``overwrite``
BUILD_INFO = "build.json"
BOOKKEEPING = (MANIFEST_NAME, JOURNAL_NAME, PROVENANCE_NAME, BUILD_INFO, "manifest.tmp", BUILD_INFO + ".tmp")


class BuilderConfig(ComponentConfig):
    seed: int = Field(0, description="Seed for every random choice; the same seed gives the same set.")
    format: str = Field("png", pattern="^(png|jpeg)$", description="Output format for both classes: png or jpeg.")
    jpeg_quality: int = Field(95, ge=1, le=100, description="JPEG quality when format is jpeg (same for both classes).")
    limit: int | None = Field(None, ge=1, description="Use at most this many source images (sorted order).")


@dataclass
class WorkItem:
    """One unit of work: ``key`` is stable across runs and unique in the set."""

    key: str
    source: Path
    meta: dict[str, Any] = field(default_factory=dict)


def item_seed(seed: int, key: str) -> int:
    """A per-item seed that does not depend on processing order (so resumed runs match)."""
    # surrogateescape: a key made from a file name that is not UTF-8 hashes to its bytes (valid names unchanged)
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode("utf-8", "surrogateescape")).digest()[:8], "little")


class SupervisionBuilder(Component):
    """Base class. Subclasses implement :meth:`plan` and :meth:`process`."""

    config_class: ClassVar[type[BuilderConfig]] = BuilderConfig
    #: config fields that never change the set's files (left out of the build's identity, so a resumed
    #: build may set them differently)
    nonoutput_fields: ClassVar[frozenset[str]] = frozenset()
    config: BuilderConfig

    @classmethod
    def kind_name(cls) -> str:
        return "builder"

    # ---------------------------------------------------------------- to implement
    def plan(self, sources: Sequence[Path]) -> list[WorkItem]:
        raise NotImplementedError

    def process(self, item: WorkItem, out_dir: Path) -> list[dict[str, Any]]:
        """Produce the files for one item; return manifest rows (``path`` relative to ``out_dir``)."""
        raise NotImplementedError

    def process_batch(self, items: Sequence[WorkItem], out_dir: Path) -> list[list[dict[str, Any]]]:
        """Several items at once (builders that batch model calls override this); rows per item, in order."""
        return [self.process(it, out_dir) for it in items]

    def batch_items(self) -> int:
        """How many items :meth:`build` hands to :meth:`process_batch` at a time (journalled after each batch)."""
        return 1

    def summary(self) -> str | None:
        """One line the CLI prints after a build (e.g. a quality figure); None prints nothing."""
        return None

    def setup(self) -> None:
        """Load models once before the first item (only called when work remains)."""

    def provenance(self) -> dict[str, Any]:
        """Extra provenance recorded in ``provenance.json`` (model ids, digests)."""
        return {}

    def finalize(self, rows: list[dict[str, Any]], out_dir: Path) -> dict[str, Any]:
        """Called once ``manifest.csv`` is written, with every row in manifest order: write side files
        (e.g. a second manifest), compute set statistics; the returned entries go into ``provenance.json``."""
        return {}

    # ---------------------------------------------------------------- writing images
    _out_dir: Path | None = None  # the folder being built (set by :meth:`build`)

    def encoding(self) -> dict[str, Any]:
        """The file format both classes are written in (manifest/provenance columns)."""
        fmt = self.config.format
        return {"format": fmt, "quality": self.config.jpeg_quality if fmt == "jpeg" else None}

    def write_image(self, img: Any, rel: str) -> dict[str, Any]:
        """Write one image of either class (PIL image or uint8 H×W×3 array) as ``rel`` plus the set's
        extension, with the set's format and the one fixed encoder setting; returns ``{"path": ...}``
        for the manifest row. Atomic, so a killed build never leaves a torn file."""
        from .data.codec import FORMATS, save_image

        if self._out_dir is None:
            raise AlignCoreError(f"builder {self.name!r}: write_image is only available while build() runs.")
        path = f"{safe_relpath(rel)}.{FORMATS[self.config.format]}"
        save_image(img, self._out_dir / path, self.config.format, self.config.jpeg_quality)
        return {"path": path}

    def limited(self, items: list[WorkItem], n: int) -> list[WorkItem]:
        """The items ``limit=n`` keeps: the first ``n`` in sorted order. A builder whose plan mixes classes
        overrides this so that a limit keeps them balanced instead of taking one class first."""
        return items[:n]

    # ---------------------------------------------------------------- template
    def build(
        self,
        sources: Iterable[str | Path],
        out_dir: str | Path,
        progress: Callable[[int, int], None] | bool = True,
        overwrite: bool = False,
    ) -> Path:
        """Build (or finish building) the set in ``out_dir``; returns the manifest path.

        ``out_dir`` must not overlap the sources, hold files of the user, or hold a set of another build
        (builder, config, sources), unless ``overwrite`` (which replaces that set). The same build resumes.
        """
        out = Path(out_dir)
        srcs = [Path(s) for s in sources]
        config = {k: v for k, v in self.config.model_dump(mode="json").items() if k not in self.nonoutput_fields}
        identity = {"builder": self.name, "config": config, "sources": [str(s.expanduser().resolve()) for s in srcs]}
        self._check_out(out, srcs, identity, overwrite)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AlignCoreError(f"cannot create the output folder {out}: {exc.strerror or exc}. Choose another --out.") from None
        items = self.plan(srcs)
        if self.config.limit:
            items = self.limited(items, self.config.limit)
        keys = [it.key for it in items]
        if len(set(keys)) != len(keys):
            raise ValueError(f"builder {self.name!r} planned duplicate item keys")
        _write_json_atomic(out / BUILD_INFO, identity)  # the folder holds this build from its first item on
        self._out_dir = out
        try:
            done = self._process_missing(items, out, progress)
        finally:
            self._out_dir = None
        rows = [r for k in sorted(keys) for r in done[k]]
        manifest = out / MANIFEST_NAME
        write_manifest(manifest, rows)
        prov = {
            "builder": self.name,
            "config": self.config.model_dump(mode="json"),
            "encoding": self.encoding(),
            "sources": [str(s) for s in srcs],
            "items": len(items),
            "rows": len(rows),
            **self.provenance(),
            **self.finalize(rows, out),
        }
        (out / PROVENANCE_NAME).write_text(json.dumps(prov, indent=2, sort_keys=True) + "\n")
        return manifest

    def _check_out(self, out: Path, srcs: list[Path], identity: dict, overwrite: bool) -> None:
        from .outputs import check_not_inputs, describe_names, differences, foreign_entries

        # a source may be written LABEL=PATH (the semantic set's real=DIR): the path is what must not overlap
        paths = [Path(str(s).split("=", 1)[1]) if "=" in str(s) and not s.exists() else s for s in srcs]
        check_not_inputs(out, paths, "--out", overwrite)
        if not out.is_dir() or not os.listdir(out):
            return
        old = _recorded_build(out)
        again = "Choose another --out, or pass --overwrite to replace it"
        if old is None:
            if (out / JOURNAL_NAME).exists() and not (out / MANIFEST_NAME).exists():
                return  # a build interrupted before build.json was written: resumed
            if overwrite:
                return
            if (out / MANIFEST_NAME).exists():
                raise AlignCoreError(f"--out {out} holds a set aligncore did not build (a manifest.csv without "
                                     f"{BUILD_INFO}). {again}.")
            raise AlignCoreError(f"--out {out} holds files that are not a set "
                                 f"({describe_names(foreign_entries(out, BOOKKEEPING))}). Choose another --out, or "
                                 "pass --overwrite to build the set among them (they are kept).")
        if isinstance(old.get("config"), dict):  # a provenance.json records every field
            old["config"] = {k: v for k, v in old["config"].items() if k not in self.nonoutput_fields}
        diff = differences(old, {k: identity[k] for k in old})
        if not diff:
            return
        if not overwrite:
            raise AlignCoreError(f"--out {out} holds a set of another build ({old.get('builder')!r}; it differs in: "
                                 f"{', '.join(diff)}). {again}, or re-run the same build to resume it.")
        _remove_build(out)

    def _process_missing(self, items: list[WorkItem], out: Path, progress) -> dict[str, list[dict]]:
        """Process the items the journal does not hold yet, journalling each batch (fsync) as it finishes."""
        journal = out / JOURNAL_NAME
        done = read_journal(journal)
        todo = [it for it in items if it.key not in done]
        if not todo:
            return done
        self.setup()
        bar = _progress_bar(len(items), len(items) - len(todo), f"build {self.name}") if progress is True else None
        _end_torn_line(journal)
        step = max(1, int(self.batch_items()))
        with open(journal, "a", encoding="utf-8") as jf:
            for start in range(0, len(todo), step):
                chunk = todo[start : start + step]
                results = self.process_batch(chunk, out)
                if len(results) != len(chunk):
                    raise ValueError(f"builder {self.name!r}: process_batch returned {len(results)} results for {len(chunk)} items")
                for it, rows in zip(chunk, results):
                    jf.write(json.dumps({"key": it.key, "rows": rows}, sort_keys=True) + "\n")
                    done[it.key] = rows
                jf.flush()
                os.fsync(jf.fileno())
                if bar is not None:
                    bar.update(len(chunk))
                elif callable(progress):
                    progress(len(items) - len(todo) + start + len(chunk), len(items))
        if bar is not None:
            bar.close()
        return done


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _recorded_build(out: Path) -> dict | None:
    """The identity of the build ``out`` holds (build.json, or a finished set's provenance.json), or None."""
    from .parsing import read_structured

    for name, keys in ((BUILD_INFO, ("builder", "config", "sources")), (PROVENANCE_NAME, ("builder", "config"))):
        if (out / name).exists():
            info = read_structured(out / name, "build record", fmt="json", error=AlignCoreError)
            if not isinstance(info, dict):
                raise AlignCoreError(f"{out / name} is not a build record written by aligncore.")
            return {k: info.get(k) for k in keys}
    return None


def _remove_build(out: Path) -> None:
    """Remove the files of the set in ``out`` (those its journal and manifest list, inside ``out``) and its
    bookkeeping, so another build starts from nothing; anything else in the folder is kept."""
    rows = [r for rs in read_journal(out / JOURNAL_NAME).values() for r in rs]
    if (out / MANIFEST_NAME).is_file():
        with open(out / MANIFEST_NAME, newline="", encoding="utf-8", errors="replace") as f:
            rows += list(csv.DictReader(f))
    root = out.resolve()
    for r in rows:
        rel = r.get("path") if isinstance(r, dict) else None
        if isinstance(rel, str) and rel:
            p = (out / rel).resolve()
            if p.is_relative_to(root) and p != root and p.is_file():
                p.unlink()
    for name in BOOKKEEPING:
        (out / name).unlink(missing_ok=True)


def read_journal(path: Path) -> dict[str, list[dict]]:
    """Finished items; a torn last line (killed mid-write) is ignored and redone."""
    from .files import FileRefused, open_regular
    from .parsing import check_size

    done: dict[str, list[dict]] = {}
    if not os.path.lexists(path):
        return done
    try:
        with open_regular(path, what="build journal") as f:
            lines = f.read().decode("utf-8", errors="replace").split("\n")
    except FileRefused as exc:
        raise AlignCoreError(f"{exc}. Remove it to rebuild the set.") from None
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            continue  # a torn line (killed mid-write): that item is redone
        check_size(rec, f"{path} line {i}", AlignCoreError)
        if not (isinstance(rec, dict) and isinstance(rec.get("key"), str) and isinstance(rec.get("rows"), list)
                and all(isinstance(r, dict) for r in rec["rows"])):
            raise AlignCoreError(f"{path} line {i} is not a journal record written by aligncore (key and rows). "
                                 "Remove the journal to rebuild the set.")
        done[rec["key"]] = rec["rows"]
    return done


def _end_torn_line(path: Path) -> None:
    """Terminate a torn last line (killed mid-write) so the next record does not merge into it."""
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            last = f.read(1)
        if last != b"\n":
            with open(path, "ab") as f:
                f.write(b"\n")


CORE_COLUMNS = ["path", "label", "generator", "subset"]


def safe_relpath(rel: str) -> str:
    """``rel`` as a path every manifest can hold: a name part with a control character, a backslash or bytes
    that are not UTF-8 (a source file's name carried into an output name) has them replaced by ``_`` and a
    digest of the original appended, so distinct sources keep distinct outputs; other names are unchanged."""
    import unicodedata

    def bad(ch: str) -> bool:
        return ch == "\\" or unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp")

    def part(name: str) -> str:
        if not any(bad(ch) for ch in name):
            return name
        digest = hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:8]
        return "".join("_" if bad(ch) else ch for ch in name) + f"-{digest}"

    return "/".join(part(name) for name in rel.split("/"))


def write_manifest(path: Path, rows: list[dict[str, Any]]) -> None:
    """CSV with the core columns first, then every extra column in sorted order; atomic replace."""
    extra = sorted({k for r in rows for k in r} - set(CORE_COLUMNS))
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CORE_COLUMNS + extra, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: _cell(r.get(k)) for k in CORE_COLUMNS + extra})
    os.replace(tmp, path)


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    if isinstance(v, str):  # a source's name: bytes that are not UTF-8 and a bare CR would break the manifest
        from .text import terminal_text

        return terminal_text(v, keep_newlines=True)
    return v


def _progress_bar(total: int, initial: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="img", dynamic_ncols=True, leave=False)
