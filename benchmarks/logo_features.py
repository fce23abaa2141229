"""Pixels, re-encoding conditions and cached features of the generalisation protocol.

Every image goes through the same steps, whatever its class:

1. **Decode to pixels** (:func:`decode_pixels`): PIL decodes the pixel data and nothing else is kept
   (EXIF, its orientation, ICC profiles, PNG text chunks and WebP metadata are never read), then the
   centre ≤512×512 window (offsets and sides multiples of 16) is cached as ``.npy``.
2. **A condition** (:func:`condition_image`) turns that window into the ≤256×256 analysis region:
   ``asis`` (the centre window as decoded), ``jpeg90`` (that window re-encoded as JPEG q90, 4:2:0),
   ``social`` (the 512 window resized ×0.5, bicubic, then JPEG q75) and, for training only, ``aug``
   (a random degradation chain seeded by the image: resize ×0.5–0.95, blur, noise, JPEG q60–95).
3. **Features** (:data:`FEATURE_SETS`) of the region, cached per (feature set, source, condition)
   in one ``.npz`` each, keyed by the image's sha256, so reruns and new experts are cheap.

``source`` is ``orig`` (the image) or ``recon`` (a real photo's analysis region reconstructed by the
tiny autoencoder: the pixel-set fakes, for training only).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

PIXEL_VERSION = "crop512-v1"
WINDOW, REGION, ALIGN = 512, 256, 16
CONDITIONS = ("asis", "jpeg90", "social")
TRAIN_ONLY_CONDITIONS = ("aug",)
AE_SCALES = (1, 2, 4)
AE_CROP = 128


# --------------------------------------------------------------------------- pixels


def decode_pixels(path: str | Path) -> np.ndarray:
    """The file's pixels as uint8 RGB (H, W, 3); no metadata is read or applied."""
    from PIL import Image

    from aligncore.data.images import to_rgb

    with Image.open(path) as im:
        im.load()
        arr = np.asarray(to_rgb(im), dtype=np.uint8)
    return arr


def centre_window(arr: np.ndarray, size: int, align: int = ALIGN) -> np.ndarray:
    """The centre ≤size×size window, sides and offsets multiples of ``align`` (no resampling)."""
    h, w = arr.shape[:2]
    ch, cw = min(h, size) // align * align, min(w, size) // align * align
    if ch < align or cw < align:
        raise ValueError(f"image of {w}x{h} pixels is smaller than {align} pixels on a side")
    top, left = (h - ch) // 2 // align * align, (w - cw) // 2 // align * align
    return np.ascontiguousarray(arr[top : top + ch, left : left + cw])


def jpeg(arr: np.ndarray, quality: int) -> np.ndarray:
    from aligncore.data.crops import jpeg_roundtrip

    return jpeg_roundtrip(arr, quality)


def resize(arr: np.ndarray, factor: float, resample: int | None = None) -> np.ndarray:
    from PIL import Image

    h, w = arr.shape[:2]
    nh, nw = max(ALIGN, int(round(h * factor))), max(ALIGN, int(round(w * factor)))
    res = Image.BICUBIC if resample is None else resample
    return np.asarray(Image.fromarray(arr).resize((nw, nh), res), dtype=np.uint8)


def aug_chain(arr: np.ndarray, seed_key: str, seed: int = 0) -> np.ndarray:
    """A random degradation chain (the same distribution for every image, its draw seeded by the image)."""
    import hashlib

    from PIL import Image, ImageFilter

    rng = np.random.default_rng([seed, int(hashlib.sha256(seed_key.encode()).hexdigest()[:15], 16)])
    out = arr
    if rng.random() < 0.5:
        f = float(rng.uniform(0.5, 0.95))
        out = resize(out, f, [Image.BILINEAR, Image.BICUBIC, Image.LANCZOS][int(rng.integers(3))])
    if rng.random() < 0.2:
        out = np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0)))))
    if rng.random() < 0.2:
        noise = rng.normal(0, float(rng.uniform(0.5, 3.0)), out.shape)
        out = np.clip(np.rint(out.astype(np.float32) + noise), 0, 255).astype(np.uint8)
    if rng.random() < 0.8:
        out = jpeg(out, int(rng.integers(60, 96)))
    return out


