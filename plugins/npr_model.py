"""The compact CNN of the ``npr`` branch (imported lazily: it needs torch).

NPR (Tan et al., "Rethinking the Up-Sampling Operations in CNN-based Generative Network
for Generalizable Deepfake Detection", CVPR 2024): generators and decoders up-sample,
which ties neighbouring pixels together; the neighbouring-pixel residual
``x - nearest_up(x[::2, ::2])`` exposes that correlation and hides image content. The
residual is computed inside the model on the native-resolution window, so nothing is
resampled before it; the first two convolutions keep full resolution so the 2×2
structure of the residual is seen before any stride.
"""

from __future__ import annotations

import torch
from torch import nn


def npr_residual(x: torch.Tensor) -> torch.Tensor:
    """x − nearest-neighbour up-sampling of x[..., ::2, ::2] (even H and W)."""
    sub = x[..., ::2, ::2]
    up = sub.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    return x - up[..., : x.shape[-2], : x.shape[-1]]


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class NPRNet(nn.Module):
    """Residual → 6 conv blocks (two at full resolution, then two stride-2 stages) → global average → logit."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _block(3, w, 1), _block(w, w, 1),
            _block(w, 2 * w, 2), _block(2 * w, 2 * w, 1),
            _block(2 * w, 4 * w, 2), _block(4 * w, 4 * w, 1),
        )
        self.head = nn.Linear(4 * w, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = npr_residual(x) * 4.0  # residuals of [0, 1] pixels are small; a fixed gain helps the first BN start
        f = self.features(r).mean(dim=(2, 3))
        return self.head(f).squeeze(-1)
