"""Helpers for plugin authors: a fake branch, image fixtures and contract checks.

``FakeBranch`` scores images from simple statistics with no model at all, so a whole
run (store, fusion, metrics, reports) can be exercised in milliseconds.
"""

from __future__ import annotations

import hashlib
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np
from pydantic import Field

from .branch import Branch, BranchConfig
from .supervision import BuilderConfig, SupervisionBuilder, WorkItem, item_seed


class FakeBranchConfig(BranchConfig):
    statistic: Literal["smoothness", "saturation", "brightness"] = Field(
        "smoothness", description="Image statistic the score is a logistic function of (smoothness: "
        "low neighbouring-pixel differences, which many generators leave)."
    )
    center: float = Field(0.0, description="Statistic value (standardised) that maps to 0.5.")
    scale: float = Field(1.0, gt=0, description="Steepness of the logistic map.")
    delay_s: float = Field(0.0, ge=0, description="Sleep per batch (to test interruption); does not change scores.")


class FakeBranch(Branch):
    """Deterministic scores from image statistics (no model): for tests and plumbing checks."""

    name = "stats-example"
    help = "No model: a logistic function of an image statistic (tests, plumbing checks)."
    config_class = FakeBranchConfig
    nonscoring_fields = Branch.nonscoring_fields | {"delay_s"}
    config: FakeBranchConfig

    def preprocess(self, image) -> np.ndarray:
        arr = np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.float32) / 255.0
        gray = arr.mean(axis=2)
        if gray.shape[0] > 1 and gray.shape[1] > 1:
            residual = float(np.abs(np.diff(gray, axis=0)).mean() + np.abs(np.diff(gray, axis=1)).mean())
        else:
            residual = 0.0
        sat = float((arr.max(axis=2) - arr.min(axis=2)).mean())
        return np.array([residual, sat, float(gray.mean())], dtype=np.float64)

    def score_batch(self, batch) -> list[float]:
        if self.config.delay_s:
            time.sleep(self.config.delay_s)
        stats = np.atleast_2d(np.asarray(batch, dtype=np.float64))
        col = {"smoothness": 0, "saturation": 1, "brightness": 2}[self.config.statistic]
        # standardise with fixed constants (typical photo values), never with batch statistics,
        # so a score does not depend on which other images share its batch
        mean, std = {0: (0.06, 0.04), 1: (0.2, 0.1), 2: (0.45, 0.15)}[col]
        z = (stats[:, col] - mean) / std
        if col == 0:
            z = -z  # smoother (lower residual) → more likely generated
        return [1.0 / (1.0 + math.exp(-self.config.scale * (float(v) - self.config.center))) for v in z]


# ---------------------------------------------------------------------- fixtures


def make_image_folder(root: str | Path, n_real: int = 4, n_fake: int = 4, size: tuple[int, int] = (48, 40),
                      seed: int = 0, layout: str = "0_real/1_fake", generators: Sequence[str] = ("genA",)) -> Path:
    """Write a small synthetic labelled set: 'real' images are noisy, 'fake' ones smooth."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    for label, n in ((0, n_real), (1, n_fake)):
        for k in range(n):
            gen = generators[k % len(generators)]
            if layout == "0_real/1_fake":
                d = root / gen / ("0_real" if label == 0 else "1_fake")
            else:
                d = root / ("real" if label == 0 else "fake") / gen
            d.mkdir(parents=True, exist_ok=True)
            w, h = size[0] + int(rng.integers(0, 9)), size[1] + int(rng.integers(0, 9))
            base = rng.uniform(0, 255, size=(1, 1, 3))
            ramp = np.linspace(0, 60, w)[None, :, None]
            noise = rng.normal(0, 30 if label == 0 else 3, size=(h, w, 3))
            arr = np.clip(base + ramp + noise, 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(d / f"{'r' if label == 0 else 'f'}{k:04d}.png")
    return root


def check_branch_contract(branch: Branch, images: Sequence) -> list[float]:
    """Assertions every branch must satisfy; returns the scores. Use it in your plugin's tests."""
    scores = branch.score(list(images))
    assert len(scores) == len(images), "one score per image"
    assert all(0.0 <= s <= 1.0 for s in scores), f"scores must lie in [0, 1]: {scores}"
    again = branch.score(list(images))
    assert np.allclose(scores, again, atol=1e-5), "scoring must be deterministic"
    fp = branch.fingerprint()
    assert isinstance(fp, str) and fp == branch.fingerprint(), "fingerprint must be stable"
    return scores


