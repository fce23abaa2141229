"""DPO training of a vision-language branch (LoRA) with trl's DPOTrainer.

Each labelled image becomes one preference row: the image and the branch's fixed prompt,
chosen = the correct verdict ("real"/"fake", optionally followed by a rationale),
rejected = the wrong one. With a peft config, trl's reference model is the base model
with the adapter disabled, so no second copy of the weights is held.

Any branch implementing :data:`PREFERENCE_MODEL_PROTOCOL` can be trained (qwen does):

- ``processor()``: the processing class (tokenizer + image processor);
- ``load_base()``: the base model without adapter (on CPU, in the training dtype);
- ``prompt``: the fixed question;
- ``lora_targets(projections)``: peft ``target_modules`` for those projection names;
- ``save_checkpoint(model, out, info)``: write, beside the adapter and processor already
  saved in ``out``, everything ``checkpoint=out`` needs (metadata, base weights not on the Hub);
- ``device``.

Trainer checkpoints go to ``OUT/trainer`` and a re-run with the same ``--out`` resumes from
the last one. The same entry point works under ``accelerate launch -m aligncore train BRANCH
...`` (every process builds the same rows; only the main process writes the final files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import AlignCoreError, ConfigError, DataError
from .base import Trainer, TrainResult, make_summary, write_training_record
from .dpo_config import DPOTrainConfig

TRAINER_DIR = "trainer"  # resumable trainer checkpoints (not part of the weights)
PREFERENCE_MODEL_PROTOCOL = ("processor", "load_base", "prompt", "lora_targets", "save_checkpoint", "device")
VERDICTS = ("real", "fake")


def read_rows(supervision: Any, rationale_column: str, allow_outside: bool = False) -> list[dict[str, Any]]:
    """A labelled set (manifest, folder or records) → [{path, label, rationale}], in a stable order."""
    from ..data import Record, load_dataset
    from ..data.datasets import require_files

    records: Sequence[Record] = (supervision if isinstance(supervision, (list, tuple))
                                 else load_dataset(supervision, allow_outside=allow_outside).records)
    require_files(records, "DPO training")
    rows = []
    for r in records:
        if r.label is None:
            raise DataError(f"{r.path}: DPO training needs a label (real/fake) for every image.")
        rows.append({"path": r.path, "label": int(r.label), "rationale": (r.extra.get(rationale_column) or "").strip()})
    if not rows:
        raise DataError(f"no images in the training set {supervision}.")
    if len({r["label"] for r in rows}) < 2:
        raise DataError("the training set holds only one class; DPO on verdicts needs real and fake images.")
    return rows


def preference_rows(batch: dict[str, list], prompt: str, rationale_in_rejected: bool) -> dict[str, list]:
    """Batch transform: manifest columns → trl's conversational vision-preference format."""
    from ..data import load_image

    out: dict[str, list] = {"images": [], "prompt": [], "chosen": [], "rejected": []}
    for path, label, rationale in zip(batch["path"], batch["label"], batch["rationale"]):
        right, wrong = VERDICTS[int(label)], VERDICTS[1 - int(label)]
        chosen = f"{right}. {rationale}" if rationale else right
        rejected = f"{wrong}. {rationale}" if rationale and rationale_in_rejected else wrong
        out["images"].append([load_image(path)])
        out["prompt"].append([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}])
        out["chosen"].append([{"role": "assistant", "content": [{"type": "text", "text": chosen}]}])
        out["rejected"].append([{"role": "assistant", "content": [{"type": "text", "text": rejected}]}])
    return out


class _PreferenceTransform:
    """Picklable ``with_transform`` callable (dataloader workers may be separate processes)."""

    def __init__(self, prompt: str, rationale_in_rejected: bool):
        self.prompt, self.rationale_in_rejected = prompt, rationale_in_rejected

    def __call__(self, batch):
        return preference_rows(batch, self.prompt, self.rationale_in_rejected)


def build_dpo_config(cfg: DPOTrainConfig, out: Path, on_cpu: bool, progress: bool = True):
    import torch
    from trl import DPOConfig

    bf16 = cfg.bf16
    if bf16 is None:
        bf16 = (not on_cpu) and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if bf16 and on_cpu:
        raise ConfigError("bf16=true needs a GPU; leave it unset (auto) on CPU.")
    gc = cfg.gradient_checkpointing if cfg.gradient_checkpointing is not None else not on_cpu
    return DPOConfig(**checkpointing_argument(DPOConfig, gc),
        output_dir=str(out / TRAINER_DIR),
        learning_rate=cfg.learning_rate,
        beta=cfg.beta,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_steps,
        max_length=cfg.max_length,
        bf16=bool(bf16),
        use_cpu=on_cpu,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        report_to=list(cfg.report_to) or "none",
        remove_unused_columns=False,  # the preference columns are produced by the transform
        dataloader_num_workers=cfg.dataloader_num_workers,
        deepspeed=cfg.deepspeed,
        disable_tqdm=not progress,
    )


