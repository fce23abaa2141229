"""Training configuration for the neural pixel experts (``dinov2``, ``npr``).

One typed config, every field with help text (``alignctl train npr --options`` prints
them). Values come from ``--config train.yaml`` and ``-o key=value``; a branch may
subclass it to change defaults or add switches of its own (dinov2: lr 1e-4, from_scratch).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from .base import TrainConfig


DEFAULT_EPOCHS = 3
UNLIMITED_EPOCHS = 10**9  # "until the budget ends"


class PixelTrainConfig(TrainConfig):
    branch_fields: ClassVar[tuple[str, ...]] = ("crop_size",)

    # ---- schedule
    epochs: int | None = Field(
        None, ge=1, description="Passes over the training pairs (or balanced images). Unset: 3, or no limit when "
        "max_minutes or max_steps is given (a budget given alone is the stopping rule)."
    )
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs for the LR schedule).")
    max_minutes: float | None = Field(
        None, gt=0, description="Wall-clock budget; training stops at the next step boundary, saves and evaluates. "
        "The cosine schedule then decays over whichever ends first, the steps or the budget. "
        "A time-limited run is not bit-reproducible (where it stops depends on the machine)."
    )
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps before the cosine decay.")
    scheduler: Literal["cosine", "constant"] = Field("cosine", description="Learning-rate schedule after warm-up.")
    batch_size: int = Field(16, ge=2, le=65536, description="Images per optimizer step (a pair counts two); must be even for paired batches.")
    grad_accum_steps: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step (batch_size is split across them).")
    max_grad_norm: float | None = Field(1.0, description="Gradient clipping norm (None: no clipping).")
    # ---- data
    crop_size: int | None = Field(None, ge=8, le=4096, description="Training window side (default: the branch's crop_size); random "
                                  "position, native resolution. Recorded in the checkpoint, so scoring uses it too.")
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="Share of pairs / source photos held out for validation (a pair is never split).")
    paired: Literal["auto", "yes", "no"] = Field(
        "auto", description="Paired batches (a real crop and its reconstruction at the same position): auto = when the set has pair_id."
    )
    jpeg_aug_prob: float = Field(
        0.0, ge=0.0, le=1.0, description="Probability of format-aligned JPEG augmentation (both crops of a pair at the same random quality)."
    )
    jpeg_quality_min: int = Field(60, ge=1, le=100, description="Lowest JPEG quality drawn for the augmentation.")
    jpeg_quality_max: int = Field(100, ge=1, le=100, description="Highest JPEG quality drawn for the augmentation.")
    cache_images: bool = Field(True, description="Keep decoded training images in memory (fast; ~3 bytes per pixel).")
    # ---- model
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass (less memory, slower).")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="auto = bf16 on GPU, none on CPU (CPU training is always fp32)."
    )
    # ---- bookkeeping
    seed: int = Field(0, description="Seed for the split, the data order, crops, augmentation and initialisation.")
    save_every_steps: int = Field(
        0, ge=0, description="Also save the resumable training state every N optimizer steps (0: at epoch ends only)."
    )
    resume: bool = Field(True, description="Resume from OUT/state when it exists (a killed run continues where it stopped).")
    eval_batch_size: int = Field(16, ge=1, le=65536, description="Images per forward pass during validation.")

    def planned_epochs(self) -> int:
        """The epoch limit in force: ``epochs`` when set, else 3, or (with a time or step budget) none."""
        if self.epochs is not None:
            return self.epochs
        return UNLIMITED_EPOCHS if (self.max_minutes or self.max_steps) else DEFAULT_EPOCHS

    @model_validator(mode="after")
    def _check(self):
        if self.jpeg_quality_min > self.jpeg_quality_max:
            raise ValueError("jpeg_quality_min must not exceed jpeg_quality_max")
        if self.batch_size % self.grad_accum_steps:
            raise ValueError("batch_size must be a multiple of grad_accum_steps")
        return self
