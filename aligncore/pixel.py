"""Base classes for pixel experts: branches that look at pixels at native resolution.

A pixel branch never resamples. Its preprocessing cuts ``inference_crops`` windows of
``crop_size`` pixels out of the image as it is (a centre crop for one, an even grid for
more; images smaller than the window are padded by ``pad_mode``), and its score is the
mean logit over those windows. Training takes one random window per image at the same
size (see :mod:`aligncore.train.pixel_trainer`).

:class:`NeuralPixelBranch` adds what the shared trainer needs from a torch model: a
``model`` that maps a normalised (N, 3, S, S) batch to N logits, the parameters to
train, and save/load of the trainable weights as safetensors beside a ``branch.json``
that records the architecture, so ``checkpoint=DIR`` alone rebuilds the right model (the
fields a caller leaves unset adopt the recorded values; a conflicting set value is an error).
It trains with :class:`aligncore.train.pixel_trainer.PixelTrainer`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from .branch import Branch, BranchConfig, scores_from_logits
from .data.crops import center_position, cut_windows, grid_positions
from .errors import ConfigError
from .hashing import digest_files
from .torchutil import autocast_for, resolve_precision
from .train.pixel_config import PixelTrainConfig
from .train.pixel_trainer import PixelTrainer

BRANCH_FILE = "branch.json"
#: default activation budgets (MB) of one scoring forward pass; see benchmarks/perf/peer_baseline.py
CPU_ACTIVATION_MB = 8.0
CUDA_ACTIVATION_MB = 1024.0


class PixelBranchConfig(BranchConfig):
    crop_size: int = Field(128, ge=8, le=4096, description="Side of the square window cut at native resolution (no resizing).")
    inference_crops: int = Field(
        4, ge=1, le=1024, description="Windows averaged per image when scoring: 1 = centre crop, more = an even grid over the image."
    )
    crop_align: int = Field(
        8, ge=1, le=4096, description="Window positions are multiples of this (keeps JPEG-block and decoder-upsampling phase)."
    )
    pad_mode: Literal["reflect", "constant"] = Field(
        "reflect", description="How an image smaller than the window is padded (bottom/right): mirror or zeros."
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Scoring precision of neural pixel branches: auto = bf16 autocast on CUDA, fp32 on CPU."
    )
    activation_mb: float | None = Field(
        None, gt=0, description="Neural pixel branches: the largest activation tensor one forward pass may make when "
        f"scoring, in MB; a batch's windows go through the model in chunks that stay under it (one window at least). "
        f"Default: the branch's own, measured where CPU time per image is lowest ({CPU_ACTIVATION_MB:g} on CPU unless "
        f"the branch says otherwise), {CUDA_ACTIVATION_MB:g} on CUDA. Scores do not depend on it."
    )


def resolve_checkpoint(path: str | Path) -> Path:
    """A trainer's output folder → its ``best/`` weights; a weights folder → itself."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"checkpoint {p} does not exist; train one with `alignctl train BRANCH --set SET --out DIR`.")
    if (p / BRANCH_FILE).exists():
        return p
    for sub in ("best", "last"):
        if (p / sub / BRANCH_FILE).exists():
            return p / sub
    raise ConfigError(f"{p} holds no trained weights ({BRANCH_FILE} missing in it, best/ and last/).")


