"""Image encoding with one set of encoder settings, so "JPEG at quality q" means one thing everywhere.

``jpeg_roundtrip`` is the JPEG step of the robustness perturbations (``jpeg:75``), of the
pixel trainers' format-aligned augmentation and of the semantic set's degradation chain;
``save_image`` is how every supervision builder writes both classes of a training set.
JPEG: 4:2:0 chroma subsampling (as cameras and sites do), no optimised Huffman tables.
PNG: zlib level 6. Pillow's defaults equal these today; spelling them out keeps outputs
byte-stable if a default changes.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

FORMATS = {"png": "png", "jpeg": "jpg"}  # format → file extension
JPEG_SUBSAMPLING = "4:2:0"
PNG_COMPRESS_LEVEL = 6

ImageOrArray = TypeVar("ImageOrArray")


def encoder_settings(fmt: str, quality: int | None = None) -> dict[str, Any]:
    """Pillow ``save`` keyword arguments for ``fmt`` ('png' or 'jpeg')."""
    if fmt == "png":
        return {"format": "PNG", "compress_level": PNG_COMPRESS_LEVEL}
    if fmt == "jpeg":
        if quality is None or not 1 <= int(quality) <= 100:
            raise ValueError(f"JPEG quality must lie in 1..100, not {quality!r}")
        return {"format": "JPEG", "quality": int(quality), "subsampling": JPEG_SUBSAMPLING, "optimize": False}
    raise ValueError(f"unknown image format {fmt!r} (known: {', '.join(FORMATS)})")


def _as_pil(img):
    from PIL import Image

    if isinstance(img, np.ndarray):
        return Image.fromarray(img, "RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def encode(img, fmt: str, quality: int | None = None) -> bytes:
    """PIL image or uint8 (H, W, 3) array → the encoded file's bytes."""
    buf = io.BytesIO()
    _as_pil(img).save(buf, **encoder_settings(fmt, quality))
    return buf.getvalue()


def jpeg_roundtrip(img: ImageOrArray, quality: int) -> ImageOrArray:
    """Encode as JPEG at ``quality`` and decode again; gives back what it was given (PIL RGB image or uint8 array)."""
    from PIL import Image

    decoded = Image.open(io.BytesIO(encode(img, "jpeg", quality)))
    decoded.load()
    if decoded.mode != "RGB":  # a JPEG written from RGB decodes as RGB; anything else is a Pillow change
        decoded = decoded.convert("RGB")
    return np.asarray(decoded) if isinstance(img, np.ndarray) else decoded  # type: ignore[return-value]


def save_image(img, path: str | Path, fmt: str, quality: int | None = None) -> Path:
    """Write ``img`` to ``path`` with the fixed encoder settings, atomically (a kill never leaves a torn file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(encode(img, fmt, quality))
    os.replace(tmp, path)
    return path
