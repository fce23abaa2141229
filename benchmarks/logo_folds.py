"""Fold construction of the leave-one-generator-out protocol (``benchmarks/generalization.py``).

The shared test images (SHARED/data/MANIFEST.csv) hold ~35 generators with very uneven counts and
eleven real photo collections. A fold must test a generator no training image came from, against
real photos from collections no training photo came from. The rules, in order:

1. **Families.** Generators of one lineage are one family and are never split between train and test
   (FLUX.1-dev/-schnell/FLUX.2/Chroma; SDXL/SDXL-Turbo/LCM-LoRA-SDXL; SD 1.x/2.x/LCM-Dreamshaper and
   the CompVis latent-diffusion line it grew from (latent-diffusion, GLID-3-XL, Majesty); SD3/SD3.5).
   Every other generator is its own family. Decoders may still be shared across families (PixArt-α
   decodes with the SD VAE, Hunyuan-DiT with the SDXL one): a known limit of naming by lineage.
2. **Generator folds.** Each family with at least ``min_images`` fakes is one fold; the families
   below that are pooled into one ``rare`` fold (single ComfyUI examples, PixArt-α, SD3, Disco).
3. **Publishers.** Images re-saved by one publisher share a pipeline (resize, format, prompts): when
   a fold is tested, every fake published by the same source repository is left out of training too
   (e.g. testing FLUX.1-dev leaves out the SDXL WebPs of the same cheat-sheet repository).
4. **Real folds.** Real collections are grouped by origin (COCO train+val; ImageNet; the super-
   resolution benchmarks BSD/CBSD68/Set5/Set14/Urban100; the camera/web scenes Sun-Hays80, PolyU,
   Dresden) into four real folds of 133–256 photos. Each is left out whole.
5. **Cells.** Every (generator fold, real fold) pair is one cell: train on the fakes and reals the
   rules leave in, test the fold's fakes against the real fold's photos. A generator fold's figure is
   the mean over its four cells; the protocol's figure is the mean over generator folds.

Only the manifest's ``label``, ``generator`` and ``source_repo`` columns are read; image files are
not touched here.
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

#: generator → family (lineage); a generator missing here is its own family
FAMILIES: dict[str, str] = {
    "flux.1-dev": "flux", "flux.1-schnell": "flux", "flux.2-dev": "flux", "chroma": "flux",
    "sdxl": "sdxl", "sdxl-turbo": "sdxl", "lcm-lora-sdxl": "sdxl",
    "stable-diffusion-1.x": "sd-ldm", "stable-diffusion-2.x": "sd-ldm", "lcm-dreamshaper-v7": "sd-ldm",
    "latent-diffusion": "sd-ldm", "glid-3-xl": "sd-ldm", "majesty-diffusion": "sd-ldm",
    "sd3-medium": "sd3", "sd3.5-large": "sd3",
}

#: real source (the manifest's generator column of a real photo) → collection of origin
REAL_GROUPS: dict[str, str] = {
    "COCO-train2017": "coco", "COCO-val2017": "coco",
    "ImageNet": "imagenet",
    "BSD100": "bsd", "CBSD68": "bsd", "Set5": "set5-14", "Set14": "set5-14", "Urban100": "urban100",
    "Sun-Hays80": "sun-hays", "PolyU-RealNoisy": "polyu", "Dresden": "dresden",
}

#: real fold → the collections it leaves out whole (balanced: 256 / 209 / 133 / 146 photos)
REAL_FOLDS: dict[str, tuple[str, ...]] = {
    "coco": ("coco",),
    "imagenet": ("imagenet",),
    "sr-benchmarks": ("bsd", "set5-14", "urban100"),
    "scenes-cameras": ("sun-hays", "polyu", "dresden"),
}

RARE = "rare"
MIN_FOLD_IMAGES = 10


@dataclass(frozen=True)
class Item:
    """One manifest row, reduced to what the protocol may use."""

    file: str  # path relative to the data folder
    label: int  # 1 = fake
    generator: str  # generator, or the real photo's source collection
    publisher: str  # source repository the file was taken from
    sha256: str = ""

    @property
    def family(self) -> str:
        return FAMILIES.get(self.generator, self.generator) if self.label else ""

    @property
    def real_group(self) -> str:
        if self.label:
            return ""
        try:
            return REAL_GROUPS[self.generator]
        except KeyError:
            raise ValueError(f"real source {self.generator!r} ({self.file}) is in no real group; add it to "
                             "REAL_GROUPS in benchmarks/logo_folds.py") from None


@dataclass
class Cell:
    """One train/test split: test ``gen_fold``'s fakes against ``real_fold``'s photos."""

    gen_fold: str
    real_fold: str
    train: list[int] = field(default_factory=list)  # indices into the item list
    test: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.gen_fold}|{self.real_fold}"


def load_items(manifest: str | Path) -> list[Item]:
    """The manifest's rows as items, sorted by file (a stable order for caches and seeds)."""
    path = Path(manifest)
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    need = {"file", "label", "generator", "source_repo"}
    if rows and not need <= set(rows[0]):
        raise ValueError(f"{path}: missing columns {sorted(need - set(rows[0]))}")
    items = []
    for r in rows:
        if r["label"] not in ("real", "fake"):
            raise ValueError(f"{path}: label {r['label']!r} of {r['file']} is neither 'real' nor 'fake'")
        items.append(Item(r["file"], int(r["label"] == "fake"), r["generator"], r["source_repo"], r.get("sha256", "")))
    for it in items:
        _ = it.real_group  # fail early on an unknown real collection
    return sorted(items, key=lambda it: it.file)


