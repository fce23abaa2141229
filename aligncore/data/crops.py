"""Crops at native resolution: the only geometric operation pixel branches allow.

Resizing an image interpolates away the high-frequency traces a decoder leaves, so
pixel experts never resample: they cut windows out of the image as it is, and pad
(never stretch) an image smaller than the window. Positions are snapped to a grid
(``align``, default 8 pixels) so a crop keeps the phase of JPEG blocks and of a
decoder's 8-pixel upsampling pattern; the same grid is used for training and scoring.

Everything here works on ``uint8`` arrays of shape (H, W, 3) (:func:`cut_windows` also on
RGB PIL images) and knows nothing about any particular branch.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from .codec import jpeg_roundtrip  # noqa: F401  (the one JPEG round trip; pixel trainers import it from here)

PadMode = Literal["reflect", "constant"]


def pad_to(arr: np.ndarray, size: int, mode: PadMode = "reflect") -> np.ndarray:
    """Pad bottom/right so both sides are at least ``size`` (reflect, or constant zeros); never resample."""
    h, w = arr.shape[:2]
    ph, pw = max(0, size - h), max(0, size - w)
    if not ph and not pw:
        return arr
    if mode == "reflect":
        # numpy reflects repeatedly when the pad exceeds the side; a 1-pixel side is repeated
        return np.pad(arr, ((0, ph), (0, pw), (0, 0)), mode="reflect" if min(h, w) > 1 else "edge")
    return np.pad(arr, ((0, ph), (0, pw), (0, 0)), mode="constant", constant_values=0)


def crop(arr: np.ndarray, top: int, left: int, size: int, pad_mode: PadMode = "reflect") -> np.ndarray:
    """The ``size``×``size`` window at (top, left), padding first when the image is smaller."""
    arr = pad_to(arr, size, pad_mode)
    return np.ascontiguousarray(arr[top : top + size, left : left + size])


def cut_windows(image, positions: list[tuple[int, int]], size: int, pad_mode: PadMode = "reflect",
                channels_first: bool = False) -> np.ndarray:
    """The ``size``×``size`` windows at ``positions`` of an RGB PIL image or uint8 (H, W, 3) array, as one
    uint8 array (K, S, S, 3), or (K, 3, S, S) with ``channels_first``.

    From an array each window is copied once, into the result. From a PIL image only the windows are
    copied (PIL cuts each and hands it to numpy: a few window-sized copies, 3x faster than copying a
    1-2 MP image whole first), unless the image is smaller than a window and must be padded.
    """
    shape = (len(positions), 3, size, size) if channels_first else (len(positions), size, size, 3)
    out = np.empty(shape, dtype=np.uint8)
    if not isinstance(image, np.ndarray):
        w, h = image.size
        if h >= size and w >= size and image.mode == "RGB":
            for i, (t, l) in enumerate(positions):
                win = np.asarray(image.crop((l, t, l + size, t + size)))
                out[i] = win.transpose(2, 0, 1) if channels_first else win
            return out
        from .images import rgb_array

        image = rgb_array(image)
    arr = pad_to(image, size, pad_mode)
    for i, (t, l) in enumerate(positions):
        win = arr[t : t + size, l : l + size]
        out[i] = win.transpose(2, 0, 1) if channels_first else win
    return out


def _span(length: int, size: int, align: int) -> int:
    """Largest aligned offset that keeps the window inside the (padded) image."""
    free = max(0, length - size)
    return free - free % align if align > 1 else free


def center_position(h: int, w: int, size: int, align: int = 8) -> tuple[int, int]:
    def c(length: int) -> int:
        off = max(0, (length - size) // 2)
        return off - off % align if align > 1 else off

    return c(h), c(w)


def random_position(h: int, w: int, size: int, rng: np.random.Generator, align: int = 8) -> tuple[int, int]:
    """A uniformly random aligned window position inside an h×w image."""
    th, tw = _span(h, size, align), _span(w, size, align)
    step = max(1, align)
    top = int(rng.integers(0, th // step + 1)) * step
    left = int(rng.integers(0, tw // step + 1)) * step
    return top, left


def grid_positions(h: int, w: int, size: int, n: int, align: int = 8) -> list[tuple[int, int]]:
    """Up to ``n`` distinct deterministic window positions spread over the image (centre when n == 1).

    The positions lie on an even rows×cols grid whose shape follows the aspect ratio; when the grid
    has more cells than ``n``, ``n`` of them are taken evenly. Exactly ``n`` distinct positions come
    back whenever the image has that many aligned positions, fewer (all of them) otherwise: a window
    is never listed twice.
    """
    if n <= 1:
        return [center_position(h, w, size, align)]
    th, tw = _span(h, size, align), _span(w, size, align)
    step = max(1, align)
    ny, nx = th // step + 1, tw // step + 1  # distinct aligned positions along each side
    rows = min(ny, n, max(1, round(math.sqrt(n * h / max(1, w)))))
    cols = min(nx, math.ceil(n / rows))
    rows = min(ny, math.ceil(n / cols))  # more rows when the columns ran out of room

    def spread(span: int, k: int) -> list[int]:
        if k == 1:
            off = span // 2
            return [off - off % step]
        # neighbours lie at least `step` apart (k <= span // step + 1), so the aligned values are distinct
        return [v - v % step for v in (round(i * span / (k - 1)) for i in range(k))]

    grid = [(t, l) for t in spread(th, rows) for l in spread(tw, cols)]
    if len(grid) > n:
        grid = [grid[round(i * (len(grid) - 1) / (n - 1))] for i in range(n)]
    return grid