def condition_image(window: np.ndarray, condition: str, key: str = "", seed: int = 0) -> np.ndarray:
    """The ≤256 analysis region of a cached ≤512 window under ``condition`` (same steps for both classes)."""
    if condition == "asis":
        return centre_window(window, REGION)
    if condition == "jpeg90":
        return jpeg(centre_window(window, REGION), 90)
    if condition == "social":
        return centre_window(jpeg(resize(window, 0.5), 75), REGION)
    if condition == "aug":
        return centre_window(aug_chain(window, key, seed), REGION)
    raise ValueError(f"unknown condition {condition!r} (known: {', '.join(CONDITIONS + TRAIN_ONLY_CONDITIONS)})")


THUMB = 128


def thumbnail(full: np.ndarray, condition: str, key: str = "", seed: int = 0, size: int = THUMB) -> np.ndarray:
    """The canonical-size view of the whole image under ``condition`` (applied to the full image: JPEG
    q90; ×0.5 + JPEG q75; or the aug chain): resized so its shorter side is ``size`` and centre-cropped
    (the aerecon branch's ``canonical_view``). Resolution-independent: it sees composition, colour and
    the look of the image at one scale, whatever size the file had."""
    from aligncore_plugins.aerecon_model import canonical_view

    if condition == "asis":
        img = full
    elif condition == "jpeg90":
        img = jpeg(full, 90)
    elif condition == "social":
        img = jpeg(resize(full, 0.5), 75)
    elif condition == "aug":
        img = aug_chain(full, key, seed)
    else:
        raise ValueError(f"unknown condition {condition!r}")
    return canonical_view(img, size)


# --------------------------------------------------------------------------- feature sets


def spectrum_vec(region: np.ndarray, ctx: "Context") -> np.ndarray:
    from aligncore_plugins.spectrum import spectrum_features

    return spectrum_features(region, 64, 64, 8)  # the spectrum branch's defaults (tile, max_tiles, align)


def ae_vec(region: np.ndarray, ctx: "Context") -> np.ndarray:
    from aligncore_plugins.aerecon_model import image_features

    return image_features(ctx.autoencoder(), region, AE_SCALES, AE_CROP, "center")


def ae_texture_vec(region: np.ndarray, ctx: "Context") -> np.ndarray:
    from aligncore_plugins.aerecon_model import image_features

    return image_features(ctx.autoencoder(), region, AE_SCALES, AE_CROP, "texture")


def thumb_enc_vec(region: np.ndarray, ctx: "Context") -> np.ndarray:
    """taef2 encoder statistics (4 levels + latent, means and log-stds) of the canonical-size view at
    full and half size (no reconstruction)."""
    from aligncore_plugins.aerecon_model import canonical_features

    return canonical_features(ctx.autoencoder(), region)


