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
    scores: dict[str, float]  # per-branch P(fake); NaN for a branch that could not score the image
    score: float  # fused score (NaN unless every branch scored the image)
    verdict: str | None  # "fake" or "real"; None unless every branch scored the image
    error: str | None = None  # why the image (or a branch on it) could not be scored

    @property
    def is_fake(self) -> bool:
        return self.verdict == "fake"


class Detector:
    """``Detector().predict(paths_or_images)``: the built-in detector; or choose the parts,
    ``Detector(branches=["qwen", "dinov2"], fusion="or", preset="tiny")``.

    With no ``branches`` the detector is the built-in ensemble described by the package's data
    (:func:`aligncore.builtin.default_ensemble`, what ``alignctl detect`` uses): its branches with their
    built-in weights, its fusion with the fitted state and the threshold calibrated during the build.
    ``branch_options`` and ``device`` still apply; ``fusion`` / ``fusion_options`` replace the built-in fusion.

    ``branch_options`` maps a branch name to config overrides (e.g. ``{"npr": {"checkpoint": "ckpt/"}}``).
    Scores go through the runner's scoring path (:mod:`aligncore.scoring`): a branch that fails on an
    image, or returns a score outside [0, 1] (NaN, a logit), gives that image an ``error`` instead of a
    score. As in a run, an image gets a fused score and a verdict only when every branch scored it;
    otherwise (unreadable, or some branch failed) ``verdict`` is None and ``error`` says why. The rest
    of the batch is scored as usual.
    """

    def __init__(self, branches: Sequence[str] | str | None = None, fusion: str | None = None, preset: str | None = None,
                 device: str = "auto", branch_options: dict[str, dict[str, Any]] | None = None,
                 fusion_options: dict[str, Any] | None = None, fusion_state: dict[str, Any] | None = None):
        from .scoring import create_branches

        self.description: dict[str, Any] | None = None
        if branches is None:
            from .builtin import default_ensemble

            self.description = desc = default_ensemble()
            given = branch_options or {}
            branch_options = {b: {**(o or {}), **given.get(b, {})} for b, o in desc["branches"].items()}
            branch_options.update({b: o for b, o in given.items() if b not in branch_options})
            branches = list(desc["branches"])
            if fusion is None:
                fusion = desc["fusion"]["name"]
                fusion_options = {**(desc["fusion"].get("options") or {}), **(fusion_options or {})}
                fusion_state = fusion_state or desc["fusion"].get("state")
        fusion = fusion or "or"
        if isinstance(branches, str):
            branches = [b.strip() for b in branches.split(",") if b.strip()]
        self.branches = create_branches(branches, device, preset, options=branch_options)
        self.fusion = get_registry().create("fusion", fusion, fusion_options or {})
        if fusion_state:
            self.fusion.load_state_dict(fusion_state)

    @classmethod
    def from_pretrained(cls, source: str | Path, revision: str | None = None, allow_download: bool = False,
                        device: str = "auto", **branch_overrides: Any) -> "Detector":
        """A detector saved with :meth:`save_pretrained` or pushed with ``alignctl push``.

        ``source`` is a local folder, ``OWNER/NAME`` or ``hf:OWNER/NAME[@REV]``: a Hub repository is
        read from the Hugging Face cache (``HF_HOME``/``HF_HUB_CACHE``; ``HF_HUB_OFFLINE`` honoured) and
        downloaded only with ``allow_download=True``; its commit enters each branch's fingerprint.
        A bare checkpoint folder of one branch (a trainer's ``--out``) works too. ``branch_overrides``
        set options of every branch (e.g. ``batch_size=8``). Weights load through the safe loaders only.
        """
        from .pretrained import detector_spec, fetch

        folder = fetch(source, revision=revision, allow_download=allow_download)
        spec = detector_spec(folder)
        options = {b: {**o, **branch_overrides} for b, o in spec["branches"].items()}
        fusion = spec["fusion"]
        return cls(list(options), fusion=fusion.get("name") or "or", device=device, branch_options=options,
                   fusion_options=fusion.get("options") or {}, fusion_state=fusion.get("state") or None)

    def save_pretrained(self, out: str | Path, *, repo_id: str | None = None, license: str | None = None,
                        eval_run: str | Path | None = None) -> Path:
        """Write this detector as a pretrained folder (weights, ``aligncore.json``, model card) at ``out``.

        The folder is what ``alignctl push`` uploads and what :meth:`from_pretrained` and
        ``--checkpoint DIR`` read; ``eval_run`` (a run folder) adds that run's metrics to the card.
        """
        from .pretrained import write_pretrained

        return write_pretrained(out, self.branches, self.fusion, repo_id=repo_id, license=license, eval_run=eval_run)

    def predict(self, images: Sequence[str | Path | Any] | str | Path | Any) -> list[Prediction]:
        from .scoring import score_images

        if isinstance(images, (str, Path)) or hasattr(images, "convert"):
            images = [images]
        pil, names, errors = [], [], {}
        for i, im in enumerate(images):
            names.append(str(im) if isinstance(im, (str, Path)) else f"<image {i}>")
            try:
                pil.append(load_image(im))
            except ImageLoadError as exc:
                pil.append(None)
                errors[i] = [exc.reason]
        results = score_images(self.branches, pil)
        per_branch = {b: np.array([np.nan if r.score is None else r.score for r in rs]) for b, rs in results.items()}
        for b, rs in results.items():
            for r in rs:
                if r.error is not None and pil[r.key] is not None:
                    errors.setdefault(r.key, []).append(f"{b}: {r.error}")
        fused = self.fusion.predict(per_branch) if pil else None
        out = []
        for i, name in enumerate(names):
            scored = {b: float(s[i]) for b, s in per_branch.items()}
            if any(np.isnan(v) for v in scored.values()):
                out.append(Prediction(name, scored, float("nan"), None, "; ".join(errors.get(i, ["not scored"]))))
                continue
            out.append(Prediction(name, scored, float(fused.score[i]), "fake" if fused.verdict[i] else "real",
                                  "; ".join(errors[i]) if i in errors else None))
        return out
