"""Device, precision and seeding helpers shared by branches, builders and trainers.

Imports torch lazily inside each function so importing this module stays cheap.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterator

from .errors import AlignCoreError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(device: str = "auto") -> str:
    """'auto' → 'cuda' when a GPU is visible, else 'cpu'; an explicit CUDA request without a GPU is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise AlignCoreError(f"device {device!r} was requested but no CUDA device is visible; use --device cpu.")
    return device


def resolve_precision(precision: str, device: str) -> str:
    """'auto' → 'bf16' on CUDA, 'fp32' elsewhere; half precision on CPU falls back to fp32."""
    if precision not in PRECISIONS:
        raise AlignCoreError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}.")
    if precision == "auto":
        return "bf16" if str(device).startswith("cuda") else "fp32"
    return precision


def autocast_for(device: str, precision: str):
    """A ``torch.autocast`` context for a resolved precision (a no-op context for fp32)."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolve_precision(precision, device))
    if dtype is None:
        return nullcontext()
    return torch.autocast(str(device).split(":")[0], dtype=dtype)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's CPU RNG seeded to ``seed``, restoring the caller's RNG state after."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