def checkpointing_argument(config_class, on: bool) -> dict[str, bool]:
    """Activation checkpointing under the name this transformers knows (``gradient_checkpointing`` is a
    deprecated alias in transformers 5 and warns when used)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(config_class)}
    return {"activation_checkpointing": on} if "activation_checkpointing" in names else {"gradient_checkpointing": on}


def log_line(logs: dict[str, Any], step: int, max_steps: int) -> str:
    """One readable line for a trainer log entry (the loss and DPO rewards first), or the end-of-training summary."""
    logs = {k: v for k, v in logs.items() if k != "total_flos"}
    if "train_runtime" in logs:
        loss = logs.get("train_loss")
        return (f"done: {step} steps in {float(logs['train_runtime']):.1f} s"
                + (f", mean loss {float(loss):.4f}" if loss is not None else ""))
    first = ("loss", "rewards/accuracies", "rewards/margins", "learning_rate", "grad_norm", "epoch")
    parts = [f"step {step}/{max_steps}" if max_steps > 0 else f"step {step}"]
    for k in [*[k for k in first if k in logs], *sorted(k for k in logs if k not in first)]:
        v = logs[k]
        if isinstance(v, float):
            v = f"{v:.3g}" if k in ("learning_rate", "epoch") else f"{v:.4f}"
        parts.append(f"{k} {v}")
    return "  ".join(parts)


class DPOTrainer(Trainer):
    """Train a preference-model branch class with DPO + LoRA; returns ``OUT`` as the checkpoint.

    After :meth:`train`, ``self.branch`` (the trainer's own branch) and ``self.model`` (the
    trained model with its adapter) are available to callers that want to inspect them.
    """

    config_class = DPOTrainConfig
    config: DPOTrainConfig

    def __init__(self, branch_class, branch_config, config: DPOTrainConfig, *, progress: bool = True,
                 on_step: Callable[[int], None] | None = None, log: Callable[[str], None] | None = None,
                 allow_outside_paths: bool = False):
        super().__init__(branch_class, branch_config, config, progress=progress, on_step=on_step, log=log,
                         allow_outside_paths=allow_outside_paths)
        missing = [m for m in PREFERENCE_MODEL_PROTOCOL if not hasattr(branch_class, m)]
        if missing:
            raise AlignCoreError(f"branch {branch_class.name!r} cannot use the DPO trainer: it lacks {', '.join(missing)}.")
        if getattr(branch_config, "checkpoint", None):
            raise ConfigError("DPO training starts from the base model: drop `checkpoint` from the branch options "
                              "(re-run with the same --out to resume an interrupted training).")
        self.branch = self.new_branch()
        self.model = None

    def train(self, train_set: Any, out_dir: str | Path) -> TrainResult:
        import datasets
        import transformers
        from peft import LoraConfig
        from transformers.trainer_utils import get_last_checkpoint
        from trl import DPOTrainer as TRLDPOTrainer

        cfg, branch = self.config, self.branch
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        rows = read_rows(train_set, cfg.rationale_column, self.allow_outside_paths)
        record = self.training_record(rows, train_set)
        args = build_dpo_config(cfg, out, str(branch.device) == "cpu", progress=self.progress)
        processor = branch.processor()
        transformers.set_seed(cfg.seed)
        model = branch.load_base()
        table = datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in ("path", "label", "rationale")})
        train_rows = table.with_transform(_PreferenceTransform(branch.prompt, cfg.rationale_in_rejected))
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=branch.lora_targets(cfg.lora_target_modules), task_type="CAUSAL_LM")
        trainer = TRLDPOTrainer(model=model, args=args, train_dataset=train_rows, processing_class=processor,
                                peft_config=lora, callbacks=self._callbacks())
        self._quiet_logs(trainer)
        last = get_last_checkpoint(args.output_dir) if cfg.resume and Path(args.output_dir).is_dir() else None
        if last:
            from ..safeio import check_folder

            check_folder(last)  # the trainer unpickles optimizer, scheduler and RNG states on its own
        result = trainer.train(resume_from_checkpoint=last)
        self.model = trainer.model
        info = {
            "train_config": cfg.model_dump(mode="json"),
            "rows": len(rows),
            "rows_real": sum(1 for r in rows if r["label"] == 0),
            "rows_fake": sum(1 for r in rows if r["label"] == 1),
            "global_step": int(trainer.state.global_step),
            "train_loss": float(result.training_loss) if result.training_loss is not None else None,
            "resumed_from": Path(last).name if last else None,
            "training_data": record["data"],
        }
        trainer.save_model(str(out))  # gathers sharded (DeepSpeed) weights; writes adapter + processor
        if trainer.is_world_process_zero():
            (out / "training_args.bin").unlink(missing_ok=True)  # holds run paths; the metadata has the config
            branch.save_checkpoint(self.model, out, info)
            write_training_record(out, record)
        stop = "max_steps" if cfg.max_steps > 0 and info["global_step"] >= cfg.max_steps else "epochs"
        summary = make_summary(steps=info["global_step"], epochs=float(trainer.state.epoch or 0), stop_reason=stop,
                               train_loss=info["train_loss"], resumed_from=info["resumed_from"], rows=len(rows),
                               data_digest=record["data"]["digest"])
        return TrainResult(out, summary)

    def _callbacks(self) -> list | None:
        """``on_step(global_step)`` after every optimizer step, and ``log`` once per logging step."""
        from transformers import TrainerCallback

        on_step, log = self.on_step, self.log
        out = []
        if on_step is not None:
            class OnStep(TrainerCallback):
                def on_step_end(self, args, state, control, **kwargs):
                    on_step(int(state.global_step))

            out.append(OnStep())
        if log is not None:
            class LogLines(TrainerCallback):
                def on_log(self, args, state, control, logs=None, **kwargs):
                    if logs and state.is_world_process_zero:
                        log(log_line(logs, int(state.global_step), int(state.max_steps or 0)))

            out.append(LogLines())
        return out or None

    @staticmethod
    def _quiet_logs(trainer) -> None:
        """transformers prints every log entry as a raw dict; the ``log`` callback says it in one line instead."""
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        trainer.remove_callback(PrinterCallback)
        for cb in list(trainer.callback_handler.callbacks):
            if isinstance(cb, ProgressCallback):
                cb.on_log = lambda *a, **k: None  # keep its progress bar, drop its dict printing

