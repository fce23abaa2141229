"""Deterministic image perturbations for the robustness protocol.

A perturbation spec is ``kind:value`` (``jpeg:75``, ``jpeg:50``, ``webp:80``, ``blur:1.0``,
``resize:0.5``, ``crop:0.8``); several are chained with ``+`` (``resize:0.5+jpeg:75``).
The chain is bounded as a whole, not step by step: at most :data:`MAX_STEPS` steps, and at no
point may it scale a side by more than :data:`MAX_SCALE` (``resize:4+resize:4`` is refused); an
image the chain would enlarge beyond the decoder's pixel limit fails alone, with that reason,
before any pixel is allocated. It is applied to every image of both classes after decoding and
before a branch's own preprocessing, so every branch sees the same perturbed pixels. Nothing is random: the
same image and spec always give the same pixels, which is what lets the score store key
perturbed scores by (original sha256, branch fingerprint + spec).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageFilter

from .data.codec import jpeg_roundtrip
from .errors import ConfigError

#: steps in one chain
MAX_STEPS = 8
#: how far a chain may scale a side, at any point of it (the largest single resize)
MAX_SCALE = 4.0

#: kind → (what the value means, valid range low, high)
KINDS: dict[str, tuple[str, float, float]] = {
    "jpeg": ("JPEG quality (4:2:0 subsampling, as every aligncore JPEG)", 1, 100),
    "webp": ("WebP quality (lossy)", 1, 100),
    "blur": ("Gaussian blur radius in pixels", 0.0, 50.0),
    "resize": ("scale factor for both sides (bicubic)", 0.01, 4.0),
    "crop": ("fraction of each side kept by a centre crop", 0.01, 1.0),
}


@dataclass(frozen=True)
class Perturbation:
    kind: str
    value: float

    @property
    def spec(self) -> str:
        v = int(self.value) if self.kind in ("jpeg", "webp") else self.value
        return f"{self.kind}:{v}"

    def apply(self, img: Image.Image) -> Image.Image:
        if img.mode != "RGB":  # the loader gives RGB: converting again would only copy the pixels
            img = img.convert("RGB")
        if self.kind == "jpeg":
            return jpeg_roundtrip(img, int(self.value))
        if self.kind == "webp":
            buf = io.BytesIO()
            img.save(buf, format="WEBP", quality=int(self.value), method=4, lossless=False)
            buf.seek(0)
            out = Image.open(buf)
            out.load()
            return out if out.mode == "RGB" else out.convert("RGB")
        if self.kind == "blur":
            return img.filter(ImageFilter.GaussianBlur(radius=float(self.value)))
        if self.kind == "resize":
            from .data.images import MAX_PIXELS

            w, h = img.size
            size = (max(1, round(w * self.value)), max(1, round(h * self.value)))
            if size[0] * size[1] > MAX_PIXELS:
                raise ValueError(f"{self.spec} would make {w}x{h} pixels {size[0]}x{size[1]} = {size[0] * size[1]}, "
                                 f"above the limit of {MAX_PIXELS} (ALIGNCORE_MAX_PIXELS)")
            return img.resize(size, Image.Resampling.BICUBIC)
        if self.kind == "crop":
            w, h = img.size
            cw, ch = max(1, round(w * self.value)), max(1, round(h * self.value))
            left, top = (w - cw) // 2, (h - ch) // 2
            return img.crop((left, top, left + cw, top + ch))
        raise AssertionError(self.kind)  # parse_perturb only builds known kinds


@dataclass(frozen=True)
class PerturbChain:
    steps: tuple[Perturbation, ...]

    @property
    def spec(self) -> str:
        return "+".join(p.spec for p in self.steps)

    def __call__(self, img: Image.Image) -> Image.Image:
        for p in self.steps:
            img = p.apply(img)
        return img


def parse_perturb(spec: str | None) -> PerturbChain | None:
    """``"jpeg:75+resize:0.5"`` → a chain; None or "" or "none" → None. Bad specs raise ConfigError."""
    if spec is None or not str(spec).strip() or str(spec).strip().lower() == "none":
        return None
    steps = []
    parts = str(spec).split("+")
    if len(parts) > MAX_STEPS:
        raise ConfigError(f"perturbation {spec!r}: {len(parts)} steps; a chain may have at most {MAX_STEPS}.")
    scale = 1.0
    for step, part in enumerate(parts, start=1):
        part = part.strip()
        kind, _, raw = part.partition(":")
        kind = kind.strip().lower()
        if kind not in KINDS:
            raise ConfigError(
                f"perturbation {part!r}: unknown kind {kind!r}; use one of "
                + ", ".join(f"{k}:VALUE ({d})" for k, (d, _, _) in KINDS.items()) + "."
            )
        desc, lo, hi = KINDS[kind]
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"perturbation {part!r}: {kind} needs a number ({desc}), e.g. {kind}:{hi if kind in ('jpeg', 'webp') else lo}.") from None
        if not lo <= value <= hi or (kind in ("jpeg", "webp") and value != int(value)):
            raise ConfigError(f"perturbation {part!r}: {desc} must lie in [{lo:g}, {hi:g}]" +
                              (" and be a whole number." if kind in ("jpeg", "webp") else "."))
        steps.append(Perturbation(kind, value))
        if kind in ("resize", "crop"):
            scale *= value
            if scale > MAX_SCALE + 1e-9:
                raise ConfigError(
                    f"perturbation {spec!r}: by step {step} ({part.strip()!r}) the chain scales each side by {scale:g}x "
                    f"({scale * scale:g}x the pixels); a whole chain may scale a side by at most {MAX_SCALE:g}x."
                )
    return PerturbChain(tuple(steps))


def normalize_perturb(spec: str | None) -> str | None:
    chain = parse_perturb(spec)
    return chain.spec if chain else None


def perturbed_fingerprint(fingerprint: str, spec: str | None) -> str:
    """The store key of a branch's scores on perturbed images: the branch fingerprint plus the spec."""
    return f"{fingerprint}@{spec}" if spec else fingerprint
