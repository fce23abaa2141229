"""Image fuzzing helpers: seed images, byte-level mutations, and the one rule every input obeys.

The rule (:func:`check_input`): :func:`aligncore.data.load_image` either returns an RGB
image or raises :class:`ImageLoadError` with a reason, within a time bound. Used by
``tests/test_fuzz_images.py`` and ``benchmarks/fuzz_images.py`` (a test helper, not part of the package:
the installed package ships no fuzzer).
"""

from __future__ import annotations

import io
import struct
import time
import zlib
from dataclasses import dataclass

import numpy as np

from aligncore.data.images import ImageLoadError, load_image

#: per-input decode deadline in fuzz runs (seconds); an input that needs longer is refused by it
MAX_SECONDS = 2.0
#: slack on top of the deadline before an input counts as a hang (the deadline fires between
#: decoder chunks; numpy conversions of a large image run to completion first)
SLACK_SECONDS = 1.0
#: fuzz runs cap images at 16 Mpx: a mutated header may declare up to the default limit
#: (179 Mpx), which is a legitimately large image that takes seconds, not a parser bug
FUZZ_MAX_PIXELS = 16_000_000

MAGIC = {
    "png": b"\x89PNG\r\n\x1a\n", "jpeg": b"\xff\xd8\xff\xe0", "gif": b"GIF89a", "bmp": b"BM",
    "tiff": b"II*\x00", "webp": b"RIFF\x00\x00\x00\x00WEBPVP8 ", "ico": b"\x00\x00\x01\x00",
}


class FuzzFailure(AssertionError):
    """The loader broke its contract on one input (crash, slow, or not RGB)."""


@dataclass
class Outcome:
    ok: bool  # loaded as RGB
    reason: str | None
    seconds: float


def check_input(data: bytes, what: str = "input", max_seconds: float = MAX_SECONDS,
                max_pixels: int = FUZZ_MAX_PIXELS) -> Outcome:
    """Load ``data``; raise :class:`FuzzFailure` unless it is RGB or a reasoned ImageLoadError, in time."""
    t0 = time.perf_counter()
    try:
        img = load_image(data, max_pixels=max_pixels, timeout_s=max_seconds)
        ok, reason = True, None
    except ImageLoadError as exc:
        ok, reason = False, exc.reason
        if not reason:
            raise FuzzFailure(f"{what}: ImageLoadError without a reason") from None
    except BaseException as exc:  # anything else is a crash of the loader's contract
        raise FuzzFailure(f"{what}: {type(exc).__name__} escaped load_image: {exc}") from exc
    dt = time.perf_counter() - t0
    if ok and (img.mode != "RGB" or img.size[0] < 1 or img.size[1] < 1):
        raise FuzzFailure(f"{what}: returned mode {img.mode} size {img.size}")
    if dt > max_seconds + SLACK_SECONDS:
        raise FuzzFailure(f"{what}: took {dt:.2f} s (deadline {max_seconds} s + {SLACK_SECONDS} s); reason={reason}")
    return Outcome(ok, reason, dt)


