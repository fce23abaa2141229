"""The Branch base class: one detector expert that maps an image to P(fake)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, Sequence

from pydantic import Field

from .component import Component, ComponentConfig
from .errors import AlignCoreError
from .hashing import hash_directory
from .torchutil import resolve_device


class BranchConfig(ComponentConfig):
    preset: str | None = Field(
        None, description="'tiny' builds a small offline model with random weights (tests, demos); "
        "None loads the configured pretrained model."
    )
    checkpoint: str | None = Field(
        None, description="Directory with trained weights written by this branch's trainer."
    )
    device: str = Field("auto", description="'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'.")
    batch_size: int = Field(16, ge=1, description="Images per forward pass when scoring.")


class Branch(Component):
    """A detector expert.

    Subclasses set ``name``, ``help``, ``config_class`` and implement :meth:`load`,
    :meth:`preprocess` and :meth:`score_batch`. The runner calls ``preprocess`` in data
    loader workers (it must not touch the model), ``collate`` to batch, and
    ``score_batch`` under ``torch.inference_mode`` in the main process.

    Preprocessing is declared here, by the branch, never by the data code: pixel
    branches crop at native resolution, a VLM resizes inside its processor.
    """

    config_class: ClassVar[type[BranchConfig]] = BranchConfig
    #: bump when a change to the code changes scores, so stored scores are not reused
    version: ClassVar[str] = "1"
    #: config fields that never change a score (left out of the fingerprint)
    nonscoring_fields: ClassVar[frozenset[str]] = frozenset({"device", "batch_size"})
    #: whether :meth:`explain_batch` produces text rationales
    supports_explain: ClassVar[bool] = False

    config: BranchConfig

    def __init__(self, config: BranchConfig | dict | None = None, **overrides: Any):
        super().__init__(config, **overrides)
        self._loaded = False

    @classmethod
    def kind_name(cls) -> str:
        return "branch"

    # ------------------------------------------------------------------ lifecycle
    def ensure_loaded(self) -> "Branch":
        if not self._loaded:
            self.load()
            self._loaded = True
        return self

    def load(self) -> None:
        """Build or load the model (and the checkpoint in ``config.checkpoint``)."""

    @property
    def device(self) -> str:
        return resolve_device(self.config.device)

    # ------------------------------------------------------------------ scoring
    def preprocess(self, image) -> Any:
        """PIL RGB image → model input for one image (runs in loader workers)."""
        raise NotImplementedError

    def collate(self, items: Sequence[Any]) -> Any:
        """Batch preprocessed items. Tensors of one shape are stacked; anything else stays a list."""
        import numpy as np

        if items and all(hasattr(x, "shape") for x in items) and len({tuple(x.shape) for x in items}) == 1:
            first = items[0]
            if type(first).__module__.startswith("torch"):
                import torch

                return torch.stack(list(items))
            return np.stack(items)
        return list(items)

    def score_batch(self, batch: Any) -> Sequence[float]:
        """Batch → P(fake) in [0, 1] per image. Called without gradients."""
        raise NotImplementedError

    def explain_batch(self, batch: Any) -> list[str] | None:
        """Optional short rationale per image (only when ``supports_explain``)."""
        return None

    def score(self, images: Sequence[Any]) -> "list[float]":
        """Score PIL images directly (notebook use); the runner batches through a DataLoader instead."""
        import torch

        self.ensure_loaded()
        out: list[float] = []
        bs = self.config.batch_size
        with torch.inference_mode():
            for i in range(0, len(images), bs):
                batch = self.collate([self.preprocess(im) for im in images[i : i + bs]])
                out.extend(float(s) for s in self.score_batch(batch))
        return out

    # ------------------------------------------------------------------ identity
    def weights_digest(self) -> str:
        """Digest of the weights that decide scores. Default: the checkpoint directory's content."""
        return hash_directory(self.config.checkpoint) if self.config.checkpoint else ""

    def scoring_identity(self) -> dict:
        """Resolved settings that change scores but are not config values (e.g. the precision 'auto' picks)."""
        return {}

    def fingerprint(self) -> str:
        """Changes whenever anything that can change a score changes (code version, config, weights)."""
        cfg = {k: v for k, v in self.config.model_dump(mode="json").items() if k not in self.nonscoring_fields}
        cfg.pop("checkpoint", None)  # the path does not matter, its content does
        payload = {
            "branch": self.name,
            "version": self.version,
            "config": cfg,
            "weights": self.weights_digest(),
        }
        extra = self.scoring_identity()
        if extra:
            payload["resolved"] = extra
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return f"{self.name}-{hashlib.sha256(blob).hexdigest()[:16]}"

    # ------------------------------------------------------------------ training
    def train(self, supervision: Any, out_dir: str | Path, train_config: dict | None = None, **kwargs) -> Path:
        """Train on a labelled set (a manifest, a folder or a list of records); returns the checkpoint dir."""
        raise AlignCoreError(f"branch {self.name!r} does not support training.")

    def save(self, out_dir: str | Path) -> Path:
        """Write the trainable weights (safetensors / peft adapter) so ``checkpoint=out_dir`` reloads them."""
        raise AlignCoreError(f"branch {self.name!r} has no trainable weights to save.")

    def describe(self) -> dict:
        return {"name": self.name, "fingerprint": self.fingerprint(), "config": self.config.model_dump(mode="json")}
