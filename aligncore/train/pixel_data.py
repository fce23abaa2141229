"""Training sets for pixel experts: records with pairing, a split that never cuts a pair,
and deterministic per-epoch batches (paired or class-balanced).

Any labelled dataset is a valid training set. A builder's manifest may add ``pair_id``
(a real crop and its reconstructions share it) and ``source`` (the source photo); the
split groups by ``pair_id``, else ``source``, else the file itself. Every random choice
is drawn from a generator seeded by (seed, epoch, ...), so a resumed run replays the
same data as an uninterrupted one without saving any data-loader state.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from ..data import load_dataset
from ..data.datasets import require_files
from ..errors import DataError


@dataclass(frozen=True)
class TrainRecord:
    path: str
    label: int
    group: str  # split unit: pair_id, source photo or the file itself
    pair_id: str | None = None
    generator: str | None = None


def load_training_set(source, allow_outside: bool = False) -> list[TrainRecord]:
    """A folder, manifest (path) or list of TrainRecords → labelled TrainRecords (manifest paths outside the
    manifest's folder only with ``allow_outside``)."""
    if isinstance(source, (list, tuple)):
        return list(source)
    ds = load_dataset(source, allow_outside=allow_outside)  # a builder's output folder is read through its manifest
    require_files(ds.records, "training")
    out = []
    root = Path(ds.root) if Path(ds.root).is_dir() else Path(ds.root).parent
    for r in ds.records:
        if r.label is None:
            continue
        pair = (r.extra.get("pair_id") or "").strip() or None
        # the split is drawn from a hash of the group, so the group must not depend on where the set lies:
        # the source photo's digest before its (absolute) path, a file's path relative to the set
        src_id = (r.extra.get("source_sha256") or r.extra.get("source") or "").strip() or None
        out.append(TrainRecord(r.path, int(r.label), pair or src_id or _relative(r.path, root), pair, r.generator))
    labels = {r.label for r in out}
    if labels != {0, 1}:
        raise DataError(f"{source}: a training set needs real (0) and fake (1) images; found labels {sorted(labels)}.")
    return out


def _relative(path: str, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:  # a manifest row outside the set's folder
        return path


def _group_rank(group: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{group}".encode("utf-8", "surrogateescape")).hexdigest()


def split_by_group(records: list[TrainRecord], val_fraction: float, seed: int) -> tuple[list[TrainRecord], list[TrainRecord]]:
    """Hold out ~val_fraction of the groups (never splitting one), chosen by a seeded hash."""
    if val_fraction <= 0:
        return list(records), []
    groups = sorted({r.group for r in records}, key=lambda g: _group_rank(g, seed))
    n_val = max(1, int(round(len(groups) * val_fraction)))
    val_groups = set(groups[:n_val])
    train = [r for r in records if r.group not in val_groups]
    val = [r for r in records if r.group in val_groups]
    if {r.label for r in train} != {0, 1}:
        raise DataError("the split left the training part with one class only; lower val_fraction or add images.")
    return train, val


def make_pairs(records: Iterable[TrainRecord]) -> list[tuple[TrainRecord, TrainRecord]]:
    """(real, fake) pairs sharing a pair_id; a real with several reconstructions makes several pairs."""
    by: dict[str, dict[int, list[TrainRecord]]] = {}
    for r in records:
        if r.pair_id is not None:
            by.setdefault(r.pair_id, {0: [], 1: []})[r.label].append(r)
    pairs = []
    for pid in sorted(by):
        reals, fakes = by[pid][0], by[pid][1]
        for k, f in enumerate(sorted(fakes, key=lambda r: r.path)):
            if reals:
                pairs.append((sorted(reals, key=lambda r: r.path)[k % len(reals)], f))
    return pairs


@dataclass(frozen=True)
class Slot:
    """One image to crop in a batch; ``partner`` is the index of its pair-mate in the batch (or -1)."""

    record: TrainRecord
    partner: int


class EpochPlan:
    """The batches of each epoch, fixed by (seed, epoch): paired or class-balanced."""

    def __init__(self, records: list[TrainRecord], batch_size: int, seed: int, paired: bool):
        self.seed, self.batch_size, self.paired = seed, batch_size, paired
        if paired:
            self.pairs = make_pairs(records)
            if not self.pairs:
                raise DataError("paired training was asked for but the set has no (real, fake) pairs with a shared pair_id.")
            self.per_batch = max(1, batch_size // 2)
            self.steps = max(1, len(self.pairs) // self.per_batch)
        else:
            self.reals = [r for r in records if r.label == 0]
            self.fakes = [r for r in records if r.label == 1]
            self.per_batch = max(1, batch_size // 2)
            self.steps = max(1, max(len(self.reals), len(self.fakes)) // self.per_batch)

    def batches(self, epoch: int) -> list[list[Slot]]:
        rng = np.random.default_rng([self.seed, epoch, 7])
        out: list[list[Slot]] = []
        if self.paired:
            order = rng.permutation(len(self.pairs))
            for s in range(self.steps):
                slots: list[Slot] = []
                for j in order[s * self.per_batch : (s + 1) * self.per_batch]:
                    real, fake = self.pairs[int(j)]
                    i = len(slots)
                    slots += [Slot(real, i + 1), Slot(fake, i)]
                out.append(slots)
            return out
        n = self.steps * self.per_batch
        # balanced: each class drawn to n items (the smaller class repeats, reshuffled per pass)
        def draw(items: list[TrainRecord]) -> list[TrainRecord]:
            seq: list[TrainRecord] = []
            while len(seq) < n:
                seq += [items[int(k)] for k in rng.permutation(len(items))]
            return seq[:n]

        reals, fakes = draw(self.reals), draw(self.fakes)
        for s in range(self.steps):
            slots = []
            for k in range(s * self.per_batch, (s + 1) * self.per_batch):
                slots += [Slot(reals[k], -1), Slot(fakes[k], -1)]
            out.append(slots)
        return out


class ImageCache:
    """Decoded uint8 arrays by path (optional memory cache)."""

    def __init__(self, keep: bool = True):
        self.keep = keep
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, path: str) -> np.ndarray:
        arr = self._arrays.get(path)
        if arr is None:
            from ..data import load_image

            arr = np.asarray(load_image(path), dtype=np.uint8)
            if self.keep:
                self._arrays[path] = arr
        return arr
