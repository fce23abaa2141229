"""The Branch base class: one detector expert that maps an image to P(fake)."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any, ClassVar, Sequence

from pydantic import Field

from .component import Component, ComponentConfig, explicit_values
from .errors import AlignCoreError, ConfigError
from .hashing import hash_directory
from .torchutil import resolve_device


class Scores(list):
    """What ``score_batch`` may return instead of a plain list: P(fake) per image plus the logit each was
    computed from, so the run records the logit too (a confident score saturates at 1.0, its logit does not)."""

    def __init__(self, probabilities: Sequence[float], logits: Sequence[float] | None = None):
        super().__init__(probabilities)
        self.logits = None if logits is None else [float(z) for z in logits]
        if self.logits is not None and len(self.logits) != len(self):
            raise ValueError(f"{len(self)} scores but {len(self.logits)} logits")


def scores_from_logits(logits: Sequence[float]) -> Scores:
    """Logits → :class:`Scores`: P(fake) = sigmoid(logit) in float64 (exact in [0, 1], no overflow), with the logits."""
    import numpy as np

    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    e = np.exp(-np.abs(z))
    p = np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return Scores(p.tolist(), z.tolist())


class BranchConfig(ComponentConfig):
    preset: str | None = Field(
        None, description="Named settings for the fields you leave unset, e.g. 'tiny': a small offline model "
        "with random weights (tests, demos); None loads the configured pretrained model."
    )
    checkpoint: str | None = Field(
        None, description="Trained weights: a folder written by this branch's trainer or by save_pretrained, or a Hub "
        "repository hf:OWNER/NAME[@REV] (read from the Hugging Face cache); unset fields take the values the "
        "checkpoint was trained with."
    )
    allow_download: bool = Field(False, description="Download weights missing from the Hugging Face cache (an hf: "
                                 "checkpoint, pretrained base weights); never by default, and never with HF_HUB_OFFLINE.")
    device: str = Field("auto", description="'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'.")
    batch_size: int = Field(16, ge=1, le=65536, description="Images per forward pass when scoring.")


class Branch(Component):
    """A detector expert.

    Subclasses set ``name``, ``help``, ``config_class`` and implement :meth:`load`,
    :meth:`preprocess` and :meth:`score_batch`. The runner calls ``preprocess`` in data
    loader workers (it must not touch the model), ``collate`` to batch, and
    ``score_batch`` under ``torch.inference_mode`` in the main process.

    Preprocessing is declared here, by the branch, never by the data code: pixel
    branches crop at native resolution, a VLM resizes inside its processor.

    Weights are data: ``presets`` name field values (a preset may mark its weights as
    random with the reserved key ``"weights": "random"``); a checkpoint records the values
    it was trained with (:meth:`checkpoint_record`), which the fields a caller left unset
    adopt; a set value that differs from the checkpoint's is an error naming both.
    Training is chosen by the branch: ``trainer_class`` (an :class:`aligncore.train.Trainer`)
    and ``train_config_class`` (its typed options), or None when the branch is not trainable.
    """

    config_class: ClassVar[type[BranchConfig]] = BranchConfig
    #: a label for the scoring code; the fingerprint also holds a digest of the source itself
    #: (:func:`aligncore.identity.source_digest`), so an edit never needs a hand-bumped version
    version: ClassVar[str] = "1"
    #: distributions whose major.minor version enters the fingerprint (the ones that compute the score;
    #: Pillow decodes every image); subclasses add theirs, e.g. ("torch", "timm")
    score_libraries: ClassVar[tuple[str, ...]] = ("numpy", "pillow")
    #: modules beyond the class's own (and its bases') whose code decides scores: their source enters the fingerprint
    source_modules: ClassVar[tuple[str, ...]] = ("aligncore.data.images",)
    #: config fields that never change a score (left out of the fingerprint)
    nonscoring_fields: ClassVar[frozenset[str]] = frozenset({"device", "batch_size", "allow_download"})
    #: whether :meth:`explain_batch` produces text rationales
    supports_explain: ClassVar[bool] = False
    #: inputs whose size follows the image (a VLM's visual tokens): the runner batches like-sized images together
    bucket_by_size: ClassVar[bool] = False
    #: every branch accepts 'tiny' (a run's --preset reaches all its branches); branches with a model override it
    presets: ClassVar[dict[str, dict[str, Any]]] = {"tiny": {}}
    #: the training method (an aligncore.train.Trainer subclass) and its options; None = not trainable
    trainer_class: ClassVar[Any] = None
    train_config_class: ClassVar[Any] = None
    #: trained weights shipped as package data, ``"PACKAGE:FOLDER"`` (checkpoint files + SHA256SUMS; see
    #: :mod:`aligncore.builtin`): used when neither ``checkpoint`` nor ``preset`` is set; None = none
    builtin_weights: ClassVar[str | None] = None

    config: BranchConfig

    def __init__(self, config: BranchConfig | dict | None = None, **overrides: Any):
        super().__init__(config, **overrides)
        self._loaded = False
        self.check_resources()

    # ------------------------------------------------------------------ resources
    def input_nbytes(self) -> int:
        """Bytes one preprocessed image takes while its batch is scored (0: small or unknown). Branches whose
        inputs grow with their settings (crops, windows, pixels) override it, so a batch that cannot fit in
        memory is refused when the branch is built, not after the machine starts swapping."""
        return 0

    def work_nbytes(self) -> int:
        """Bytes preprocessing one image takes on top of its result (0: small or unknown)."""
        return 0

    def check_resources(self) -> None:
        """Refuse settings whose batch of inputs exceeds the machine's memory budget (see :mod:`aligncore.limits`)."""
        per, work = self.input_nbytes(), self.work_nbytes()
        if per or work:
            from .limits import check_memory, gib

            bs = int(self.config.batch_size)
            extra = f", plus {gib(work)} to preprocess one" if work else ""
            check_memory(per * bs + work, f"branch {self.name!r}: a batch of {bs} image(s) ({gib(per)} each{extra}, "
                         "with these settings)", "Lower batch_size (or the crops, windows or pixels per image).")

    @classmethod
    def kind_name(cls) -> str:
        return "branch"

    # ------------------------------------------------------------------ configuration
    @classmethod
    def make_config(cls, config: BranchConfig | dict | None = None, **overrides: Any):
        """Set values, then (with ``checkpoint``) the checkpoint's recorded values, then the preset's, then defaults.

        A checkpoint ``hf:OWNER/NAME[@REV]`` is fetched through the Hugging Face cache (downloaded only
        with ``allow_download``); a pretrained folder (``save_pretrained``, ``alignctl push``) gives this
        branch's folder, and the options saved with it fill the fields the caller left unset.
        """
        data = explicit_values(config, overrides)
        if isinstance(data.get("checkpoint"), str) and data["checkpoint"]:
            from .pretrained import locate_checkpoint

            folder, saved = locate_checkpoint(data["checkpoint"], cls.name, bool(data.get("allow_download")))
            data["checkpoint"] = folder
            data = cls._adopt_checkpoint(data)
            fields = cls.config_class.model_fields
            data = {**{k: v for k, v in saved.items() if k in fields}, **data}
        elif data.get("checkpoint"):
            data = cls._adopt_checkpoint(data)
        elif cls.uses_builtin(data):
            # the built-in weights' recorded architecture fills unset fields, as a checkpoint's would
            data = {**cls.builtin_record(), **data}
        return cls.validate_config(data)

    @classmethod
    def checkpoint_record(cls, checkpoint: str | Path) -> dict[str, Any]:
        """Config values a checkpoint folder was trained with (None values mean "not recorded").

        Raise :class:`ConfigError` when the folder is not a checkpoint of this branch.
        """
        return {}

    @classmethod
    def _adopt_checkpoint(cls, data: dict[str, Any]) -> dict[str, Any]:
        fields = cls.config_class.model_fields
        recorded = {k: v for k, v in cls.checkpoint_record(data["checkpoint"]).items() if v is not None and k in fields}
        given = cls.validate_config(data)  # the caller's values, coerced to the field types
        conflicts = [f"{k}={getattr(given, k)!r} (the checkpoint has {k}={v!r})"
                     for k, v in sorted(recorded.items()) if k in data and getattr(given, k) != v]
        if conflicts:
            raise ConfigError(
                f"branch {cls.name!r}: the options conflict with checkpoint {data['checkpoint']}: {'; '.join(conflicts)}. "
                "Leave them unset to use the checkpoint's values."
            )
        merged = {**data, **{k: v for k, v in recorded.items() if k not in data}}
        try:
            cls.validate_config(merged)
        except ConfigError as exc:  # the caller's values passed alone: the checkpoint's are at fault
            raise ConfigError(f"checkpoint {data['checkpoint']} records settings branch {cls.name!r} refuses: "
                              f"{str(exc).split(': ', 1)[-1]}") from None
        return merged

    # ------------------------------------------------------------------ lifecycle
    def ensure_loaded(self) -> "Branch":
        if not self._loaded:
            problem = self.untrained()
            if problem:
                raise AlignCoreError(problem)
            self.load()
            self._loaded = True
        return self

    def untrained(self) -> str | None:
        """Why this branch cannot give meaningful scores (no trained or pretrained weights and no preset
        that asks for random ones), or None. Scoring refuses such a branch; training is unaffected."""
        return None

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
        """Batch → P(fake) in [0, 1] per image. Called without gradients. A branch that computes a logit
        returns :func:`scores_from_logits` (a :class:`Scores`), so predictions carry the logit too."""
        raise NotImplementedError

    def score_counts(self) -> dict[str, int]:
        """Counters of the scoring work done so far, beyond images and batches (a pixel branch: windows and
        forward passes); ``alignctl run --profile`` reports them. Default: none."""
        return {}

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
        """Digest of the weights that decide scores. Default: the checkpoint directory's content
        (its records, such as a model card, left out)."""
        folder = self.config.checkpoint or self.builtin_folder()
        if not folder:
            return ""
        from .builtin import SUMS_FILE
        from .pretrained import RECORD_FILES

        return hash_directory(folder, exclude_top=RECORD_FILES + (SUMS_FILE,))

    def checkpoint_folder(self) -> Path | None:
        """The folder that holds the checkpoint's weights (what ``save_pretrained`` copies); None without one."""
        return Path(self.config.checkpoint).expanduser() if self.config.checkpoint else None

    @classmethod
    def uses_builtin(cls, values: dict[str, Any]) -> bool:
        """Whether config ``values`` select the built-in weights: the branch has some, neither ``checkpoint``
        nor ``preset`` is set, and no value differs from what they were trained with (such a config describes
        another model: it has no trained weights, see :meth:`builtin_conflicts`). A branch whose other options
        name weights of their own narrows this."""
        from .builtin import in_use

        if not (cls.builtin_weights and not values.get("checkpoint") and values.get("preset") is None and in_use()):
            return False
        return not cls.builtin_conflicts(values)

    @classmethod
    def builtin_record(cls) -> dict[str, Any]:
        """The config values the built-in weights were trained with (their checkpoint record), checked files."""
        from .builtin import builtin_folder

        fields = cls.config_class.model_fields
        return {k: v for k, v in cls.checkpoint_record(builtin_folder(cls.builtin_weights)).items()
                if v is not None and k in fields}

    @classmethod
    def builtin_conflicts(cls, values: dict[str, Any]) -> list[str]:
        """``field=value (built-in: field=other)`` for every given value that the built-in weights cannot serve."""
        if not cls.builtin_weights:
            return []
        recorded = cls.builtin_record()
        given = {k: v for k, v in values.items() if k in recorded}
        if not given:
            return []
        typed = cls.config_class.model_construct(**given)  # no validation: compare the values as given
        return [f"{k}={getattr(typed, k)!r} (built-in: {k}={recorded[k]!r})"
                for k in sorted(given) if getattr(typed, k) != recorded[k]]

    def builtin_hint(self) -> str:
        """Why the built-in weights are not used although no checkpoint or preset is set ("" otherwise)."""
        from .builtin import in_use

        if not self.builtin_weights or self.config.checkpoint or self.config.preset is not None or not in_use():
            return ""
        conflicts = self.builtin_conflicts(dict(self.config))
        return (f" Its built-in weights were trained with other options ({'; '.join(conflicts)}): leave those "
                "unset to score with them.") if conflicts else ""

    @property
    def uses_builtin_weights(self) -> bool:
        """True when the branch scores with its built-in weights (see :meth:`uses_builtin`)."""
        return self.uses_builtin(dict(self.config))

    def builtin_folder(self) -> Path | None:
        """The checked folder of the built-in weights in use, or None (see :mod:`aligncore.builtin`)."""
        if not self.uses_builtin_weights:
            return None
        from .builtin import builtin_folder

        return builtin_folder(self.builtin_weights)

    def scoring_identity(self) -> dict:
        """Resolved settings that change scores but are not config values (e.g. the precision 'auto' picks)."""
        return {}

    @property
    def random_weights(self) -> bool:
        """True when no checkpoint is set and the preset marks its weights as random."""
        return not self.config.checkpoint and self.preset_flag(self.config.preset, "weights") == "random"

    def weights_provenance(self) -> str:
        """Where the scoring weights come from: ``random``, ``checkpoint:<digest16>``,
        ``pretrained:<id>@<revision-or-digest16>`` or ``builtin@<digest16>`` (no weights: the code decides)."""
        if self.config.checkpoint:
            return f"checkpoint:{self.weights_digest()[:16]}"
        if self.random_weights:
            return "random"
        if self.uses_builtin_weights:
            return f"builtin@{self.weights_digest()[:16]}"
        return self.pretrained_provenance()

    def pretrained_provenance(self) -> str:
        """Provenance without checkpoint or random preset; branches with pretrained weights override it."""
        digest = hashlib.sha256(f"{self.name}:{self.version}".encode()).hexdigest()[:16]
        return f"builtin@{digest}"

    def base_weights_identity(self) -> str:
        """The resolved pretrained weights a checkpoint builds on (Hub revision or file digest); "" when none.
        Branches that load a base model override it (a different model at the same id or path changes it)."""
        return ""

    def fingerprint(self) -> str:
        """Changes whenever anything that can change a score changes: the config, the source of the
        modules that define the branch, the checkpoint's and the base model's weights, and the
        major.minor versions of the libraries that compute the score."""
        from .identity import library_versions, source_digest

        cfg = {k: v for k, v in self.config.model_dump(mode="json").items() if k not in self.nonscoring_fields}
        cfg.pop("checkpoint", None)  # the path does not matter, its content does
        payload = {
            "branch": self.name,
            "version": self.version,
            "code": source_digest(type(self)),
            "libraries": library_versions(self.score_libraries),
            "config": cfg,
            "weights": self.weights_digest(),
        }
        base = self.base_weights_identity()
        if base:
            payload["base"] = base
        extra = self.scoring_identity()
        if extra:
            payload["resolved"] = extra
        if self.config.checkpoint:
            from .hub import snapshot_origin

            origin = snapshot_origin(self.config.checkpoint)
            if origin is not None:  # weights from the Hub: the repository's commit is part of the identity
                payload["hub"] = {"repo": origin[0], "revision": origin[1]}
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return f"{self.name}-{hashlib.sha256(blob).hexdigest()[:16]}"

    # ------------------------------------------------------------------ training
    def train(self, supervision: Any, out_dir: str | Path, train_config: dict | None = None, **kwargs) -> Path:
        """Deprecated: use :func:`aligncore.train.train_branch`. Trains a new branch built from this one's
        set options (this branch is left as it was) and returns the checkpoint folder."""
        from .train import train_branch_class

        warnings.warn("Branch.train is deprecated; use aligncore.train.train_branch(name, train_set, out, "
                      "branch_options=..., train_options=...) and reload with checkpoint=DIR",
                      DeprecationWarning, stacklevel=2)
        result = train_branch_class(type(self), supervision, out_dir, branch_options=self.config.model_dump(exclude_unset=True),
                                    train_options=train_config, **kwargs)
        return result.checkpoint

    def save(self, out_dir: str | Path) -> Path:
        """Write the trainable weights (safetensors / peft adapter) so ``checkpoint=out_dir`` reloads them."""
        raise AlignCoreError(f"branch {self.name!r} has no trainable weights to save.")
