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
                 on_step: Callable[[int], None] | None = None, log: Callable[[str], None] | None = None):
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.branch_class, self.branch_config, self.config = branch_class, branch_config, config
        self.progress, self.on_step, self.log = progress, on_step, log

    def new_branch(self, **overrides: Any):
        """A branch of the trainer's own, from the branch config plus the train config's branch fields."""
        return self.branch_class(self.branch_config, **{**self.config.branch_overrides(), **overrides})

    def train(self, train_set: Any, out_dir: str | Path) -> TrainResult:
        raise NotImplementedError


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