# ---------------------------------------------------------------------- a model-free builder


class FakePairBuilderConfig(BuilderConfig):
    size: int = Field(32, ge=4, le=512, description="Side of the square centre crop written for both classes.")
    noise: float = Field(4.0, ge=0, description="Std of the seeded noise added to the smoothed 'fake' copy.")
    delay_s: float = Field(0.0, ge=0, description="Sleep per item (to test interruption); does not change outputs.")


class FakePairBuilder(SupervisionBuilder):
    """No model: pairs each real image with a smoothed, seeded-noise copy (tests, plumbing checks)."""

    name = "pairs-example"
    help = "No model: real crop + smoothed copy with seeded noise, per source image (tests, plumbing checks)."
    config_class = FakePairBuilderConfig
    nonoutput_fields = frozenset({"delay_s"})
    config: FakePairBuilderConfig

    def plan(self, sources: Sequence[Path]) -> list[WorkItem]:
        from .data import load_dataset

        items = []
        for src in sources:
            ds = load_dataset(src)
            root = Path(ds.root) if Path(ds.root).is_dir() else Path(ds.root).parent
            for r in ds.records:
                if r.label == 1:
                    continue  # only real photos are paired
                rel = Path(r.path).resolve().relative_to(root.resolve()).as_posix()
                items.append(WorkItem(f"{Path(src).name}/{rel}", Path(r.path)))
        return sorted(items, key=lambda it: it.key)

    def process(self, item: WorkItem, out_dir: Path) -> list[dict]:
        from PIL import Image, ImageFilter

        from .data.images import load_image

        if self.config.delay_s:
            time.sleep(self.config.delay_s)
        img = load_image(item.source)
        s = min(self.config.size, *img.size)
        left, top = (img.width - s) // 2, (img.height - s) // 2
        real = img.crop((left, top, left + s, top + s))
        rng = np.random.default_rng(item_seed(self.config.seed, item.key))
        smooth = np.asarray(real.filter(ImageFilter.GaussianBlur(1.5)), dtype=np.float64)
        fake = Image.fromarray(np.clip(smooth + rng.normal(0, self.config.noise, smooth.shape), 0, 255).astype(np.uint8))
        stem = hashlib.sha256(item.key.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        rows = []
        for label, im, sub in ((0, real, "real"), (1, fake, "fake")):
            rows.append({**self.write_image(im, f"{sub}/{stem}"), "label": label,
                         "generator": None if label == 0 else self.name, "subset": None, "source": item.key,
                         "noise_seed": item_seed(self.config.seed, item.key)})
        return rows


# ---------------------------------------------------------------------- test-defined plugins


@contextmanager
def registered_plugin(plugin: object, name: str = "test-plugin") -> Iterator[object]:
    """Register ``plugin`` (a module or any object with @hookimpl functions) for the duration of a block.

    The registry is rebuilt on entry and on exit, so components the plugin registers are
    visible to ``create_branch`` / ``alignctl`` inside the block only. Unregistered in
    ``finally`` even when the block raises.
    """
    from .plugins import PluginInfo, get_plugin_manager, get_plugin_state
    from .registry import reset_registry

    pm = get_plugin_manager()
    state = get_plugin_state()
    pm.register(plugin, name=name)
    state.infos[name] = PluginInfo(name=name, module=type(plugin).__module__, builtin=False, distribution="(test)",
                                   hooks=sorted(h.name for h in pm.get_hookcallers(plugin) or []))
    reset_registry()
    try:
        yield plugin
    finally:
        pm.unregister(plugin)
        state.infos.pop(name, None)
        reset_registry()
