"""Robust image loading: any file from the open internet → an RGB PIL image, or a clear error.

- EXIF orientation is applied.
- No pixel copy that is not needed: an RGB file without an orientation tag is returned as decoded.
- Every mode becomes RGB: palette (+ transparency) and LA/RGBA are composited on white,
  CMYK/YCbCr/LAB converted, 16-bit and float images rescaled (not clipped) to 8 bits.
- Animated images (GIF, APNG, WebP) give their first frame.
- Decompression bombs (more pixels than ``MAX_PIXELS``) are refused before decoding, files
  larger than ``MAX_FILE_BYTES`` before reading, and PNG text/ICC chunks that inflate beyond
  ``MAX_TEXT_CHUNK`` bytes (zip bombs hidden in metadata) while parsing.
- Decoding has a wall-clock deadline (``DECODE_TIMEOUT_S``) where a timer can be used
  (the main thread of a process, which includes data loader workers).
- Truncated, corrupt, empty and non-image files raise :class:`ImageLoadError` with a reason;
  no other exception escapes :func:`load_image` (a fuzz test holds it to that).
"""

from __future__ import annotations

import io
import os
import signal
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, PngImagePlugin, UnidentifiedImageError

#: images above this many pixels are refused (about 16k x 11k); override with ALIGNCORE_MAX_PIXELS
MAX_PIXELS = int(os.environ.get("ALIGNCORE_MAX_PIXELS", 178_956_970))
#: files above this many bytes are refused before reading; override with ALIGNCORE_MAX_FILE_BYTES
MAX_FILE_BYTES = int(os.environ.get("ALIGNCORE_MAX_FILE_BYTES", 512 * 1024 * 1024))
#: seconds one decode may take (0 disables the deadline); override with ALIGNCORE_DECODE_TIMEOUT_S
DECODE_TIMEOUT_S = float(os.environ.get("ALIGNCORE_DECODE_TIMEOUT_S", 60))
#: a compressed PNG text (zTXt/iTXt) or ICC profile (iCCP) chunk may inflate to at most this
MAX_TEXT_CHUNK = 1 << 20
#: all PNG text chunks of one image together may hold at most this
MAX_TEXT_MEMORY = 8 << 20

ImageFile.LOAD_TRUNCATED_IMAGES = False
# PIL reads these module globals while parsing chunks; never loosen a stricter value set by the host
PngImagePlugin.MAX_TEXT_CHUNK = min(PngImagePlugin.MAX_TEXT_CHUNK, MAX_TEXT_CHUNK)
PngImagePlugin.MAX_TEXT_MEMORY = min(PngImagePlugin.MAX_TEXT_MEMORY, MAX_TEXT_MEMORY)