class PixelBranch(Branch):
    """Native-resolution multi-crop preprocessing shared by every pixel expert."""

    config_class: ClassVar[type[PixelBranchConfig]] = PixelBranchConfig
    #: config fields a checkpoint decides (recorded in its branch.json, adopted when ``checkpoint`` is set)
    architecture_fields: ClassVar[tuple[str, ...]] = ("crop_size", "crop_align")
    #: files of a checkpoint folder whose bytes decide scores
    weight_files: ClassVar[tuple[str, ...]] = (BRANCH_FILE,)
    source_modules = ("aligncore.data.crops",)
    nonscoring_fields = Branch.nonscoring_fields | {"activation_mb"}
    config: PixelBranchConfig

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def checkpoint_record(cls, checkpoint) -> dict[str, Any]:
        """The architecture recorded in the checkpoint's branch.json (so `--checkpoint DIR` alone is enough)."""
        from .parsing import read_structured

        folder = resolve_checkpoint(checkpoint)
        info = read_structured(folder / BRANCH_FILE, "checkpoint file", fmt="json", max_bytes=1 << 20)
        arch = info.get("architecture", {}) if isinstance(info, dict) else None
        if not isinstance(arch, dict):
            raise ConfigError(f"checkpoint file {folder / BRANCH_FILE} is not a branch description written by "
                              "aligncore (no 'architecture' mapping).")
        if info.get("branch") not in (None, cls.name):
            raise ConfigError(f"{folder} was written by branch {info.get('branch')!r}, not {cls.name!r}.")
        return {k: v for k, v in arch.items() if k in cls.architecture_fields}

    @property
    def checkpoint_dir(self) -> Path | None:
        """The folder of the weights to load: the checkpoint's, else the built-in weights' (None: neither)."""
        return resolve_checkpoint(self.config.checkpoint) if self.config.checkpoint else self.builtin_folder()

    def checkpoint_folder(self) -> Path | None:
        return self.checkpoint_dir

    def architecture(self) -> dict:
        return {k: getattr(self.config, k) for k in self.architecture_fields}

    def write_branch_file(self, out_dir: Path, extra: dict | None = None) -> None:
        info = {"branch": self.name, "version": self.version, "architecture": self.architecture(), **(extra or {})}
        (out_dir / BRANCH_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")

    def weights_digest(self) -> str:
        folder = self.checkpoint_dir
        if folder is None:
            return ""
        return digest_files(folder, [f for f in self.weight_files if (folder / f).exists()])

    def input_nbytes(self) -> int:
        """``inference_crops`` uint8 windows per image, plus the float32 copy the model normalises."""
        c = self.config
        return c.inference_crops * c.crop_size * c.crop_size * 3 * (1 + 4)

    # ------------------------------------------------------------------ preprocessing
    def window_positions(self, h: int, w: int) -> list[tuple[int, int]]:
        """The ``inference_crops`` (top, left) positions of the scoring windows in an h×w image."""
        c = self.config
        return window_positions(h, w, c.crop_size, c.inference_crops, c.crop_align)

    def crops(self, image, channels_first: bool = False) -> np.ndarray:
        """PIL RGB (or uint8 H×W×3 array) → uint8 array (K, S, S, 3), or (K, 3, S, S) with ``channels_first``:
        ``inference_crops`` windows at native resolution, without copying the whole image (:func:`cut_windows`)."""
        w, h = (image.shape[1], image.shape[0]) if isinstance(image, np.ndarray) else image.size
        return cut_windows(image, self.window_positions(h, w), self.config.crop_size, self.config.pad_mode, channels_first)


def window_positions(h: int, w: int, size: int, n: int, align: int) -> list[tuple[int, int]]:
    """Exactly ``n`` window positions whose mean counts every window used equally.

    An image with at least ``n`` aligned positions gives ``n`` distinct windows. A smaller one cannot
    fill ``n`` distinct windows (the batch needs ``n`` per image), so it uses ``s`` of them, ``s`` the
    largest divisor of ``n`` it can offer, each ``n / s`` times: the mean over the ``n`` windows is the
    mean over those ``s``, never a mean that counts one window more often than another.
    """
    pos = grid_positions(h, w, size, n, align)
    if len(pos) >= n:
        return pos[:n]
    s = max(k for k in range(1, len(pos) + 1) if n % k == 0)
    if s == 1:
        pick = [center_position(h, w, size, align)]
    else:
        pick = [pos[round(i * (len(pos) - 1) / (s - 1))] for i in range(s)]
    return [p for p in pick for _ in range(n // s)]


class NeuralPixelBranch(PixelBranch):
    """A pixel branch with a torch model the shared pixel trainer can train.

    Subclasses implement :meth:`build_model` (sets ``self.model``), :meth:`normalize`,
    :meth:`trainable_state_dict` / :meth:`load_trainable_state_dict`, :meth:`load_weights`
    and :meth:`save`; they may set ``train_config_class`` to a :class:`PixelTrainConfig`
    subclass with defaults of their own (e.g. a learning rate).
    """

    trainer_class = PixelTrainer
    train_config_class = PixelTrainConfig

    weight_files = (BRANCH_FILE, "model.safetensors", "head.safetensors", "adapter_model.safetensors", "adapter_config.json")
    score_libraries = PixelBranch.score_libraries + ("torch",)
    model: Any = None
    #: default activation budget (MB) on CPU, measured per model family (``activation_mb`` overrides it)
    cpu_activation_mb: ClassVar[float] = CPU_ACTIVATION_MB
    #: scoring work since the branch was built (``alignctl run --profile`` reports them)
    windows_scored: int = 0
    forward_passes: int = 0

    def untrained(self) -> str | None:
        """A neural pixel branch scores with trained weights (``checkpoint``) or, for tests and demos, a preset
        that asks for random weights; anything else would be a random model presented as a detector."""
        if self.config.checkpoint or self.uses_builtin_weights or self.preset_flag(self.config.preset, "weights") == "random":
            return None
        randoms = sorted(p for p in self.presets if self.preset_flag(p, "weights") == "random")
        hint = f", or use the random-weight preset for tests (--preset {randoms[0]})" if randoms else ""
        return (f"branch {self.name!r} has no trained weights to score with: train it (`alignctl train {self.name} "
                f"--set SET --out DIR`) and score with --checkpoint DIR{hint}.{self.builtin_hint()}")

    def preprocess(self, image):
        import torch

        return torch.from_numpy(self.crops(image, channels_first=True))  # (K, 3, S, S) uint8

    def collate(self, items):
        """Stack the images' windows into (B, K, 3, S, S) uint8, in page-locked memory when scoring on CUDA
        (that copy is needed anyway; from there the transfer runs asynchronously)."""
        import torch

        if not items or len({tuple(x.shape) for x in items}) != 1:
            return super().collate(items)
        pin = str(self.device).startswith("cuda")
        out = torch.empty((len(items), *items[0].shape), dtype=items[0].dtype, pin_memory=pin)
        return torch.stack(list(items), out=out)

    def normalize(self, x):
        """uint8 (N, 3, S, S) on the model's device → the float input the model expects."""
        raise NotImplementedError

    def logits(self, x_uint8):
        """uint8 (N, 3, S, S) → (N,) logits."""
        return self.model(self.normalize(x_uint8)).reshape(-1)

    def resolved_precision(self) -> str:
        return resolve_precision(self.config.precision, self.device)

    def scoring_identity(self) -> dict:
        # bf16 scores differ from fp32 ones: never mix them under one store key
        return {"precision": self.resolved_precision()}

    def activation_budget_mb(self) -> float:
        c = self.config.activation_mb
        return c if c is not None else CUDA_ACTIVATION_MB if str(self.device).startswith("cuda") else self.cpu_activation_mb

    def window_activation_bytes(self) -> int:
        """Bytes of the largest tensor one window makes in a scoring forward pass (measured once, on one
        window, with forward hooks on the model's leaf modules; at least the normalised float input)."""
        if getattr(self, "_window_bytes", None) is None:
            import torch

            sizes = [3 * self.config.crop_size**2 * 4]

            def hook(module, args, out):
                if isinstance(out, torch.Tensor):
                    sizes.append(out.numel() * out.element_size())

            self.model.eval()
            leaves = [m for m in self.model.modules() if next(m.children(), None) is None]
            handles = [m.register_forward_hook(hook) for m in leaves]
            dev = str(self.device)
            try:
                x = torch.zeros((1, 3, self.config.crop_size, self.config.crop_size), dtype=torch.uint8, device=dev)
                with torch.inference_mode(), autocast_for(dev, self.resolved_precision()):
                    self.logits(x)
            finally:
                for h in handles:
                    h.remove()
            self._window_bytes = max(sizes)
        return self._window_bytes

    def windows_per_forward(self) -> int:
        """How many windows one forward pass takes: as many as fit the activation budget, one at least."""
        return max(1, int(self.activation_budget_mb() * 2**20 // self.window_activation_bytes()))

    def window_logits(self, windows):
        """uint8 (N, 3, S, S) windows → (N,) float32 logits, in forward passes of :meth:`windows_per_forward`
        windows: each window's logit does not depend on which others share its pass, and the activations
        stay within the budget however large the batch (large activations cost page faults on a CPU)."""
        import torch

        dev = str(self.device)
        step = self.windows_per_forward()
        out = []
        with autocast_for(dev, self.resolved_precision()):
            for i in range(0, len(windows), step):
                # uint8 crosses to the GPU (4x fewer bytes than float), asynchronously from pinned memory
                x = windows[i : i + step].to(dev, non_blocking=dev.startswith("cuda"))
                out.append(self.logits(x).float())
        self.forward_passes += len(out)
        self.windows_scored += len(windows)
        if not out:
            return torch.empty(0, device=dev)
        return torch.cat(out) if len(out) > 1 else out[0]

    def score_counts(self) -> dict[str, int]:
        return {"windows": self.windows_scored, "forward_passes": self.forward_passes}

    def score_batch(self, batch) -> list[float]:
        if any(m.training for m in self.model.modules()):  # e.g. handed back by a trainer; eval() walks and
            self.model.eval()  # sets every module each time (3x the cost of this check, per batch)
        b, k = batch.shape[:2]
        z = self.window_logits(batch.reshape(b * k, *batch.shape[2:])).reshape(b, k).mean(dim=1)  # the windows' mean logit
        # P(fake) from the logit in float64: a float32 sigmoid rounds every |logit| > ~17 to exactly 0 or 1
        return scores_from_logits(z.cpu().double().tolist())

    # ------------------------------------------------------------------ training hooks
    def build_model(self, for_training: bool = False) -> None:
        raise NotImplementedError

    def load(self) -> None:
        problem = self.untrained()
        if problem:
            raise ConfigError(problem)
        from .errors import AlignCoreError

        self.build_model()
        folder = self.checkpoint_dir  # a checkpoint, or the built-in weights
        if folder is not None:
            try:
                self.load_weights(folder)
            except (RuntimeError, KeyError, ValueError, TypeError) as exc:  # tensors that do not fit the model
                first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
                raise AlignCoreError(f"checkpoint {folder}: its weights do not fit branch {self.name!r} "
                                     f"as recorded in {BRANCH_FILE} ({first}).") from None
        self.model.to(self.device).eval()
        self._window_bytes = None

    def trainable_parameters(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict:
        raise NotImplementedError

    def load_trainable_state_dict(self, sd: dict) -> None:
        raise NotImplementedError

    def load_weights(self, folder: Path) -> None:
        raise NotImplementedError

    def save(self, out_dir) -> Path:
        """Write the trainable weights + branch.json; ``checkpoint=out_dir`` reloads them."""
        raise NotImplementedError
