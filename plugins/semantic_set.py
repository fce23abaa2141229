"""The ``semantic-set`` builder: real photos and generated images, both through one heavy degradation chain.

Every image (either class) is first format-aligned (short side resized to ``size`` and
centre-cropped to a square, saved in one format), then passed through the same randomized
chain — downsample → Gaussian noise → Gaussian blur → JPEG → upsample back — with parameters
drawn per image from ``item_seed(seed, key)``. Low-level generator traces do not survive the
chain, so a detector trained on the set has to use semantic cues. Every parameter that was
applied is written to the manifest (rounded first, so the manifest reproduces the image).

With ``keep_clean`` (default) the aligned but unprocessed copy is kept under ``clean/`` and
listed in ``clean_manifest.csv``: the control of ``alignctl audit leakage``.

Sources: a labelled dataset (folder or manifest), or ``real=DIR`` / ``fake=DIR`` for a folder
(or manifest) whose images all have that label, e.g. ``fake=echo4o/surreal``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from pydantic import Field, field_validator

from aligncore import hookimpl
from aligncore.hashing import sha256_file
from aligncore.supervision import BuilderConfig, SupervisionBuilder, WorkItem, item_seed

RESAMPLE_NAMES = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
CLEAN_DIR = "clean"
CLEAN_MANIFEST = "clean_manifest.csv"


def _range(v, lo_bound: float | None = None):
    v = tuple(v)
    if len(v) != 2 or v[0] > v[1]:
        raise ValueError("expected [low, high] with low <= high")
    if lo_bound is not None and v[0] < lo_bound:
        raise ValueError(f"values must be >= {lo_bound}")
    return v


class SemanticSetConfig(BuilderConfig):
    limit: int | None = Field(None, ge=1, description="Use at most this many source images, a seeded sample taken "
                              "from real and fake in turn (both classes kept).")
    size: int | None = Field(512, ge=16, description="Format alignment: short side resized to SIZE and centre-cropped "
                             "to SIZE x SIZE for both classes (None keeps each image's own size).")
    downsample_scale: tuple[float, float] = Field((0.25, 0.5), description="Range of the downsampling factor.")
    noise_sigma: tuple[float, float] = Field((2.0, 8.0), description="Range of the Gaussian noise std (0-255 units).")
    blur_sigma: tuple[float, float] = Field((0.5, 1.5), description="Range of the Gaussian blur radius (pixels, at low resolution).")
    chain_jpeg_quality: tuple[int, int] = Field((30, 70), description="Range of the JPEG quality inside the chain.")
    resample: list[str] = Field(["bilinear", "bicubic", "lanczos"], description="Resampling filters drawn from "
                                "for the down- and upsampling steps.")
    per_class: int | None = Field(None, ge=1, description="Keep at most this many images per class (a seeded sample).")
    generators: list[str] | None = Field(None, description="Keep only fake images of these generators.")
    keep_clean: bool = Field(True, description="Also write the aligned, unprocessed copy (clean/, clean_manifest.csv) "
                             "for the pixel-leakage audit.")

    @field_validator("downsample_scale")
    @classmethod
    def _scale(cls, v):
        v = _range(v, 0.0)
        if v[0] <= 0 or v[1] > 1:
            raise ValueError("downsampling factors lie in (0, 1]")
        return v

    @field_validator("noise_sigma", "blur_sigma")
    @classmethod
    def _nonneg(cls, v):
        return _range(v, 0.0)

    @field_validator("chain_jpeg_quality")
    @classmethod
    def _quality(cls, v):
        v = _range(v, 1)
        if v[1] > 100:
            raise ValueError("JPEG quality lies in 1..100")
        return v

    @field_validator("resample")
    @classmethod
    def _filters(cls, v):
        bad = [x for x in v if x not in RESAMPLE_NAMES]
        if bad or not v:
            raise ValueError(f"resampling filters must be among {', '.join(RESAMPLE_NAMES)}")
        return v


def _sanitize(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:60] or "img"


def align_format(img, size: int | None):
    """Short side → ``size`` (bicubic), centre crop to a square; the same for both classes."""
    from PIL import Image

    if size is None:
        return img
    w, h = img.size
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def draw_chain_params(cfg: SemanticSetConfig, seed: int) -> dict[str, Any]:
    """The chain's parameters for one image, rounded to what the manifest records."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return {
        "pp_scale": round(float(rng.uniform(*cfg.downsample_scale)), 4),
        "pp_noise_sigma": round(float(rng.uniform(*cfg.noise_sigma)), 3),
        "pp_noise_seed": int(rng.integers(0, 2**62)),
        "pp_blur_sigma": round(float(rng.uniform(*cfg.blur_sigma)), 3),
        "pp_jpeg_quality": int(rng.integers(cfg.chain_jpeg_quality[0], cfg.chain_jpeg_quality[1] + 1)),
        "pp_resample_down": cfg.resample[int(rng.integers(0, len(cfg.resample)))],
        "pp_resample_up": cfg.resample[int(rng.integers(0, len(cfg.resample)))],
    }