def generator_folds(items: Sequence[Item], min_images: int = MIN_FOLD_IMAGES) -> dict[str, tuple[str, ...]]:
    """Fold name → the families it tests: one fold per family with ``min_images`` fakes, the rest pooled as ``rare``."""
    counts = Counter(it.family for it in items if it.label)
    folds: dict[str, tuple[str, ...]] = {}
    rare = sorted(f for f, n in counts.items() if n < min_images)
    for fam, _n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if fam not in rare:
            folds[fam] = (fam,)
    if rare:
        folds[RARE] = tuple(rare)
    return folds


def real_folds(items: Sequence[Item]) -> dict[str, tuple[str, ...]]:
    """Real fold name → collections, keeping only folds with photos present (a subset may lack some)."""
    present = {it.real_group for it in items if not it.label}
    out = {name: tuple(g for g in groups if g in present) for name, groups in REAL_FOLDS.items()}
    return {k: v for k, v in out.items() if v}


def _only(folds: dict, names, what: str) -> dict:
    """``folds`` restricted to ``names`` (all when None); an unknown name is an error listing the known ones."""
    if names is None:
        return folds
    unknown = set(names) - set(folds)
    if unknown:
        raise ValueError(f"unknown {what} fold(s) {sorted(unknown)}; known: {', '.join(folds)}")
    return {k: v for k, v in folds.items() if k in set(names)}


def build_cells(items: Sequence[Item], gen_folds: dict[str, tuple[str, ...]] | None = None,
                gen_only: Iterable[str] | None = None, real_only: Iterable[str] | None = None) -> list[Cell]:
    """Every (generator fold, real fold) cell with its train and test indices (rules in the module doc).

    ``gen_folds`` defaults to :func:`generator_folds` of ``items``; pass the folds of the full manifest
    when ``items`` is a subset, so a subset keeps the full protocol's folds.
    """
    gfolds = dict(gen_folds) if gen_folds is not None else generator_folds(items)
    rfolds = real_folds(items)
    gfolds = _only(gfolds, gen_only, "generator")
    rfolds = _only(rfolds, real_only, "real")
    present = {it.family for it in items if it.label}
    gfolds = {k: v for k, v in gfolds.items() if present & set(v)}  # a subset may lack a fold's images
    cells = []
    for gname, fams in gfolds.items():
        fams_set = set(fams)
        test_fakes = [i for i, it in enumerate(items) if it.label and it.family in fams_set]
        publishers = {items[i].publisher for i in test_fakes}
        train_fakes = [i for i, it in enumerate(items)
                       if it.label and it.family not in fams_set and it.publisher not in publishers]
        for rname, groups in rfolds.items():
            gset = set(groups)
            test_reals = [i for i, it in enumerate(items) if not it.label and it.real_group in gset]
            train_reals = [i for i, it in enumerate(items) if not it.label and it.real_group not in gset]
            cells.append(Cell(gname, rname, sorted(train_fakes + train_reals), sorted(test_fakes + test_reals)))
    return cells


