"""Training: one ``<method>_config.py`` + ``<method>_trainer.py`` pair per method, chosen by the branch.

``train_branch("npr", "pixelset", "ckpt/npr", train_options={"epochs": 2})`` validates the
branch and training options before any work, trains with the branch's ``trainer_class``
and returns a :class:`TrainResult`; score with ``create_branch("npr", checkpoint=str(result.checkpoint))``.
Methods: ``pixel`` (npr, dinov2), ``dpo`` (VLM branches implementing the preference-model
protocol, e.g. qwen), ``linear`` (spectrum). Re-running with the same ``out`` resumes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from .base import TrainConfig, Trainer, TrainResult, read_metrics

__all__ = ["TrainConfig", "Trainer", "TrainResult", "read_metrics", "train_branch", "train_branch_class",
           "train_config_for", "trainable_branch"]


def trainable_branch(branch: str) -> type:
    """The registered branch class ``branch``; an error naming the trainable branches when it has no trainer."""
    from ..errors import AlignCoreError
    from ..registry import get_registry

    reg = get_registry()
    cls = reg.get("branch", branch).cls
    if cls.trainer_class is None or cls.train_config_class is None:
        able = [n for n in reg.names("branch") if reg.get("branch", n).cls.trainer_class is not None]
        raise AlignCoreError(f"branch {branch!r} cannot be trained (trainable branches: {', '.join(able) or 'none'}).")
    return cls


def train_config_for(branch_class: type, options: dict[str, Any] | None) -> TrainConfig:
    """``options`` validated against the branch's train config (unknown keys fail with close matches)."""
    from ..errors import AlignCoreError

    tcls = branch_class.train_config_class
    if branch_class.trainer_class is None or tcls is None:
        raise AlignCoreError(f"branch {branch_class.name!r} cannot be trained.")
    if not issubclass(tcls, branch_class.trainer_class.config_class):
        raise AlignCoreError(f"branch {branch_class.name!r}: train_config_class {tcls.__name__} is not a "
                             f"{branch_class.trainer_class.config_class.__name__}.")
    return tcls.from_options(options, f"training {branch_class.name!r}")


def train_branch(branch: str, train_set: Any, out: str | Path, *, branch_options: dict[str, Any] | None = None,
                 train_options: dict[str, Any] | None = None, progress: bool = True,
                 on_step: Callable[[int], None] | None = None, log: Callable[[str], None] | None = None,
                 command: str | None = None, allow_outside_paths: bool = False) -> TrainResult:
    """Train the registered branch ``branch`` on ``train_set`` (a builder's folder, a 0_real/1_fake folder,
    a manifest, or records) into ``out``; both option dicts are validated before any work.

    ``log`` receives one line per logging step (per epoch for pixel branches); ``command`` (the
    command line that asked for the training) is kept in ``OUT/training_run.json`` for model cards.
    The checkpoint folder records its training data's digest and the resolved configs (``training.json``);
    the result's ``summary`` says what happened (:func:`aligncore.train.base.format_summary` makes it one line).
    """
    return train_branch_class(trainable_branch(branch), train_set, out, branch_options=branch_options,
                              train_options=train_options, progress=progress, on_step=on_step, log=log, command=command,
                              allow_outside_paths=allow_outside_paths)


def train_branch_class(branch_class: type, train_set: Any, out: str | Path, *,
                       branch_options: dict[str, Any] | None = None, train_options: dict[str, Any] | None = None,
                       progress: bool = True, on_step: Callable[[int], None] | None = None,
                       log: Callable[[str], None] | None = None, command: str | None = None,
                       allow_outside_paths: bool = False) -> TrainResult:
    """:func:`train_branch` for a branch class (e.g. one not registered under a name). ``out`` may not be the
    training set's folder, lie inside it or hold it (the checkpoint would be written among the images).

    Training never starts from a branch's built-in weights (:func:`aligncore.builtin.not_used`)."""
    from ..builtin import not_used

    with not_used():
        tcfg = train_config_for(branch_class, train_options)
        bcfg = branch_class.make_config(branch_options)
        if isinstance(train_set, (str, Path)):
            from ..outputs import check_not_inputs

            check_not_inputs(out, [train_set], "--out", overwrite=None)
        kwargs: dict[str, Any] = {"progress": progress, "on_step": on_step, "log": log}
        if allow_outside_paths:
            kwargs["allow_outside_paths"] = True  # a third-party trainer written before the option need not take it
        trainer = branch_class.trainer_class(branch_class, bcfg, tcfg, **kwargs)
        result = trainer.train(train_set, out)
        if int(os.environ.get("RANK", "0")) == 0:  # under accelerate launch, rank 0 keeps the record
            write_training_record(Path(out), branch_class, train_set, bcfg, tcfg, result, command)
    return result


def write_training_record(out: Path, branch_class: type, train_set: Any, branch_config: Any, train_config: Any,
                          result: TrainResult, command: str | None) -> Path:
    """``OUT/training_run.json``: what was trained on what, how, and what came of it (read by model cards).

    Paths are kept as names only (a record travels with the weights to other machines).
    """
    import json
    import time

    from .. import __version__

    if isinstance(train_set, (str, Path)):
        data = Path(str(train_set)).name or str(train_set)
    else:
        data = f"{len(train_set)} records given through the Python API"
    record = {
        "branch": branch_class.name,
        "method": getattr(branch_class.trainer_class, "__name__", None),
        "train_set": data,
        "command": command,
        "branch_options": {k: v for k, v in branch_config.model_dump(mode="json", exclude_unset=True).items()
                           if k not in ("checkpoint", "device", "batch_size")},
        "train_options": train_config.model_dump(mode="json", exclude_unset=True),
        "summary": result.summary,
        "aligncore_version": __version__,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = out / "training_run.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
