"""Reconstruction features of the ``aerecon`` branch (imported lazily: it needs torch).

AEROBLADE (Ricker et al., CVPR 2024) scores an image by how well a latent diffusion model's
autoencoder reconstructs it: images that came out of such a decoder lie close to its output
manifold and reconstruct with a smaller error than photographs. Here the autoencoder is a local
TAESD-family tiny autoencoder (e.g. taef2), and the image is looked at on several scales: at
scale ``s`` a ``crop_size`` window of the image reduced ``s`` times (box filter, so scale 2 sees the
centre 2·crop_size window of the original).

At the first scale the window is reconstructed and four errors are kept (logs of small positive
numbers, so ratios become differences):

- ``l2``: mean squared error between the window and its reconstruction (RGB in [0, 1]);
- ``hp``: the same for the 3×3 high-pass residual (fine detail the decoder had to re-invent);
- ``feat``: squared distance between the encoder's first full-resolution block activations of the
  window and of its reconstruction, normalised per channel (a perceptual distance in the
  autoencoder's own features, as AEROBLADE uses LPIPS);
- ``tex``: the window's own high-pass energy (texture: rich texture reconstructs worse for any image).

At every scale the frozen encoder serves as a feature extractor: the channel means and log standard
deviations of the last block of each of its resolution levels and of the latent (taef2: 4 × 64 + 32
channels, 576 numbers per scale).

:func:`windows` picks where the windows go: the centre, or the most textured of a grid
(``texture``), at native resolution, never resampled except by the scale's box filter.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

ERROR_KEYS = ("l2", "hp", "feat", "tex")


def _binomial_blur(x: torch.Tensor) -> torch.Tensor:
    k = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device) / 4
    k2 = (k[:, None] * k[None, :]).expand(x.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), k2, groups=x.shape[1])


def high_pass(x: torch.Tensor) -> torch.Tensor:
    """x − 3×3 binomial blur (reflect borders), per channel."""
    return x - _binomial_blur(x)


def reduce(arr: np.ndarray, s: int) -> np.ndarray:
    """Box-filter ``arr`` (H, W, 3 uint8) by an integer factor (the area average of s×s cells)."""
    if s == 1:
        return arr
    h, w = arr.shape[0] // s * s, arr.shape[1] // s * s
    a = arr[:h, :w].astype(np.float32).reshape(h // s, s, w // s, s, 3).mean(axis=(1, 3))
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def windows(arr: np.ndarray, size: int, mode: Literal["center", "texture"] = "center", align: int = 8,
            candidates: int = 9) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of the window to reconstruct: ``size``×``size`` (or the whole image,
    cut to a multiple of ``align``, when it is smaller), centred, or the one with the most high-pass
    energy among ``candidates`` grid positions."""
    h, w = arr.shape[:2]
    wh, ww = min(size, h // align * align), min(size, w // align * align)
    if wh < align or ww < align:
        raise ValueError(f"image of {w}x{h} pixels is smaller than one {align}-pixel cell")

    def centred(length: int, win: int) -> int:
        off = (length - win) // 2
        return off - off % align

    if mode == "center":
        return [(centred(h, wh), centred(w, ww), wh, ww)]
    k = max(1, int(round(candidates ** 0.5)))

    def spread(length: int, win: int) -> list[int]:
        free = length - win
        return sorted({(round(i * free / (k - 1)) if k > 1 else free // 2) // align * align for i in range(k)})

    gray = arr.astype(np.float32).mean(axis=2)
    best, best_e = None, -1.0
    for t in spread(h, wh):
        for l in spread(w, ww):
            g = gray[t : t + wh, l : l + ww]
            lap = g[1:-1, 1:-1] - 0.25 * (g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:])
            e = float(np.mean(lap**2)) if lap.size else 0.0
            if e > best_e:
                best, best_e = (t, l), e
    return [(best[0], best[1], wh, ww)]


def encoder_taps(model) -> list[int]:
    """Indices of the encoder layers whose outputs are summarised: the last block of each resolution
    level (before a stride-2 conv or the latent conv) and the latent itself."""
    enc = model.layout.encoder
    taps = [i for i in range(len(enc) - 1) if enc[i].kind == "block" and enc[i + 1].kind == "conv"]
    return taps + [len(enc) - 1]


def feature_names(model, scales: Sequence[int]) -> list[str]:
    """Names of :func:`image_features`' columns: the reconstruction errors at the first scale, then per
    scale and tapped encoder layer the channel means and log standard deviations."""
    enc = model.layout.encoder
    names = [f"s{scales[0]}_{k}" for k in ERROR_KEYS]
    for s in scales:
        for level, i in enumerate(encoder_taps(model)):
            tag = "z" if i == len(enc) - 1 else f"L{level}"
            names += [f"s{s}_{tag}_mean{c}" for c in range(enc[i].n_out)]
            names += [f"s{s}_{tag}_lstd{c}" for c in range(enc[i].n_out)]
    return names


def _stats(h: torch.Tensor) -> torch.Tensor:
    return torch.cat([h.mean(dim=(2, 3)), h.std(dim=(2, 3), correction=0).clamp_min(1e-6).log()], dim=1)


@torch.inference_mode()
def window_features(model, x: torch.Tensor, reconstruct: bool = True) -> torch.Tensor:
    """x: (N, 3, H, W) float RGB in [0, 1] (H, W multiples of the model's stride) → (N, F): the four
    log reconstruction errors (when ``reconstruct``), then the tapped encoder layers' statistics."""
    eps = 1e-8
    taps = set(encoder_taps(model))
    stats, feats = [], {}
    h = x
    for i, layer in enumerate(model.encoder):
        h = layer(h)
        if i == 1:
            feats["stem"] = h  # conv + first block at full resolution: the perceptual space
        if i in taps:
            stats.append(_stats(h))
    if not reconstruct:
        return torch.cat(stats, dim=1)
    y = model.decode(h)
    fx, fy = feats["stem"], model.encoder[:2](y)
    e = y - x
    l2 = e.pow(2).mean(dim=(1, 2, 3))
    hp = high_pass(e).pow(2).mean(dim=(1, 2, 3))
    tex = high_pass(x).pow(2).mean(dim=(1, 2, 3))
    scale = fx.pow(2).mean(dim=(2, 3), keepdim=True).clamp_min(eps).sqrt()
    feat = ((fx - fy) / scale).pow(2).mean(dim=(1, 2, 3))
    errs = torch.stack([l2, hp, feat, tex], dim=1).clamp_min(eps).log()
    return torch.cat([errs, *stats], dim=1)


def canonical_view(arr: np.ndarray, size: int = 128) -> np.ndarray:
    """The whole image resized so its shorter side is ``size`` (bicubic, antialiased), centre-cropped
    to size×size: a view of composition, colour and look that no longer depends on the file's size."""
    from PIL import Image

    h, w = arr.shape[:2]
    f = size / min(h, w)
    nh, nw = max(size, int(round(h * f))), max(size, int(round(w * f)))
    small = np.asarray(Image.fromarray(arr).resize((nw, nh), Image.BICUBIC), dtype=np.uint8)
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(small[top : top + size, left : left + size])


def canonical_names(model) -> list[str]:
    return [n.replace("s", "c", 1) for n in feature_names(model, (1, 2))[len(ERROR_KEYS):]]


def canonical_features(model, view: np.ndarray) -> np.ndarray:
    """Encoder statistics (no reconstruction) of the canonical view at full and half size."""
    dev = next(model.parameters()).device
    out = []
    for s in (1, 2):
        x = torch.from_numpy(np.array(reduce(view, s))).to(dev).permute(2, 0, 1)[None].float().div_(255)
        out.append(window_features(model, x.contiguous(memory_format=torch.channels_last), reconstruct=False)[0])
    return torch.cat(out).cpu().numpy().astype(np.float32)


def image_features(model, arr: np.ndarray, scales: Sequence[int] = (1, 2, 4), crop_size: int = 128,
                   crop_select: Literal["center", "texture"] = "center") -> np.ndarray:
    """uint8 (H, W, 3) → the multi-scale feature vector (:func:`feature_names` order), float32.

    The window of the first scale is reconstructed (encoder + decoder); the other scales only pass
    the encoder. A scale at which the reduced image is smaller than one latent cell repeats the
    previous scale's statistics (a tiny image has no coarser view).
    """
    stride = model.stride
    out: list[torch.Tensor] = []
    dev = next(model.parameters()).device
    n_err = len(ERROR_KEYS)
    for k, s in enumerate(scales):
        small = reduce(arr, s)
        if min(small.shape[:2]) < stride:
            if not out:
                raise ValueError(f"image of {arr.shape[1]}x{arr.shape[0]} pixels is smaller than one latent cell")
            out.append(out[-1][n_err:] if k == 1 else out[-1])
            continue
        t, l, h, w = windows(small, crop_size, crop_select, align=stride)[0]
        win = np.array(small[t : t + h, l : l + w])  # a writable copy for torch.from_numpy
        x = torch.from_numpy(win).to(dev).permute(2, 0, 1)[None].float().div_(255)
        x = x.contiguous(memory_format=torch.channels_last)  # ~15 % faster convolutions on CPU
        out.append(window_features(model, x, reconstruct=k == 0)[0])
    return torch.cat(out).cpu().numpy().astype(np.float32)
