"""What every training method shares: a typed config, a trainer, a result and the metrics log.

A method is one ``<method>_config.py`` + ``<method>_trainer.py`` pair. A branch names its
method with the class attributes ``trainer_class`` and ``train_config_class`` (the
method's config or a subclass that changes defaults or adds branch-specific switches).
A trainer takes the branch class, a branch config and a train config, builds branch
instances of its own when it needs model-building methods, and writes a checkpoint
folder; it never touches a branch a caller holds. The caller reloads the result with
``checkpoint=DIR``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from pydantic import ValidationError

from ..component import ComponentConfig, fields_help, format_validation_error
from ..errors import ConfigError

METRICS_FILE = "metrics.csv"
METRIC_COLUMNS = ["epoch", "step", "train_loss", "val_loss", "val_auc", "val_ap", "val_balanced_accuracy", "lr",
                  "elapsed_s", "stopped"]
#: keys every TrainResult.summary carries (None where the method does not know them)
SUMMARY_KEYS = ("steps", "epochs", "stop_reason", "best_epoch", "val_auc")


class TrainConfig(ComponentConfig):
    """Base of every training method's options (``-o KEY=VALUE``); every field has help text."""

    #: fields that, when set, also go into the config of the branch the trainer builds (e.g. crop_size)
    branch_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_options(cls, options: dict[str, Any] | None, owner: str = "training"):
        """Validated options; an unknown key fails with the closest known names."""
        try:
            return cls(**(options or {}))
        except ValidationError as err:
            raise ConfigError(format_validation_error(owner, err, cls.model_fields)) from None

    @classmethod
    def options_help(cls) -> list[tuple[str, str, str]]:
        return fields_help(cls)

    def branch_overrides(self) -> dict[str, Any]:
        """The ``branch_fields`` the user set, for the branch config the trainer builds."""
        return {k: getattr(self, k) for k in self.branch_fields
                if k in self.model_fields_set and getattr(self, k) is not None}


@dataclass
class TrainResult:
    """A finished (or resumed-to-the-end) training: the checkpoint to reload and what happened."""

    checkpoint: Path
    #: steps, epochs, stop_reason, best_epoch, val_auc (None where unknown) plus method-specific keys
    summary: dict[str, Any] = field(default_factory=dict)


def make_summary(**values: Any) -> dict[str, Any]:
    return {**{k: None for k in SUMMARY_KEYS}, **values}


class Trainer:
    """One training method. Subclasses set ``config_class`` and implement :meth:`train`.

    ``on_step(global_step)`` (where the method has steps of its own) is called after every
    optimizer step: progress hooks, and tests raise from it to simulate a killed run.
    ``log(line)`` receives one readable line per logging step (or epoch); the trainer never prints.
    """

    config_class: ClassVar[type[TrainConfig]] = TrainConfig

    def __init__(self, branch_class: type, branch_config: Any, config: TrainConfig, *, progress: bool = True,
                 on_step: Callable[[int], None] | None = None, log: Callable[[str], None] | None = None,
                 allow_outside_paths: bool = False):
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.branch_class, self.branch_config, self.config = branch_class, branch_config, config
        self.progress, self.on_step, self.log = progress, on_step, log
        self.allow_outside_paths = allow_outside_paths  # manifest paths outside the manifest's folder

    def training_record(self, records: Any, train_set: Any, **resolved: Any) -> dict[str, Any]:
        """What a checkpoint records about its training: the data (digest of every image's content hash and
        label), the train config as resolved, and the branch config."""
        return {
            "branch": getattr(self.branch_class, "name", ""),
            "trainer": type(self).__name__,
            "data": describe_training_data(records, train_set),
            "train_config": {**self.config.model_dump(mode="json"), **resolved},
            "branch_config": self.branch_config.model_dump(mode="json") if hasattr(self.branch_config, "model_dump")
            else dict(self.branch_config or {}),
        }

    def new_branch(self, **overrides: Any):
        """A branch of the trainer's own, from the branch config plus the train config's branch fields."""
        return self.branch_class(self.branch_config, **{**self.config.branch_overrides(), **overrides})

    def train(self, train_set: Any, out_dir: str | Path) -> TrainResult:
        raise NotImplementedError


TRAINING_FILE = "training.json"


def describe_training_data(records: Any, source: Any = None) -> dict[str, Any]:
    """``{"digest", "n_images", "n_real", "n_fake", "source"}`` of a training set given as records with
    ``path`` and ``label`` (or dicts with those keys). The digest covers the sha256 of every image's bytes and
    its label, in a stable order, so the same folder with one image changed gives another digest."""
    import hashlib

    from ..hashing import sha256_file

    lines = []
    n_real = n_fake = 0
    for r in records:
        path, label = (r["path"], r["label"]) if isinstance(r, dict) else (r.path, r.label)
        lines.append(f"{sha256_file(path)}\t{int(label)}")
        n_real += int(label) == 0
        n_fake += int(label) == 1
    digest = hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()
    # the set's name only: the record travels with the weights to other machines (no machine paths)
    where = None if source is None or isinstance(source, (list, tuple)) else (Path(str(source)).name or str(source))
    return {"digest": digest, "n_images": len(lines), "n_real": n_real, "n_fake": n_fake, "source": where}


def write_training_record(folder: str | Path, record: dict[str, Any]) -> Path:
    """``folder/training.json``: the record of :meth:`Trainer.training_record` (beside the weights)."""
    import json

    path = Path(folder) / TRAINING_FILE
    path.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return path


def format_summary(summary: dict[str, Any]) -> str:
    """One line: steps, epochs, stop reason, best epoch, validation AUC (and the data digest)."""

    def show(v: Any) -> str:
        if v is None:
            return "n/a"
        return f"{v:.4g}" if isinstance(v, float) and not float(v).is_integer() else str(int(v) if isinstance(v, float) else v)

    auc = summary.get("val_auc")
    parts = [f"steps {show(summary.get('steps'))}", f"epochs {show(summary.get('epochs'))}",
             f"stopped: {summary.get('stop_reason') or 'n/a'}", f"best epoch {show(summary.get('best_epoch'))}",
             f"validation AUC {'n/a' if auc is None else f'{float(auc):.4f}'}"]
    if summary.get("data_digest"):
        parts.append(f"data {str(summary['data_digest'])[:12]}")
    return ", ".join(parts)


def append_metrics(path: Path, row: dict) -> None:
    """One row of ``metrics.csv`` (header written with the first row)."""
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
        if new:
            w.writeheader()
        w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in METRIC_COLUMNS})


def read_metrics(out_dir: str | Path) -> list[dict]:
    """The rows of ``OUT/metrics.csv`` ([] when there is none)."""
    p = Path(out_dir) / METRICS_FILE
    if not p.exists():
        return []
    with open(p, newline="") as f:
        return list(csv.DictReader(f))

