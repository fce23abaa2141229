"""Built-in plugin: the ``spectrum`` baseline — residual log-spectrum + logistic regression.

Features: the grey image minus a 3×3 binomial blur (the high-frequency residual), cut
into ``tile``×``tile`` windows at native resolution (up to ``max_tiles`` on an even grid),
log-magnitude of each window's 2-D FFT, averaged over windows (rfft half-plane:
tile × (tile/2+1) numbers). A decoder's periodic up-sampling leaves peaks there.
Classifier: standardisation + scikit-learn logistic regression, fitted in seconds by
``alignctl train spectrum``; saved as safetensors (no pickle) and scored with numpy.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from pydantic import Field

from aligncore import hookimpl
from aligncore.component import ComponentConfig, format_validation_error
from aligncore.data.crops import crop, grid_positions, jpeg_roundtrip
from aligncore.errors import AlignCoreError, ConfigError
from aligncore.pixel import PixelBranch, PixelBranchConfig

WEIGHTS = "spectrum.safetensors"


class SpectrumConfig(PixelBranchConfig):
    tile: int = Field(64, ge=8, description="FFT window side at native resolution.")
    max_tiles: int = Field(64, ge=1, description="Windows averaged per image (an even grid; they overlap on small images, and an image smaller than a tile is padded).")
    crop_size: int = Field(64, ge=8, description="Unused by this branch (its window is `tile`); kept for the shared crop settings.")


class SpectrumTrainConfig(ComponentConfig):
    C: float = Field(0.1, gt=0, description="Inverse L2 regularisation of the logistic regression.")
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="Share of pairs / source photos held out for validation.")
    seed: int = Field(0, description="Seed for the split and the augmentation.")
    jpeg_aug_prob: float = Field(0.0, ge=0.0, le=1.0, description="Probability that a pair (both images) is re-encoded as JPEG at one random quality.")
    jpeg_quality_min: int = Field(60, ge=1, le=100, description="Lowest JPEG quality drawn for the augmentation.")
    jpeg_quality_max: int = Field(100, ge=1, le=100, description="Highest JPEG quality drawn for the augmentation.")
    max_iter: int = Field(5000, ge=10, description="Solver iterations.")


def blur_residual(gray: np.ndarray) -> np.ndarray:
    """gray − 3×3 binomial blur (reflect borders)."""
    p = np.pad(gray, 1, mode="reflect") if min(gray.shape) > 1 else np.pad(gray, 1, mode="edge")
    v = (p[:-2] + 2 * p[1:-1] + p[2:]) / 4
    b = (v[:, :-2] + 2 * v[:, 1:-1] + v[:, 2:]) / 4
    return gray - b


def spectrum_features(arr: np.ndarray, tile: int, max_tiles: int, align: int, pad_mode: str = "reflect") -> np.ndarray:
    gray = arr.astype(np.float32).mean(axis=2) / 255.0
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
    config: SpectrumConfig

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        self.params: dict[str, np.ndarray] | None = None

    def preprocess(self, image) -> np.ndarray:
        arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.uint8)
        c = self.config
        return spectrum_features(arr, c.tile, c.max_tiles, c.crop_align, c.pad_mode)

    def load(self) -> None:
        if self.config.checkpoint:
            from safetensors.numpy import load_file

            self.params = load_file(str(self.checkpoint_dir / WEIGHTS))
        elif self.config.preset == "tiny":
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
        return (1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))).tolist()

    def save(self, out_dir) -> Path:
        from safetensors.numpy import save_file

        if self.params is None:
            raise AlignCoreError("spectrum has no fitted weights to save.")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: np.ascontiguousarray(v) for k, v in self.params.items()}, str(out / WEIGHTS))
        self.write_branch_file(out)
        return out

    def train(self, supervision, out_dir, train_config: dict | None = None, **kwargs) -> Path:
        from pydantic import ValidationError
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        from aligncore.data import load_image
        from aligncore.metrics import binary_metrics
        from aligncore.train.pixel_data import load_training_set, split_by_group
        from aligncore.train.pixel_trainer import _append_metrics

        try:
            cfg = SpectrumTrainConfig(**(train_config or {}))
        except ValidationError as err:
            raise ConfigError(format_validation_error("spectrum training", err)) from None
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        records = load_training_set(supervision)
        train, val = split_by_group(records, cfg.val_fraction, cfg.seed)
        c = self.config

        def features(recs, augment: bool) -> np.ndarray:
            rows = []
            for r in recs:
                arr = np.asarray(load_image(r.path), dtype=np.uint8)
                if augment and cfg.jpeg_aug_prob:
                    # one draw per group: both images of a pair get the same quality (format-aligned)
                    key = int.from_bytes(hashlib.sha256(r.group.encode()).digest()[:8], "little")
                    rng = np.random.default_rng([cfg.seed, key])
                    if rng.random() < cfg.jpeg_aug_prob:
                        arr = jpeg_roundtrip(arr, int(rng.integers(cfg.jpeg_quality_min, cfg.jpeg_quality_max + 1)))
                rows.append(spectrum_features(arr, c.tile, c.max_tiles, c.crop_align, c.pad_mode))
            return np.stack(rows)

        xtr, ytr = features(train, True), np.array([r.label for r in train])
        scaler = StandardScaler().fit(xtr)
        clf = LogisticRegression(C=cfg.C, max_iter=cfg.max_iter).fit(scaler.transform(xtr), ytr)
        self.params = {"mean": scaler.mean_.astype(np.float32), "scale": scaler.scale_.astype(np.float32),
                       "coef": clf.coef_[0].astype(np.float32), "intercept": clf.intercept_.astype(np.float32)}
        row = {"epoch": 0, "step": 1, "train_loss": "", "lr": "", "elapsed_s": "", "stopped": ""}
        if val:
            p = np.array(self.score_batch(features(val, False)))
            y = np.array([r.label for r in val])
            m = binary_metrics(y, p, p >= 0.5)
            eps = 1e-7
            row.update(val_loss=float(-np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps))),
                       val_auc=m["auc"], val_ap=m["ap"], val_balanced_accuracy=m["balanced_accuracy"])
        metrics = out / "metrics.csv"
        if metrics.exists():
            metrics.unlink()
        _append_metrics(metrics, row)
        (out / "train_config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=2, sort_keys=True) + "\n")
        (out / "split.json").write_text(json.dumps({"n_train": len(train), "n_val": len(val),
                                                    "val_groups": sorted({r.group for r in val})}, indent=2) + "\n")
        self._loaded = True
        self.save(out / "last")
        return self.save(out / "best")


@hookimpl
def register_branches(register):
    register(SpectrumBranch)
