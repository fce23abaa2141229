"""One scoring path: preprocessed inputs → P(fake) per image, batched per branch, under the score contract.

The contract: a branch returns one number in [0, 1] per image. A score that is not (NaN, inf,
a logit) is that image's error, never a result. When a batch raises, its images are scored
one by one, so one bad image fails alone. The runner (streaming from its loader), the Python
API (:class:`aligncore.Detector`) and the audits all score through :class:`BranchScorer`;
:func:`score_images` is its in-memory form for decoded images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Hashable, Sequence

from . import profiling
from .errors import AlignCoreError


def create_branches(names: Sequence[str], device: str = "auto", preset: str | None = None,
                    batch_size: int | None = None, options: dict[str, dict[str, Any]] | None = None,
                    allow_download: bool = False) -> list:
    """The named branches with the run-level settings, every name checked before any is built.

    ``allow_download`` lets every branch download weights missing from the Hugging Face cache.
    """
    from .registry import get_registry

    reg = get_registry()
    for name in names:
        reg.get("branch", name)  # a typo fails in a second, not after building a large model
    branches = []
    for name in names:
        ov: dict[str, Any] = {"device": device}
        if preset is not None:
            ov["preset"] = preset
        if batch_size is not None:
            ov["batch_size"] = batch_size
        if allow_download:
            ov["allow_download"] = True
        ov.update((options or {}).get(name, {}))
        branches.append(reg.create("branch", name, None, **ov))
    return branches


@dataclass
class Scored:
    """One image's result for one branch: a score in [0, 1], or the error that replaced it."""

    key: Hashable  # the caller's name for the image (an index, a hash)
    score: float | None
    error: str | None = None
    explanation: str | None = None
    logit: float | None = None  # where the branch has one (see aligncore.branch.Scores)


def checked(value: Any) -> tuple[float | None, str | None]:
    """(score, None) when ``value`` is a number in [0, 1], else (None, the reason)."""
    try:
        s = float(value)
    except (TypeError, ValueError):
        return None, f"invalid score {value!r} (a branch must return P(fake) in [0, 1])"
    if not (math.isfinite(s) and 0.0 <= s <= 1.0):
        return None, f"invalid score {s!r} (a branch must return P(fake) in [0, 1])"
    return s, None


def _logits_of(result: Any, n: int) -> list[float | None]:
    logits = getattr(result, "logits", None)
    if logits is None or len(logits) != n:
        return [None] * n
    out = []
    for z in logits:
        try:
            z = float(z)
        except (TypeError, ValueError):
            z = math.nan
        out.append(z if math.isfinite(z) else None)
    return out


def score_with_fallback(branch, xs: list, batch) -> tuple[list[float | None], list[str | None], list[float | None]]:
    """Score a collated batch; if it raises, score image by image so one bad image fails alone.
    Returns (scores, errors, logits); a logit is None where the branch gives none."""
    try:
        result = branch.score_batch(batch)
        raw = list(result)
        if len(raw) != len(xs):
            raise AlignCoreError(f"branch {branch.name!r} returned {len(raw)} scores for {len(xs)} images")
        logits = _logits_of(result, len(raw))
    except Exception as batch_exc:
        if len(xs) == 1:
            return [None], [f"{type(batch_exc).__name__}: {batch_exc}"], [None]
        raw, logits = [], []
        for x in xs:
            try:
                one = branch.score_batch(branch.collate([x]))
                raw.append(list(one)[0])
                logits.append(_logits_of(one, 1)[0])
            except Exception as exc:
                raw.append(exc)
                logits.append(None)
    out = [(None, f"{type(v).__name__}: {v}") if isinstance(v, Exception) else checked(v) for v in raw]
    return [s for s, _ in out], [e for _, e in out], [z if e is None else None for z, (_, e) in zip(logits, out)]


class BranchScorer:
    """Collects one branch's preprocessed inputs and scores them in batches of the branch's batch size.

    ``add`` returns the results of a batch when it fills, ``flush`` those of the last one, so the
    caller can store every batch as soon as it is scored (a killed run loses at most one batch).
    """

    def __init__(self, branch, explain: bool = False):
        self.branch = branch
        self.batch_size = int(branch.config.batch_size)
        self.explain = explain and branch.supports_explain
        self._keys: list[Hashable] = []
        self._xs: list[Any] = []

    def add(self, key: Hashable, x: Any) -> list[Scored]:
        self._keys.append(key)
        self._xs.append(x)
        return self._score() if len(self._xs) >= self.batch_size else []

    def flush(self) -> list[Scored]:
        return self._score() if self._xs else []

    def _score(self) -> list[Scored]:
        import torch

        keys, xs = self._keys, self._xs
        self._keys, self._xs = [], []
        name = self.branch.name
        with torch.inference_mode():
            with profiling.stage(f"collate {name}"):
                batch = self.branch.collate(xs)
            with profiling.stage(f"forward {name}"):
                scores, errors, logits = score_with_fallback(self.branch, xs, batch)
            profiling.count("forward_batches", 1, per=name)
            profiling.count("images_scored", len(xs), per=name)
            if self.explain and any(e is None for e in errors):
                with profiling.stage(f"explain {name}"):
                    expl = self.branch.explain_batch(batch)
            else:
                expl = None
        return [Scored(k, s, e, expl[i] if expl and e is None else None, z)
                for i, (k, s, e, z) in enumerate(zip(keys, scores, errors, logits))]


def score_images(branches: Sequence, images: Sequence[Any], explain: bool = False) -> dict[str, list[Scored]]:
    """Decoded RGB images → for each branch, one :class:`Scored` per image, in order (key = position).

    Each image is preprocessed by each branch right before its batch is scored, so at most one
    batch of inputs per branch is held. A ``None`` image is skipped (its load failed upstream).
    """
    results: dict[str, list[Scored]] = {}
    for branch in branches:
        branch.ensure_loaded()
        scorer = BranchScorer(branch, explain)
        out: list[Scored | None] = [None] * len(images)
        for k, img in enumerate(images):
            if img is None:
                out[k] = Scored(k, None, "no image")
                continue
            try:
                x = branch.preprocess(img)
            except Exception as exc:
                out[k] = Scored(k, None, f"preprocessing failed: {type(exc).__name__}: {exc}")
                continue
            for s in scorer.add(k, x):
                out[s.key] = s  # type: ignore[index]
        for s in scorer.flush():
            out[s.key] = s  # type: ignore[index]
        results[branch.name] = out  # type: ignore[assignment]
    return results