def phase_vec(region: np.ndarray, ctx: "Context") -> np.ndarray:
    """Multi-scale neighbouring-pixel statistics (NPR as fixed features): the mean absolute horizontal
    and vertical difference at each phase modulo 2, 4 and 8 relative to its overall mean (up-sampling
    and block grids show as a periodic profile), the NPR residual energy x − nearest_up(x[::f, ::f])
    for f = 2, 4 relative to the high-pass energy, and the chroma/luma high-pass energy ratio."""
    g = region.astype(np.float32)
    y = g @ np.array([0.299, 0.587, 0.114], np.float32)
    cb = g @ np.array([-0.1687, -0.3313, 0.5], np.float32)
    cr = g @ np.array([0.5, -0.4187, -0.0813], np.float32)
    eps = 1e-6
    out = []
    dx, dy = np.abs(np.diff(y, axis=1)), np.abs(np.diff(y, axis=0))
    for d, axis in ((dx, 1), (dy, 0)):
        m = d.mean() + eps
        for p in (2, 4, 8):
            n = d.shape[axis] // p * p
            dd = d[:, :n] if axis == 1 else d[:n]
            prof = dd.reshape(dd.shape[0], -1, p).mean(axis=(0, 1)) if axis == 1 else dd.reshape(-1, p, dd.shape[1]).mean(axis=(0, 2))
            out += list(np.log(prof / m + eps))

    def hp_energy(a: np.ndarray) -> float:
        lap = a[1:-1, 1:-1] - 0.25 * (a[:-2, 1:-1] + a[2:, 1:-1] + a[1:-1, :-2] + a[1:-1, 2:])
        return float(np.mean(lap**2)) + eps

    tex = hp_energy(y)
    for f in (2, 4):
        h, w = y.shape[0] // f * f, y.shape[1] // f * f
        yy = y[:h, :w]
        up = np.repeat(np.repeat(yy[::f, ::f], f, axis=0), f, axis=1)
        out.append(np.log(float(np.mean((yy - up) ** 2)) + eps) - np.log(tex))
    out.append(np.log(hp_energy(cb)) - np.log(tex))
    out.append(np.log(hp_energy(cr)) - np.log(tex))
    out.append(np.log(tex))
    return np.asarray(out, np.float32)