def apply_chain(img, params: dict[str, Any]):
    """downsample → Gaussian noise → Gaussian blur → JPEG → upsample, exactly as ``params`` say."""
    import numpy as np
    from PIL import Image, ImageFilter

    from aligncore.data.codec import jpeg_roundtrip

    filters = {n: getattr(Image.Resampling, n.upper()) for n in RESAMPLE_NAMES}
    w, h = img.size
    small = img.resize((max(1, round(w * params["pp_scale"])), max(1, round(h * params["pp_scale"]))),
                       filters[params["pp_resample_down"]])
    arr = np.asarray(small, dtype=np.float32)
    noise = np.random.default_rng(params["pp_noise_seed"]).standard_normal(arr.shape, dtype=np.float32)
    arr = np.clip(np.rint(arr + params["pp_noise_sigma"] * noise), 0, 255).astype(np.uint8)
    noisy = Image.fromarray(arr, mode="RGB")
    blurred = noisy.filter(ImageFilter.GaussianBlur(radius=params["pp_blur_sigma"])) if params["pp_blur_sigma"] > 0 else noisy
    decoded = jpeg_roundtrip(blurred, params["pp_jpeg_quality"])
    return decoded.resize((w, h), filters[params["pp_resample_up"]])


class SemanticSetBuilder(SupervisionBuilder):
    """Real + generated images through one seeded heavy post-processing chain (semantic cues only)."""

    name = "semantic-set"
    help = "Real + generated images through one seeded downsample/noise/blur/JPEG/upsample chain (semantic supervision)."
    config_class = SemanticSetConfig
    config: SemanticSetConfig
    #: ``alignctl demo``: small images, no unprocessed copies
    demo_options = {"role": "semantic", "options": {"size": 112, "keep_clean": False}}

    def __init__(self, config: Any = None, **overrides: Any):
        super().__init__(config, **overrides)
        self._duplicates = 0

    # ---------------------------------------------------------------- planning
    def _records(self, source: Path):
        """(path, label, generator, subset) from one source spec."""
        from aligncore.data import load_dataset
        from aligncore.data.datasets import IMAGE_SUFFIXES, MANIFEST_NAME
        from aligncore.errors import DataError

        text = str(source)
        forced = None
        for word, label in (("real=", 0), ("fake=", 1)):
            if text.startswith(word):
                forced, text = label, text[len(word):]
        path = Path(text).expanduser()
        if not path.exists():
            raise DataError(f"semantic-set source {text}: no such file or folder.")
        if forced is None:
            ds = load_dataset(path)
            out = [(r.path, r.label, r.generator, r.subset) for r in ds.records]
            if any(lab is None for _, lab, _, _ in out):
                raise DataError(f"semantic-set source {text} has unlabelled images; write real={text} or fake={text}.")
            return out
        if path.is_file() or (path / MANIFEST_NAME).is_file():  # a manifest, or a built set: its manifest lists the files
            gen = path.parent.name if path.is_file() else path.name
            return [(r.path, forced, r.generator or gen, r.subset) for r in load_dataset(path).records]
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        gen = path.name
        return [(str(p), forced, gen if forced == 1 else (gen or "real"), None) for p in files]

    def plan(self, sources: Sequence[Path]) -> list[WorkItem]:
        from aligncore.errors import DataError

        if not sources:
            raise DataError("semantic-set needs at least one source (a labelled set, real=DIR or fake=DIR).")
        seen: set[str] = set()
        items: dict[str, WorkItem] = {}
        for src in sources:
            for path, label, gen, subset in self._records(src):
                if label == 1 and self.config.generators is not None and (gen or "") not in self.config.generators:
                    continue
                digest = sha256_file(path)
                if digest in seen:
                    self._duplicates += 1
                    continue
                seen.add(digest)
                cls = "real" if label == 0 else "fake"
                gen_name = _sanitize(gen or ("real" if label == 0 else "unknown"))
                key = f"{cls}/{gen_name}/{_sanitize(Path(path).stem)}-{digest[:10]}"
                items[key] = WorkItem(key, Path(path), {"label": label, "generator": gen, "subset": subset, "sha256": digest})
        keys = sorted(items)
        if self.config.per_class:
            chosen: list[str] = []
            for cls in ("real/", "fake/"):
                mine = sorted((k for k in keys if k.startswith(cls)), key=lambda k: item_seed(self.config.seed, k))
                chosen.extend(mine[: self.config.per_class])
            keys = sorted(chosen)
        return [items[k] for k in keys]

    def limited(self, items: list[WorkItem], n: int) -> list[WorkItem]:
        """``limit=n`` keeps both classes: a seeded sample taken from real and fake in turn (real first),
        never the first ``n`` keys (which sort every fake before every real)."""
        by_class = {cls: sorted((it for it in items if it.key.startswith(cls)), key=lambda it: item_seed(self.config.seed, it.key))
                    for cls in ("real/", "fake/")}
        chosen: list[WorkItem] = []
        for k in range(max(len(v) for v in by_class.values()) if items else 0):
            for cls in ("real/", "fake/"):
                if k < len(by_class[cls]) and len(chosen) < n:
                    chosen.append(by_class[cls][k])
        return sorted(chosen, key=lambda it: it.key)

    # ---------------------------------------------------------------- processing
    def process(self, item: WorkItem, out_dir: Path) -> list[dict[str, Any]]:
        from aligncore.data import ImageLoadError, load_image

        try:
            img = load_image(item.source)
        except ImageLoadError:
            return []  # unreadable source: no image, so no row (a re-build skips it again)
        aligned = align_format(img, self.config.size)
        params = draw_chain_params(self.config, item_seed(self.config.seed, item.key))
        processed = apply_chain(aligned, params)
        row: dict[str, Any] = {
            **self.write_image(processed, item.key),
            "label": item.meta["label"],
            "generator": item.meta["generator"] or ("real" if item.meta["label"] == 0 else "unknown"),
            "subset": item.meta["subset"],
            "source": str(item.source),
            "source_sha256": item.meta["sha256"],
            "aligned_size": f"{aligned.size[0]}x{aligned.size[1]}",
            **params,
        }
        if self.config.keep_clean:
            row["clean_path"] = self.write_image(aligned, f"{CLEAN_DIR}/{item.key}")["path"]
        return [row]

    def provenance(self) -> dict[str, Any]:
        return {
            "chain": "align(size) -> downsample(pp_scale, pp_resample_down) -> gaussian noise(pp_noise_sigma, "
                     "pp_noise_seed) -> gaussian blur(pp_blur_sigma) -> JPEG(pp_jpeg_quality) -> upsample(pp_resample_up)",
            "duplicates_skipped": self._duplicates,
            "clean_manifest": CLEAN_MANIFEST if self.config.keep_clean else None,
        }

    def finalize(self, rows: list[dict[str, Any]], out_dir: Path) -> dict[str, Any]:
        """``clean_manifest.csv``: the unprocessed copies, same rows and order as ``manifest.csv``."""
        from aligncore.supervision import write_manifest

        if self.config.keep_clean:
            clean = []
            for r in rows:
                c = {k: v for k, v in r.items() if not k.startswith("pp_") and k != "clean_path"}
                c["path"], c["processed_path"] = r["clean_path"], r["path"]
                clean.append(c)
            write_manifest(out_dir / CLEAN_MANIFEST, clean)
        return {}


@hookimpl
def register_supervision_builders(register):
    register(SemanticSetBuilder)
