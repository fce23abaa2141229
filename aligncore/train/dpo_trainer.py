"""DPO training of the semantic branch (Qwen2.5-VL + LoRA) with trl's DPOTrainer.

Each labelled image becomes one preference row: the image and the branch's fixed prompt,
chosen = the correct verdict ("real"/"fake", optionally followed by a rationale),
rejected = the wrong one. With a peft config, trl's reference model is the base model
with the adapter disabled, so no second copy of the weights is held.

The output folder holds the adapter, the processor and ``aligncore_qwen.json`` (and, for
the tiny preset, the base model in ``base/``), so ``alignctl run --branches qwen
--checkpoint OUT`` reloads it. Trainer checkpoints go to ``OUT/trainer`` and a re-run
with the same ``--out`` resumes from the last one.

The same entry point works under ``accelerate launch -m aligncore train qwen ...``
(every process builds the same rows; only the main process writes the final files).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any, Sequence

from ..errors import AlignCoreError, ConfigError, DataError
from .dpo_config import DPOTrainConfig

VERDICTS = ("real", "fake")


def read_rows(supervision: Any, rationale_column: str) -> list[dict[str, Any]]:
    """A labelled set (manifest, folder or records) → [{path, label, rationale}], in a stable order."""
    from ..data import Record, load_dataset

    if isinstance(supervision, (list, tuple)):
        records: Sequence[Record] = supervision
        manifest = None
    else:
        src = Path(supervision)
        if src.is_dir() and (src / "manifest.csv").exists():
            src = src / "manifest.csv"  # a builder's output folder
        records = load_dataset(src).records
        manifest = src if src.is_file() and src.suffix.lower() == ".csv" else None
    rationales: dict[str, str] = {}
    if manifest is not None:
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if rationale_column in (reader.fieldnames or []):
                for row in reader:
                    text = (row.get(rationale_column) or "").strip()
                    if text:
                        rationales[str((manifest.parent / row["path"]).resolve())] = text
    rows = []
    for r in records:
        if r.label is None:
            raise DataError(f"{r.path}: DPO training needs a label (real/fake) for every image.")
        rows.append({"path": r.path, "label": int(r.label), "rationale": rationales.get(str(Path(r.path).resolve()), "")})
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


def build_dpo_config(cfg: DPOTrainConfig, out: Path, on_cpu: bool):
    import torch
    from trl import DPOConfig

    bf16 = cfg.bf16
    if bf16 is None:
        bf16 = (not on_cpu) and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if bf16 and on_cpu:
        raise ConfigError("bf16=true needs a GPU; leave it unset (auto) on CPU.")
    gc = cfg.gradient_checkpointing if cfg.gradient_checkpointing is not None else not on_cpu
    return DPOConfig(
        output_dir=str(out / "trainer"),
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
        gradient_checkpointing=gc,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        report_to=list(cfg.report_to) or "none",
        remove_unused_columns=False,  # the preference columns are produced by the transform
        dataloader_num_workers=cfg.dataloader_num_workers,
        deepspeed=cfg.deepspeed,
    )


def train_qwen_dpo(branch, supervision: Any, out_dir: str | Path, train_config: dict) -> Path:
    """Train ``branch`` (a QwenBranch) with DPO on ``supervision``; returns the checkpoint folder."""
    import datasets
    import transformers
    from peft import LoraConfig
    from transformers.trainer_utils import get_last_checkpoint
    from trl import DPOTrainer

    from aligncore_plugins import qwen_model as qm

    cfg = _make_train_config(train_config)
    if branch.config.checkpoint:
        raise ConfigError("DPO training starts from the base model: drop `checkpoint` from the branch options "
                          "(re-run with the same --out to resume an interrupted training).")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = read_rows(supervision, cfg.rationale_column)
    on_cpu = str(branch.device) == "cpu"
    args = build_dpo_config(cfg, out, on_cpu)
    is_main = args.process_index == 0

    processor = branch.processor()
    transformers.set_seed(cfg.seed)
    model = branch.load_base()
    if branch.config.preset == "tiny" and is_main:
        # the tiny base is part of the checkpoint, so a reload never depends on rebuilding it
        model.save_pretrained(out / qm.BASE_DIR)
    table = datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in ("path", "label", "rationale")})
    train_set = table.with_transform(_PreferenceTransform(branch.config.prompt, cfg.rationale_in_rejected))
    lora = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=qm.lora_target_regex(cfg.lora_target_modules), task_type="CAUSAL_LM",
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=train_set, processing_class=processor, peft_config=lora)
    last = get_last_checkpoint(args.output_dir) if cfg.resume and Path(args.output_dir).is_dir() else None
    result = trainer.train(resume_from_checkpoint=last)
    trained = trainer.model
    save_qwen_checkpoint(branch, trained, out, {
        "train_config": cfg.model_dump(mode="json"),
        "rows": len(rows),
        "rows_real": sum(1 for r in rows if r["label"] == 0),
        "rows_fake": sum(1 for r in rows if r["label"] == 1),
        "global_step": int(trainer.state.global_step),
        "train_loss": float(result.training_loss) if result.training_loss is not None else None,
        "resumed_from": Path(last).name if last else None,
    }, trainer=trainer)
    # the branch now scores with the trained weights, and its fingerprint names the saved checkpoint
    branch.config.checkpoint = str(out)
    branch.set_model(trained)
    return out


def _make_train_config(train_config: dict) -> DPOTrainConfig:
    from pydantic import ValidationError

    from ..component import format_validation_error

    try:
        return DPOTrainConfig(**(train_config or {}))
    except ValidationError as err:
        raise ConfigError(format_validation_error("DPO training", err)) from None


def save_qwen_checkpoint(branch, model, out: Path, info: dict, trainer=None) -> Path:
    """Adapter + processor + metadata (+ tiny base): everything ``checkpoint=out`` needs."""
    import peft
    import transformers
    import trl

    from aligncore_plugins import qwen_model as qm

    out.mkdir(parents=True, exist_ok=True)
    if trainer is not None:
        trainer.save_model(str(out))  # gathers sharded (DeepSpeed) weights; writes adapter + processor
        if not trainer.is_world_process_zero():
            return out
        (out / "training_args.bin").unlink(missing_ok=True)  # holds run paths; the meta file has the config
    else:
        if not hasattr(model, "peft_config"):
            raise AlignCoreError("this qwen model has no LoRA adapter to save (train it first).")
        model.save_pretrained(str(out))
        branch.processor().save_pretrained(str(out))
    if branch.config.preset == "tiny" and not (out / qm.BASE_DIR / "config.json").exists():
        base = qm.build_tiny_model(branch.processor().tokenizer)
        base.save_pretrained(out / qm.BASE_DIR)
    meta = {
        "branch": "qwen",
        "model": None if branch.config.preset == "tiny" else branch.config.model,
        "preset": branch.config.preset,
        "prompt": branch.config.prompt,
        "min_pixels": branch.config.min_pixels,
        "max_pixels": branch.config.max_pixels,
        "versions": {"transformers": transformers.__version__, "peft": peft.__version__, "trl": trl.__version__},
        **info,
    }
    tmp = out / (qm.META_NAME + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    tmp.replace(out / qm.META_NAME)
    return out


def clear_trainer_state(out_dir: str | Path) -> None:
    """Forget the resumable trainer checkpoints (the final adapter stays)."""
    shutil.rmtree(Path(out_dir) / "trainer", ignore_errors=True)
