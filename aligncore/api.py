"""The Python API mirroring ``alignctl``: build a detector once, call ``predict`` many times."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .data.images import ImageLoadError, load_image
from .registry import get_registry


@dataclass
class Prediction:
    source: str
    scores: dict[str, float]  # per-branch P(fake)
    score: float  # fused score
    verdict: str  # "fake" or "real"
    error: str | None = None

    @property
    def is_fake(self) -> bool:
        return self.verdict == "fake"


class Detector:
    """``Detector(branches=["qwen", "dinov2"], fusion="or", preset="tiny").predict(paths_or_images)``.

    ``branch_options`` maps a branch name to config overrides (e.g. ``{"npr": {"checkpoint": "ckpt/"}}``).
    Images that cannot be read give a prediction with ``error`` set and no verdict of their own
    (``verdict == "error"``) instead of stopping the batch.
    """

    def __init__(self, branches: Sequence[str] | str = ("fake",), fusion: str = "or", preset: str | None = None,
                 device: str = "auto", branch_options: dict[str, dict[str, Any]] | None = None,
                 fusion_options: dict[str, Any] | None = None):
        if isinstance(branches, str):
            branches = [b.strip() for b in branches.split(",") if b.strip()]
        reg = get_registry()
        for b in branches:
            reg.get("branch", b)
        self.fusion = reg.create("fusion", fusion, fusion_options or {})
        opts = branch_options or {}
        self.branches = []
        for b in branches:
            ov: dict[str, Any] = {"device": device}
            if preset is not None:
                ov["preset"] = preset
            ov.update(opts.get(b, {}))
            self.branches.append(reg.create("branch", b, None, **ov))

    def predict(self, images: Sequence[str | Path | Any] | str | Path | Any) -> list[Prediction]:
        if isinstance(images, (str, Path)) or hasattr(images, "convert"):
            images = [images]
        pil, names, errors = [], [], {}
        for i, im in enumerate(images):
            name = str(im) if isinstance(im, (str, Path)) else f"<image {i}>"
            names.append(name)
            try:
                pil.append(load_image(im))
            except ImageLoadError as exc:
                pil.append(None)
                errors[i] = exc.reason
        ok = [i for i, p in enumerate(pil) if p is not None]
        per_branch = {}
        for br in self.branches:
            col = np.full(len(pil), np.nan)
            if ok:
                col[ok] = br.score([pil[i] for i in ok])
            per_branch[br.name] = col
        fused = self.fusion.predict(per_branch) if ok else None
        out = []
        for i, name in enumerate(names):
            if i in errors:
                out.append(Prediction(name, {}, float("nan"), "error", errors[i]))
                continue
            out.append(Prediction(
                name,
                {b: float(per_branch[b][i]) for b in per_branch},
                float(fused.score[i]),
                "fake" if fused.verdict[i] else "real",
            ))
        return out