def seed_images(seed: int = 0) -> dict[str, bytes]:
    """Valid small encodings of one photo-like image in every format and several odd modes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = np.clip(np.linspace(0, 200, 40)[None, :, None] + rng.normal(40, 25, size=(30, 40, 3)), 0, 255).astype(np.uint8)
    rgb = Image.fromarray(arr)

    def enc(img, fmt, **kw) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        return buf.getvalue()

    frames = [rgb.convert("P"), Image.fromarray(255 - arr).convert("P")]
    return {
        "png": enc(rgb, "PNG"),
        "png_rgba": enc(rgb.convert("RGBA"), "PNG"),
        "png_palette": enc(rgb.convert("P"), "PNG", transparency=3),
        "png_16bit": enc(Image.fromarray((arr[..., 0].astype(np.uint16) * 257)), "PNG"),
        "png_interlaced": _interlaced_png(arr),
        "jpeg": enc(rgb, "JPEG", quality=85),
        "jpeg_progressive": enc(rgb, "JPEG", quality=85, progressive=True),
        "jpeg_cmyk": enc(rgb.convert("CMYK"), "JPEG"),
        "gif": enc(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "webp": enc(rgb, "WEBP", quality=80),
        "webp_lossless": enc(rgb.convert("RGBA"), "WEBP", lossless=True),
        "tiff": enc(rgb, "TIFF"),
        "tiff_lzw": enc(rgb, "TIFF", compression="tiff_lzw"),
        "tiff_float": enc(Image.fromarray(arr[..., 0].astype(np.float32) / 255.0, mode="F"), "TIFF"),
        "bmp": enc(rgb, "BMP"),
        "ppm": enc(rgb, "PPM"),
        "ico": enc(rgb, "ICO"),
    }


def _interlaced_png(arr: np.ndarray) -> bytes:
    """PIL cannot write Adam7 interlacing; build a small interlaced PNG by hand."""
    h, w, _ = arr.shape
    # Adam7 passes: (x0, y0, dx, dy)
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    raw = bytearray()
    for x0, y0, dx, dy in passes:
        xs, ys = range(x0, w, dx), range(y0, h, dy)
        if not len(xs) or not len(ys):
            continue
        for y in ys:
            raw.append(0)
            raw.extend(arr[y, list(xs)].tobytes())
    return png_bytes(w, h, zlib.compress(bytes(raw)), interlace=1)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, idat: bytes, extra: tuple[bytes, ...] = (), bit_depth: int = 8,
              color: int = 2, interlace: int = 0) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color, 0, 0, interlace)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + b"".join(extra) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


MUTATIONS = ("truncate", "bitflip", "bitflips", "byteset", "zero_run", "duplicate", "splice_magic", "png_dims", "insert_chunk")


def mutate(data: bytes, rng: np.random.Generator, op: str | None = None) -> tuple[str, bytes]:
    """One random, reproducible corruption of ``data``; returns (mutation name, bytes)."""
    op = op or MUTATIONS[int(rng.integers(len(MUTATIONS)))]
    b = bytearray(data)
    n = len(b)
    if n == 0:
        return op, bytes(rng.integers(0, 256, size=16, dtype=np.uint8))
    if op == "truncate":
        return op, bytes(b[: int(rng.integers(0, n))])
    if op == "bitflip":
        i = int(rng.integers(n))
        b[i] ^= 1 << int(rng.integers(8))
    elif op == "bitflips":
        for i in rng.integers(0, n, size=int(rng.integers(2, 40))):
            b[int(i)] ^= 1 << int(rng.integers(8))
    elif op == "byteset":
        i = int(rng.integers(n))
        b[i] = int(rng.choice([0, 0xFF, 0x7F, 0x80, int(rng.integers(256))]))
    elif op == "zero_run":
        i = int(rng.integers(n))
        k = int(rng.integers(1, 64))
        b[i : i + k] = bytes(len(b[i : i + k]))
    elif op == "duplicate":
        i, j = sorted(int(x) for x in rng.integers(0, n, size=2))
        b[j:j] = b[i : min(j, i + 4096)]
    elif op == "splice_magic":
        magic = list(MAGIC.values())[int(rng.integers(len(MAGIC)))]
        b[: len(magic)] = magic
    elif op == "png_dims" and data.startswith(MAGIC["png"]) and n >= 33:
        w = int(rng.choice([0, 1, 65_535, 1 << 20, 1 << 31, int(rng.integers(1, 1 << 16))]))
        h = int(rng.choice([0, 1, 65_535, 1 << 20, 1 << 31, int(rng.integers(1, 1 << 16))]))
        struct.pack_into(">II", b, 16, w & 0xFFFFFFFF, h & 0xFFFFFFFF)
        struct.pack_into(">I", b, 29, zlib.crc32(bytes(b[12:29])) & 0xFFFFFFFF)  # keep the CRC valid
    elif op == "insert_chunk" and data.startswith(MAGIC["png"]) and n >= 33:
        kind = [b"zTXt", b"iCCP", b"tEXt", b"iTXt", b"eXIf", b"PLTE", b"tRNS", b"acTL", b"fcTL"][int(rng.integers(9))]
        size = int(rng.choice([0, 1, 100, 1 << 16, 2 << 20]))
        payload = b"k\0\0" + zlib.compress(bytes(size)) if kind in (b"zTXt", b"iCCP") else bytes(rng.integers(0, 256, size=min(size, 4096), dtype=np.uint8))
        b[33:33] = png_chunk(kind, payload)
    else:  # the op does not apply to this format: fall back to a bit flip
        i = int(rng.integers(n))
        b[i] ^= 1 << int(rng.integers(8))
        op = "bitflip"
    return op, bytes(b)