class ImageLoadError(Exception):
    def __init__(self, path: str, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


class _DecodeTimeout(Exception):
    pass


@contextmanager
def decode_deadline(seconds: float):
    """Raise :class:`_DecodeTimeout` in this block after ``seconds`` (SIGALRM timer).

    Only armed in a process's main thread and when no other interval timer is running
    (so it never steals a host's alarm); elsewhere the pixel and byte limits bound the work.
    PIL decodes in chunks and returns to Python between them, so the signal lands promptly.
    """
    usable = (
        seconds > 0
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    )
    if not usable:
        yield
        return

    def _alarm(signum, frame):
        raise _DecodeTimeout()

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def load_image(source: str | Path | bytes | Image.Image, max_pixels: int | None = None,
               timeout_s: float | None = None) -> Image.Image:
    """Open ``source`` (path, bytes or PIL image) and return an RGB image, or raise ImageLoadError."""
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    deadline = DECODE_TIMEOUT_S if timeout_s is None else timeout_s
    name = "<image>" if isinstance(source, (bytes, Image.Image)) else str(source)
    if isinstance(source, Image.Image):
        return _checked_pil(source, limit, deadline)
    if isinstance(source, bytes):
        data = source
    else:
        from ..files import FileRefused, open_regular, read_capped

        try:  # type and size before a byte is read: a FIFO, a device or a 16 GB sparse file is never read
            with open_regular(source, MAX_FILE_BYTES, limit_hint="ALIGNCORE_MAX_FILE_BYTES") as f:
                data = read_capped(f, MAX_FILE_BYTES)
        except FileRefused as exc:
            raise ImageLoadError(name, exc.reason) from None
        except OSError as exc:
            raise ImageLoadError(name, f"cannot read file ({exc.strerror or exc})") from None
    if not data:
        raise ImageLoadError(name, "empty file (0 bytes)")
    if len(data) > MAX_FILE_BYTES:
        raise ImageLoadError(name, f"refused: more than {MAX_FILE_BYTES} bytes (ALIGNCORE_MAX_FILE_BYTES)")
    try:
        with warnings.catch_warnings(), decode_deadline(deadline):
            warnings.simplefilter("ignore")  # PIL warns on every odd tag of a hostile file; we report one reason
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
            # Image.open leaves multi-frame files on their first frame; asking for n_frames
            # would walk (and partly decode) every frame of a hostile GIF or TIFF
            img.load()
            w, h = img.size  # a few formats (ICO, JPEG 2000) settle the size only when loading
            if w <= 0 or h <= 0 or w * h > limit:
                raise ImageLoadError(name, f"refused: decoded size {w}x{h} is empty or exceeds {limit} pixels")
            ImageOps.exif_transpose(img, in_place=True)  # copies the pixels only when there is a rotation to apply
            return to_rgb(img)
    except ImageLoadError:
        raise
    except _DecodeTimeout:
        raise ImageLoadError(name, f"refused: decoding took longer than {deadline:g} s (ALIGNCORE_DECODE_TIMEOUT_S)") from None
    except UnidentifiedImageError:
        raise ImageLoadError(name, "not a recognised image format") from None
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(name, f"refused as a decompression bomb: {exc}") from None
    except MemoryError:
        raise ImageLoadError(name, "refused: not enough memory to decode") from None
    except Exception as exc:  # PIL raises many types on hostile input; each is a bad file, not a crash
        reason = str(exc) or type(exc).__name__
        if "MAX_TEXT" in reason:
            raise ImageLoadError(name, f"refused: a PNG text/ICC chunk inflates beyond the limit ({reason})") from None
        if "truncated" in reason.lower():
            reason = f"truncated or incomplete file ({reason})"
        raise ImageLoadError(name, f"corrupt image: {type(exc).__name__}: {reason}") from None


def _checked_pil(img: Image.Image, limit: int, deadline: float) -> Image.Image:
    """A PIL image given by a caller (perhaps opened lazily, not decoded yet): the same pixel limit and
    deadline as a file, before its pixels are decoded."""
    name = "<image>"
    w, h = img.size
    if w <= 0 or h <= 0 or w * h > limit:
        raise ImageLoadError(name, f"refused: {w}x{h} = {w * h} pixels is empty or exceeds the limit of {limit}")
    try:
        with warnings.catch_warnings(), decode_deadline(deadline):
            warnings.simplefilter("ignore")
            img.load()
            return to_rgb(img)
    except _DecodeTimeout:
        raise ImageLoadError(name, f"refused: decoding took longer than {deadline:g} s (ALIGNCORE_DECODE_TIMEOUT_S)") from None
    except MemoryError:
        raise ImageLoadError(name, "refused: not enough memory to decode") from None
    except Exception as exc:
        raise ImageLoadError(name, f"corrupt image: {type(exc).__name__}: {exc}") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB, scaling high bit depths instead of clipping them."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # float32 and in-place steps: a 16k x 11k image must not need several float64 copies
        arr = np.asarray(img)
        if mode.startswith("I;16"):
            arr = arr.astype(np.float32)
            arr /= 257.0
        elif mode == "I":
            hi = int(arr.max()) if arr.size else 0
            arr = arr.astype(np.float32)
            if hi > 255:
                arr /= 257.0
        else:  # float images: assume [0, 1] when they fit, else min-max over the finite values
            arr = np.array(arr, dtype=np.float32)
            finite = np.isfinite(arr)
            all_finite = bool(finite.all())
            vals = arr if all_finite else arr[finite]
            lo, hi = (float(vals.min()), float(vals.max())) if vals.size else (0.0, 1.0)
            del vals, finite
            with np.errstate(all="ignore"):
                if lo >= 0 and hi <= 1:
                    arr *= 255.0
                else:
                    arr -= lo
                    arr *= 255.0 / max(hi - lo, 1e-12)
            if not all_finite:
                np.nan_to_num(arr, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
        np.rint(arr, out=arr)
        np.clip(arr, 0, 255, out=arr)
        gray = Image.fromarray(arr.astype(np.uint8), mode="L")
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


def rgb_array(image) -> np.ndarray:
    """A PIL image (any mode) or an H×W×3 uint8 array → H×W×3 uint8 array, converting only when needed.

    Images from :func:`load_image` are RGB already, so this is one copy, not two.
    """
    if isinstance(image, np.ndarray):
        return np.asarray(image, dtype=np.uint8)
    if image.mode != "RGB":
        image = to_rgb(image)
    return np.asarray(image, dtype=np.uint8)
