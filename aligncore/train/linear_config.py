"""Training configuration of linear-model branches (``spectrum``): standardisation + logistic regression.

Every field has help text (``alignctl train spectrum --options`` prints them); values come
from ``--config train.yaml`` and ``-o key=value``.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from .base import TrainConfig


class LinearTrainConfig(TrainConfig):
    C: float = Field(0.1, gt=0, description="Inverse L2 regularisation of the logistic regression.")
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="Share of pairs / source photos held out for validation.")
    seed: int = Field(0, description="Seed for the split and the augmentation.")
    jpeg_aug_prob: float = Field(0.0, ge=0.0, le=1.0, description="Probability that a pair (both images) is re-encoded "
                                 "as JPEG at one random quality.")
    jpeg_quality_min: int = Field(60, ge=1, le=100, description="Lowest JPEG quality drawn for the augmentation.")
    jpeg_quality_max: int = Field(100, ge=1, le=100, description="Highest JPEG quality drawn for the augmentation.")
    max_iter: int = Field(5000, ge=10, description="Solver iterations.")

    @model_validator(mode="after")
    def _check(self):
        if self.jpeg_quality_min > self.jpeg_quality_max:
            raise ValueError("jpeg_quality_min must not exceed jpeg_quality_max")
        return self
