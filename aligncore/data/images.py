"""Robust image loading: any file from the open internet → an RGB PIL image, or a clear error.

- EXIF orientation is applied.
- Every mode becomes RGB: palette (+ transparency) and LA/RGBA are composited on white,
  CMYK/YCbCr/LAB converted, 16-bit and float images rescaled (not clipped) to 8 bits.
- Animated images (GIF, APNG, WebP) give their first frame.
- Decompression bombs (more pixels than ``MAX_PIXELS``) are refused before decoding.
- Truncated, corrupt, empty and non-image files raise :class:`ImageLoadError` with a reason.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

#: images above this many pixels are refused (about 16k x 11k); override with ALIGNCORE_MAX_PIXELS
MAX_PIXELS = int(os.environ.get("ALIGNCORE_MAX_PIXELS", 178_956_970))

ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageLoadError(Exception):
    def __init__(self, path: str, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


def load_image(source: str | Path | bytes | Image.Image, max_pixels: int | None = None) -> Image.Image:
    """Open ``source`` (path, bytes or PIL image) and return an RGB image, or raise ImageLoadError."""
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    name = "<image>" if isinstance(source, (bytes, Image.Image)) else str(source)
    if isinstance(source, Image.Image):
        return to_rgb(source)
    try:
        if isinstance(source, bytes):
            data = source
        else:
            with open(source, "rb") as f:
                data = f.read()
    except OSError as exc:
        raise ImageLoadError(name, f"cannot read file ({exc.strerror or exc})") from None
    if not data:
        raise ImageLoadError(name, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            old = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None  # we check the size ourselves, before decoding
            try:
                img = Image.open(io.BytesIO(data))
            finally:
                Image.MAX_IMAGE_PIXELS = old
            w, h = img.size
            if w <= 0 or h <= 0:
                raise ImageLoadError(name, f"invalid size {w}x{h}")
            if w * h > limit:
                raise ImageLoadError(name, f"refused: {w}x{h} = {w * h} pixels exceeds the limit of {limit} (decompression bomb?)")
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return to_rgb(img)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(name, "not a recognised image format") from None
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(name, f"refused as a decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError, TypeError, IndexError, KeyError, ZeroDivisionError,
            MemoryError, OverflowError, struct_error()) as exc:
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason.lower():
            reason = f"truncated or incomplete file ({reason})"
        raise ImageLoadError(name, f"corrupt image: {reason}") from None


def struct_error():
    import struct

    return struct.error


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB, scaling high bit depths instead of clipping them."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            arr = arr / 257.0
        elif mode == "I":
            hi = arr.max() if arr.size else 0
            arr = arr / 257.0 if hi > 255 else arr
        else:  # float images: assume [0, 1] when they fit, else min-max
            lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 1.0)
            arr = arr * 255.0 if lo >= 0 and hi <= 1 else (arr - lo) / max(hi - lo, 1e-12) * 255.0
        arr = np.nan_to_num(arr, nan=0.0, posinf=255.0, neginf=0.0)
        gray = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
        return gray.convert("RGB")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
        if mode == "RGB":
            return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "1":
        return img.convert("L").convert("RGB")
    return img.convert("RGB")
