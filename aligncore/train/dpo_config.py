"""Typed configuration of DPO training for a vision-language (semantic) branch.

Defaults are the AlignGemini paper's settings: learning rate 1e-6, beta 0.05, one epoch,
LoRA rank 16 (alpha 32) on the language model's projections. Everything else follows
trl's DPOConfig defaults unless the machine needs otherwise (CPU: no bf16, no
gradient checkpointing; ``max_length`` unset so image tokens are never cut).
``alignctl train BRANCH --options`` prints every field with its help.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from ..errors import ConfigError
from .base import TrainConfig


class DPOTrainConfig(TrainConfig):
    learning_rate: float = Field(1e-6, gt=0, description="Peak learning rate (paper: 1e-6).")
    beta: float = Field(0.05, gt=0, description="DPO beta: how far the policy may move from the reference (paper: 0.05).")
    num_train_epochs: float = Field(1.0, gt=0, description="Epochs over the preference rows (paper: 1).")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: run the epochs).")
    per_device_train_batch_size: int = Field(4, ge=1, description="Preference rows per device per step.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Steps accumulated before each optimizer update.")
    lr_scheduler_type: str = Field("linear", description="transformers scheduler name (linear, cosine, constant, ...).")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    lora_r: int = Field(16, ge=1, description="LoRA rank (paper: 16).")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha.")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA path.")
    lora_target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Projection names that get LoRA; the branch maps them to its language model "
        "(the vision tower never gets LoRA).",
    )
    rationale_column: str = Field("rationale", description="Manifest column whose text follows the chosen verdict "
                                  "(and, with rationale_in_rejected, the rejected one); unused when absent.")
    rationale_in_rejected: bool = Field(False, description="Also append the rationale to the rejected verdict.")
    bf16: bool | None = Field(None, description="bfloat16 mixed precision; None = on when the GPU supports it, off on CPU.")
    gradient_checkpointing: bool | None = Field(None, description="Recompute activations; None = on for GPU, off on CPU.")
    max_length: int | None = Field(None, ge=1, description="Truncate sequences to this many tokens; None never cuts "
                                   "(a cut through image tokens breaks training).")
    save_steps: int = Field(200, ge=1, description="Write a resumable trainer checkpoint every N steps.")
    save_total_limit: int | None = Field(2, ge=1, description="Keep at most this many trainer checkpoints.")
    logging_steps: int = Field(10, ge=1, description="Log the loss every N steps.")
    seed: int = Field(0, description="Seed for data order and LoRA initialisation.")
    dataloader_num_workers: int = Field(0, ge=0, description="Worker processes decoding images (at most one per CPU core).")

    @field_validator("dataloader_num_workers")
    @classmethod
    def _workers(cls, v):
        from ..limits import check_workers

        try:
            return check_workers(v, "dataloader_num_workers")
        except ConfigError as exc:
            raise ValueError(str(exc).rstrip(".")) from None
    deepspeed: str | None = Field(None, description="DeepSpeed JSON config (with `accelerate launch`), or None.")
    resume: bool = Field(True, description="Resume from the last trainer checkpoint in OUT/trainer when there is one.")
    report_to: list[str] = Field(default_factory=list, description="Experiment trackers (e.g. ['tensorboard']).")
