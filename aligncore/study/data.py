"""A study's data: the ``--data-root`` folder, a small sample of it, or the demo's offline photos.

The data root holds one labelled dataset per split, in a layout :func:`aligncore.data.load_dataset`
reads (``real/<source>/...`` and ``fake/<generator>/...`` folders, or a CSV/JSONL manifest)::

    DATA_ROOT/
      train/     (or train.csv / train.jsonl)  images that training sets are built from
      test/      (or test.csv / test.jsonl)    images that evaluation sets are built from, never trained on;
                                               generators found only here are held-out generators

Recipes name them as ``${data}/train`` and ``${data}/test``. At ``--scale tiny`` each referenced split is
replaced by a seeded sample (at most ``TINY_PER_GROUP`` images per class and generator); with no data root
at all, the photos ``alignctl demo`` uses (bundled with scikit-image, no download) are cropped into
``train/real/photos`` and ``test/real/photos`` (different source photos), and the demo's stand-in
generators make the fakes: ``collage-standin`` (impossible collages of the crops) in both splits and
``resample-standin`` (2x resampled copies) in ``test/`` only, a generator no training set sees.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from ..errors import DataError

SPLIT_SUFFIXES = ("", ".csv", ".jsonl")
#: the splits the offline photos provide
OFFLINE_SPLITS = ("train", "test")
#: offline photos at --scale tiny: crops per run (about 70% train, 30% test) and their side in pixels
TINY_PHOTOS = {"n_images": 56, "crop": 64, "seed": 0}
#: at --scale tiny, at most this many images per (split, class, generator) of a given data root
TINY_PER_GROUP = 16
HELDOUT_STANDIN = "resample-standin"


def find_part(root: Path, sub: str) -> Path | None:
    """``root/sub`` as a folder or file, else ``root/sub.csv`` or ``root/sub.jsonl``; None when none exists."""
    for suffix in SPLIT_SUFFIXES:
        p = root / f"{sub}{suffix}"
        if p.exists():
            return p
    return None


def listing_digest(path: Path) -> str:
    """A digest of a labelled folder or manifest: every image's path, label, generator, size and mtime (a manifest's
    own bytes too). Cheap (no image is read); any added, removed, relabelled or rewritten file changes it."""
    from ..data import load_dataset

    ds = load_dataset(path)
    base = Path(ds.root)
    base = base.parent if base.is_file() else base
    h = hashlib.sha256()
    if Path(ds.root).is_file():
        h.update(Path(ds.root).read_bytes())
    for r in ds.records:
        try:
            st = os.stat(r.path)
        except OSError as exc:
            raise DataError(f"{r.path}: cannot read ({exc.strerror or exc}).") from None
        rel = os.path.relpath(r.path, base)
        h.update(json.dumps([rel, r.label, r.generator, r.subset, st.st_size, st.st_mtime_ns]).encode())
    return h.hexdigest()


def offline_photos_spec() -> dict[str, Any]:
    """What the offline photos depend on (part of the data cell's key)."""
    from .. import demo

    try:
        from importlib.metadata import version

        skimage = version("scikit-image")
    except Exception:  # not installed: the demo falls back to generated textures
        skimage = None
    return {"mode": "offline-photos", **TINY_PHOTOS, "photos": list(demo.SKIMAGE_PHOTOS), "scikit-image": skimage,
            "heldout_generator": HELDOUT_STANDIN}


def make_offline_data(out: Path, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``out/train`` and ``out/test`` from the demo's photo source and stand-in generators."""
    import numpy as np

    from .. import demo

    stage = out / "_photos"
    state = demo.DemoState(stage, demo.DemoPlan(n_images=TINY_PHOTOS["n_images"], crop=TINY_PHOTOS["crop"],
                                                seed=TINY_PHOTOS["seed"]), log or (lambda m: None))
    demo.source_photos(state)
    rng = np.random.default_rng(TINY_PHOTOS["seed"] + 1)
    for split, photos in (("train", state.photos_train), ("test", state.photos_eval)):
        demo._semantic_sources(photos, out / split, rng)  # real/photos + fake/collage-standin
    held = demo._standin_pixel_set(state.photos_eval, stage / "resample", HELDOUT_STANDIN)
    dest = out / "test" / "fake" / HELDOUT_STANDIN
    dest.mkdir(parents=True, exist_ok=True)
    for p in sorted((held.parent / "1_fake").glob("*.png")):
        os.replace(p, dest / p.name)
    shutil.rmtree(stage)
    return {split: _counts(out / split) for split in OFFLINE_SPLITS}


def sample_parts(parts: dict[str, Path], out: Path, per_group: int, seed: int) -> dict[str, Any]:
    """A seeded sample of each labelled part: at most ``per_group`` images per (class, generator), copied to
    ``out/<part>/{real,fake}/<generator>/``."""
    from ..data import load_dataset

    counts = {}
    for name, src in parts.items():
        ds = load_dataset(src)
        unlabelled = [r.path for r in ds.records if r.label is None]
        if unlabelled:
            raise DataError(f"{src}: {len(unlabelled)} images have no label (e.g. {unlabelled[0]}); a data root's "
                            "splits hold real/<source>/ and fake/<generator>/ folders, or a manifest with a label column.")
        groups: dict[tuple[int, str], list] = {}
        for r in ds.records:
            groups.setdefault((int(r.label), r.generator or ("photos" if r.label == 0 else "unknown")), []).append(r)
        for (label, gen), recs in sorted(groups.items()):
            chosen = sorted(recs, key=lambda r: hashlib.sha256(f"{seed}:{r.path}".encode()).hexdigest())[:per_group]
            dest = out / name / ("real" if label == 0 else "fake") / _safe(gen)
            dest.mkdir(parents=True, exist_ok=True)
            for r in chosen:
                p = Path(r.path)
                tag = hashlib.sha256(r.path.encode()).hexdigest()[:8]
                shutil.copyfile(p, dest / f"{_safe(p.stem)}-{tag}{p.suffix.lower()}")
        counts[name] = _counts(out / name)
    return counts


def _safe(name: str) -> str:
    out = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).strip(".")
    return out or "unnamed"


def _counts(folder: Path) -> dict[str, int]:
    from ..data import load_dataset

    recs = load_dataset(folder).records
    return {"real": sum(r.label == 0 for r in recs), "fake": sum(r.label == 1 for r in recs),
            "generators": len({r.generator for r in recs if r.label == 1})}