def check_cell(items: Sequence[Item], cell: Cell) -> None:
    """Raise AssertionError when a cell breaks a rule (no family, publisher of a test fake, or real
    collection on both sides; both classes on both sides)."""
    tr, te = [items[i] for i in cell.train], [items[i] for i in cell.test]
    assert not set(cell.train) & set(cell.test), f"{cell.name}: an image is on both sides"
    both = {it.family for it in tr if it.label} & {it.family for it in te if it.label}
    assert not both, f"{cell.name}: families {sorted(both)} on both sides"
    both = {it.generator for it in tr if it.label} & {it.generator for it in te if it.label}
    assert not both, f"{cell.name}: generators {sorted(both)} on both sides"
    both = {it.publisher for it in tr if it.label} & {it.publisher for it in te if it.label}
    assert not both, f"{cell.name}: publishers {sorted(both)} of test fakes also in training"
    both = {it.real_group for it in tr if not it.label} & {it.real_group for it in te if not it.label}
    assert not both, f"{cell.name}: real collections {sorted(both)} on both sides"
    for side, rows in (("train", tr), ("test", te)):
        labels = {it.label for it in rows}
        assert labels == {0, 1}, f"{cell.name}: the {side} side lacks a class (has {sorted(labels)})"


def subsample(items: Sequence[Item], per_fold_fakes: int, per_group_reals: int, seed: int = 0) -> list[Item]:
    """A small, stratified subset for ``--quick``: at most N fakes per generator fold (spread over its
    generators) and M photos per real collection, chosen by a seeded hash of the file name."""
    import hashlib

    def key(it: Item) -> str:
        return hashlib.sha256(f"{seed}:{it.file}".encode()).hexdigest()

    fold_of = {}
    for fold, fams in generator_folds(items).items():  # the full set's folds
        for fam in fams:
            fold_of[fam] = fold
    by_fold: dict[str, list[Item]] = defaultdict(list)
    by_group: dict[str, list[Item]] = defaultdict(list)
    for it in items:
        (by_fold[fold_of[it.family]] if it.label else by_group[it.real_group]).append(it)
    keep: list[Item] = []
    for rows in by_fold.values():
        per_gen: dict[str, list[Item]] = defaultdict(list)
        for it in sorted(rows, key=key):
            per_gen[it.generator].append(it)
        order = []  # round-robin over the fold's generators, so a pooled fold keeps its variety
        queues = [per_gen[g] for g in sorted(per_gen)]
        while any(queues):
            for q in queues:
                if q:
                    order.append(q.pop(0))
        keep += order[:per_fold_fakes]
    for rows in by_group.values():
        keep += sorted(rows, key=key)[:per_group_reals]
    return sorted(keep, key=lambda it: it.file)


def describe(items: Sequence[Item], min_images: int = MIN_FOLD_IMAGES) -> list[dict]:
    """One row per generator fold: its families, generators, publishers, image count and the
    number of training fakes left once the fold's families and publishers are removed."""
    rows = []
    for gname, fams in generator_folds(items, min_images).items():
        fams_set = set(fams)
        test = [it for it in items if it.label and it.family in fams_set]
        pubs = {it.publisher for it in test}
        train = [it for it in items if it.label and it.family not in fams_set and it.publisher not in pubs]
        dropped = [it for it in items if it.label and it.family not in fams_set and it.publisher in pubs]
        rows.append({
            "fold": gname, "families": list(fams), "generators": sorted({it.generator for it in test}),
            "publishers": sorted(pubs), "n_test_fakes": len(test), "n_train_fakes": len(train),
            "n_train_families": len({it.family for it in train}),
            "dropped_for_publisher": dict(sorted(Counter(it.generator for it in dropped).items())),
        })
    return rows
