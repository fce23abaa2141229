"""Built-in plugin: the ``spectrum`` baseline — residual log-spectrum + logistic regression.

Features: the grey image minus a 3×3 binomial blur (the high-frequency residual), cut
into ``tile``×``tile`` windows at native resolution (up to ``max_tiles`` on an even grid),
log-magnitude of each window's 2-D FFT, averaged over windows (rfft half-plane:
tile × (tile/2+1) numbers). A decoder's periodic up-sampling leaves peaks there.
Classifier: standardisation + logistic regression, fitted in seconds by ``alignctl train
spectrum`` (:mod:`aligncore.train.linear_trainer`); saved as safetensors (no pickle) and
scored with numpy. Without ``checkpoint`` or ``preset`` it scores with its built-in fit
(``builtin_weights``, produced by ``benchmarks/build_builtin.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field

from aligncore import hookimpl
from aligncore.branch import scores_from_logits
from aligncore.data.crops import crop, grid_positions
from aligncore.errors import AlignCoreError
from aligncore.data.images import rgb_array
from aligncore.pixel import PixelBranch, PixelBranchConfig
from aligncore.safeio import load_numpy_arrays, save_numpy_arrays
from aligncore.train.linear_config import LinearTrainConfig
from aligncore.train.linear_trainer import LinearTrainer

WEIGHTS = "spectrum.safetensors"


class SpectrumConfig(PixelBranchConfig):
    tile: int = Field(64, ge=8, le=1024, description="FFT window side at native resolution.")
    max_tiles: int = Field(64, ge=1, le=1024, description="Windows averaged per image (an even grid; they overlap on small images, and an image smaller than a tile is padded).")
    crop_size: int = Field(64, ge=8, description="Unused by this branch (its window is `tile`); kept for the shared crop settings.")


def blur_residual(gray: np.ndarray) -> np.ndarray:
    """gray − 3×3 binomial blur (reflect borders)."""
    p = np.pad(gray, 1, mode="reflect") if min(gray.shape) > 1 else np.pad(gray, 1, mode="edge")
    v = (p[:-2] + 2 * p[1:-1] + p[2:]) / 4
    b = (v[:, :-2] + 2 * v[:, 1:-1] + v[:, 2:]) / 4
    return gray - b


def spectrum_features(arr: np.ndarray, tile: int, max_tiles: int, align: int, pad_mode: str = "reflect") -> np.ndarray:
    gray = arr.mean(axis=2, dtype=np.float32) / 255.0  # as astype(float32).mean, without a float copy of all 3 channels
    res = blur_residual(gray)[..., None]
    h, w = res.shape[:2]
    tiles = np.stack([crop(res, t, l, tile, pad_mode)[..., 0] for t, l in grid_positions(h, w, tile, max_tiles, align)])
    mag = np.abs(np.fft.rfft2(tiles))
    return np.log(mag + 1e-4).mean(axis=0).reshape(-1).astype(np.float32)


class SpectrumBranch(PixelBranch):
    """Residual log-spectrum features + logistic regression (the floor every learned pixel expert must beat)."""

    name = "spectrum"
    help = "Pixel baseline: blur-residual log-FFT on native-resolution tiles + logistic regression (fits in seconds)."
    config_class = SpectrumConfig
    architecture_fields = ("tile", "max_tiles", "crop_align", "pad_mode")
    weight_files = ("branch.json", WEIGHTS)
    presets = {"tiny": {"weights": "random"}}
    #: fitted on the shared data by benchmarks/build_builtin.py (see the model card beside them)
    builtin_weights = "aligncore.resources:builtin/spectrum"
    trainer_class = LinearTrainer
    train_config_class = LinearTrainConfig
    config: SpectrumConfig

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        self.params: dict[str, np.ndarray] | None = None

    def features(self, arr: np.ndarray) -> np.ndarray:
        """uint8 H×W×3 → the mean log-spectrum of the blur residual (the linear model's input)."""
        c = self.config
        return spectrum_features(arr, c.tile, c.max_tiles, c.crop_align, c.pad_mode)

    def input_nbytes(self) -> int:
        """One image's features: a float32 half-spectrum."""
        return self.config.tile * (self.config.tile // 2 + 1) * 4

    def work_nbytes(self) -> int:
        """While one image is preprocessed: its float32 tiles and their complex128 spectra."""
        c = self.config
        return c.max_tiles * c.tile * (c.tile * 4 + (c.tile // 2 + 1) * 16)

    def preprocess(self, image) -> np.ndarray:
        return self.features(rgb_array(image))

    def set_linear_params(self, params: dict[str, np.ndarray]) -> None:
        """Use fitted weights (``mean``, ``scale``, ``coef``, ``intercept``): the linear trainer's hand-over."""
        self.params = dict(params)

    def untrained(self) -> str | None:
        if self.config.checkpoint or self.uses_builtin_weights or self.random_weights:
            return None
        return ("spectrum must be fitted first: `alignctl train spectrum --set SET --out DIR`, then score with "
                "--checkpoint DIR (or --preset tiny for a random linear model)." + self.builtin_hint())

    def load(self) -> None:
        if self.checkpoint_dir is not None:  # a checkpoint, or the built-in weights
            self.params = load_numpy_arrays(self.checkpoint_dir / WEIGHTS)
        elif self.random_weights:
            # a random linear model (tests, demos); seeded so every process scores alike
            n = self.config.tile * (self.config.tile // 2 + 1)
            rng = np.random.default_rng(0)
            self.params = {"mean": np.full(n, -3.0, np.float32), "scale": np.ones(n, np.float32),
                           "coef": (rng.normal(0, 0.01, n)).astype(np.float32), "intercept": np.zeros(1, np.float32)}
        else:
            raise AlignCoreError("spectrum must be fitted first: `alignctl train spectrum --set SET --out DIR`, then "
                                 "score with --checkpoint DIR (or --preset tiny for a random linear model).")

    def score_batch(self, batch) -> list[float]:
        p = self.params
        x = np.atleast_2d(np.asarray(batch, dtype=np.float64))
        z = ((x - p["mean"]) / p["scale"]) @ p["coef"].astype(np.float64) + float(p["intercept"][0])
        return scores_from_logits(z)

    def save(self, out_dir) -> Path:
        if self.params is None:
            raise AlignCoreError("spectrum has no fitted weights to save.")
        out = Path(out_dir)
        save_numpy_arrays(self.params, out / WEIGHTS)
        self.write_branch_file(out)
        return out


@hookimpl
def register_branches(register):
    register(SpectrumBranch)