def imgstats_vec(region: np.ndarray, ctx: "Context") -> np.ndarray:
    """Global colour and sharpness statistics (no learned features): RGB means/stds, saturation and
    value quantiles, a saturation-weighted hue histogram, clipped-pixel shares, colourfulness and
    gradient-magnitude quantiles at three scales."""
    from PIL import Image

    g = region.astype(np.float32) / 255.0
    hsv = np.asarray(Image.fromarray(region).convert("HSV"), np.float32) / 255.0
    hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    q = (0.01, 0.05, 0.5, 0.95, 0.99)
    out = list(g.mean(axis=(0, 1))) + list(g.std(axis=(0, 1)))
    out += list(np.quantile(sat, q)) + [float(sat.mean()), float(sat.std())]
    out += list(np.quantile(val, q))
    hist, _ = np.histogram(hue, bins=12, range=(0, 1), weights=sat)
    out += list(hist / (sat.sum() + 1e-6))
    out += [float((region == 0).all(axis=2).mean()), float((region == 255).all(axis=2).mean())]
    rg, yb = g[..., 0] - g[..., 1], 0.5 * (g[..., 0] + g[..., 1]) - g[..., 2]
    out.append(float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())))
    y = g.mean(axis=2)
    for s in (1, 2, 4):
        h, w = y.shape[0] // s * s, y.shape[1] // s * s
        ys = y[:h, :w].reshape(h // s, s, w // s, s).mean(axis=(1, 3))
        gm = np.hypot(np.diff(ys, axis=1)[:-1, :], np.diff(ys, axis=0)[:, :-1])
        out += list(np.log(np.quantile(gm, (0.25, 0.5, 0.75, 0.9, 0.99)) + 1e-4))
    return np.asarray(out, np.float32)


#: feature set → (version, function). Bump the version when a function changes its output.
FEATURE_SETS: dict[str, tuple[str, Callable]] = {
    "spectrum": ("v1", spectrum_vec),
    "ae": ("v2", ae_vec),
    "ae-texture": ("v2", ae_texture_vec),
    "phase": ("v1", phase_vec),
    "imgstats": ("v1", imgstats_vec),
    "thumb-enc": ("v1", thumb_enc_vec),
    "thumb-stats": ("v1", imgstats_vec),
}

#: feature sets computed on the canonical-size view (source ``thumb``) instead of the analysis region
THUMB_SETS = ("thumb-enc", "thumb-stats")


# --------------------------------------------------------------------------- context and caches


class Context:
    """Per-process state of a worker: paths, and the autoencoder loaded on first use."""

    def __init__(self, data: Path, weights: Path, work: Path, seed: int = 0):
        self.data, self.weights, self.work, self.seed = Path(data), Path(weights), Path(work), seed
        self._ae = None
        self._full: tuple[str, np.ndarray] | None = None

    def autoencoder(self):
        if self._ae is None:
            from aligncore_plugins.tiny_ae_model import load_tiny_autoencoder

            import torch

            ae = load_tiny_autoencoder(self.weights / "taef2_encoder.pth", self.weights / "taef2_decoder.pth")
            self._ae = ae.to(memory_format=torch.channels_last)
        return self._ae

    def pixel_path(self, sha: str) -> Path:
        return self.work / "pixels" / PIXEL_VERSION / sha[:2] / f"{sha}.npy"

    def recon_path(self, sha: str) -> Path:
        return self.work / "recon" / f"taef2-{PIXEL_VERSION}" / sha[:2] / f"{sha}.npy"

    def window(self, sha: str, file: str) -> np.ndarray:
        p = self.pixel_path(sha)
        if p.exists():
            return np.load(p)
        arr = centre_window(decode_pixels(self.data / file), WINDOW)
        _save_npy(p, arr)
        return arr

    def recon(self, sha: str, file: str) -> np.ndarray:
        """The asis analysis region reconstructed through the tiny autoencoder (uint8, same size)."""
        p = self.recon_path(sha)
        if p.exists():
            return np.load(p)
        import torch

        region = condition_image(self.window(sha, file), "asis")
        x = torch.from_numpy(region).permute(2, 0, 1)[None].float().div(255)
        with torch.inference_mode():
            y = self.autoencoder().reconstruct(x)
        arr = y[0].permute(1, 2, 0).mul(255).round().clamp(0, 255).to(torch.uint8).numpy()
        _save_npy(p, arr)
        return arr

    def thumb_path(self, sha: str, condition: str) -> Path:
        return self.work / "thumbs" / f"thumb{THUMB}-v1" / condition / sha[:2] / f"{sha}.npy"

    def thumb(self, sha: str, file: str, condition: str) -> np.ndarray:
        p = self.thumb_path(sha, condition)
        if p.exists():
            return np.load(p)
        if self._full is None or self._full[0] != sha:  # one decode serves every condition of an image
            self._full = (sha, decode_pixels(self.data / file))
        arr = thumbnail(self._full[1], condition, sha, self.seed)
        _save_npy(p, arr)
        return arr

    def region(self, sha: str, file: str, source: str, condition: str) -> np.ndarray:
        if source == "thumb":
            return self.thumb(sha, file, condition)
        if source == "orig":
            return condition_image(self.window(sha, file), condition, sha, self.seed)
        if source == "recon":
            rec = self.recon(sha, file)
            if condition == "asis":
                return rec
            if condition == "aug":
                return centre_window(aug_chain(rec, "recon:" + sha, self.seed), REGION)
            raise ValueError(f"reconstructions are for training only: no condition {condition!r}")
        raise ValueError(f"unknown source {source!r}")


def _save_npy(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, arr)
    os.replace(tmp, path)


class FeatureStore:
    """One ``.npz`` per (feature set, source, condition): sha256 → vector; saved atomically."""

    def __init__(self, work: Path):
        self.root = Path(work) / "features"
        self._data: dict[tuple[str, str, str], dict[str, np.ndarray]] = {}
        self._dirty: set[tuple[str, str, str]] = set()

    def path(self, fset: str, source: str, cond: str) -> Path:
        version = FEATURE_SETS[fset][0]
        pix = {"orig": PIXEL_VERSION, "thumb": f"thumb{THUMB}-v1"}.get(source, f"taef2-{PIXEL_VERSION}")
        return self.root / f"{fset}-{version}" / f"{pix}-{source}-{cond}.npz"

    def table(self, fset: str, source: str, cond: str) -> dict[str, np.ndarray]:
        key = (fset, source, cond)
        if key not in self._data:
            p = self.path(*key)
            d: dict[str, np.ndarray] = {}
            if p.exists():
                with np.load(p) as z:
                    d = dict(zip(z["keys"].tolist(), z["X"]))
            self._data[key] = d
        return self._data[key]

    def put(self, fset: str, source: str, cond: str, sha: str, vec: np.ndarray) -> None:
        self.table(fset, source, cond)[sha] = vec
        self._dirty.add((fset, source, cond))

    def save(self) -> None:
        for key in sorted(self._dirty):
            d = self._data[key]
            p = self.path(*key)
            p.parent.mkdir(parents=True, exist_ok=True)
            keys = sorted(d)
            tmp = p.with_name(p.name + ".tmp.npz")
            np.savez(tmp, keys=np.array(keys), X=np.stack([d[k] for k in keys]))
            os.replace(tmp, p)
        self._dirty.clear()

    def matrix(self, fset: str, source: str, cond: str, shas: list[str]) -> np.ndarray:
        d = self.table(fset, source, cond)
        return np.stack([d[s] for s in shas])


# --------------------------------------------------------------------------- parallel extraction

_CTX: Context | None = None


def _init_worker(data: str, weights: str, work: str, seed: int, threads: int) -> None:
    global _CTX
    import torch

    torch.set_num_threads(threads)
    _CTX = Context(Path(data), Path(weights), Path(work), seed)


def _work(task: tuple[str, str, list[tuple[str, str, str]]]):
    sha, file, needs = task
    out = []
    t0 = time.perf_counter()
    regions: dict[tuple[str, str], np.ndarray] = {}
    for fset, source, cond in needs:
        if (source, cond) not in regions:
            regions[(source, cond)] = _CTX.region(sha, file, source, cond)
        out.append((fset, source, cond, FEATURE_SETS[fset][1](regions[(source, cond)], _CTX)))
    return sha, out, time.perf_counter() - t0


def extract(store: FeatureStore, jobs_spec: list[tuple[str, str, str, str, str]], ctx_args: dict,
            jobs: int = 2, progress: bool = True, log: Callable[[str], None] | None = None) -> dict:
    """Compute every missing (sha, file, fset, source, cond) feature; returns timing statistics."""
    todo: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
    for sha, file, fset, source, cond in jobs_spec:
        if sha not in store.table(fset, source, cond):
            todo.setdefault((sha, file), []).append((fset, source, cond))
    tasks = [(sha, file, needs) for (sha, file), needs in sorted(todo.items())]
    stats = {"images": len(tasks), "features": sum(len(t[2]) for t in tasks), "seconds": 0.0}
    if not tasks:
        return stats
    t0 = time.monotonic()
    args = (str(ctx_args["data"]), str(ctx_args["weights"]), str(ctx_args["work"]), int(ctx_args.get("seed", 0)), 1)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), desc="features", unit="img", file=__import__("sys").stderr)
    last_save = time.monotonic()

    def consume(results):
        nonlocal last_save
        for sha, out, _dt in results:
            for fset, source, cond, vec in out:
                store.put(fset, source, cond, sha, vec)
            if bar is not None:
                bar.update(1)
            if time.monotonic() - last_save > 60:
                store.save()
                last_save = time.monotonic()

    if jobs <= 1:
        _init_worker(*args)
        consume(map(_work, tasks))
    else:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(jobs, initializer=_init_worker, initargs=args) as pool:
            consume(pool.imap_unordered(_work, tasks, chunksize=4))
    store.save()
    if bar is not None:
        bar.close()
    stats["seconds"] = round(time.monotonic() - t0, 1)
    return stats
