"""Built-in plugin: the ``aerecon`` branch — how well a tiny autoencoder reconstructs the image.

AEROBLADE-style and training-free: images decoded by a latent model's autoencoder reconstruct
through such an autoencoder with a smaller error than photographs. The branch takes the centre
≤256 region of the image (the centre ≤512 window first, offsets on a 16-pixel grid: exactly what
``benchmarks/generalization.py`` measured), reconstructs a ``crop_size`` window of it at each scale
through a TAESD-family tiny autoencoder from local weight files at the first of its ``scales``
(default 1: native resolution), passes the region reduced 2× and 4× through the encoder too, and scores

- without a checkpoint: ``P(fake) = sigmoid((center − log MSE at scale 1) / temperature)`` — nothing
  is fitted; ``center``/``temperature`` only place the 0.5 threshold and never change a ranking;
- with ``checkpoint=DIR`` (a ``head.safetensors`` + ``branch.json`` written by :func:`save_head`):
  a logistic-regression head over all its features — the reconstruction errors, the frozen
  encoder's statistics at every scale, and the same statistics of a canonical view (the whole image
  resized to ``canonical_size``; :mod:`aligncore_plugins.aerecon_model` lists them).

Without ``checkpoint``, ``preset`` and autoencoder paths it uses its built-in weights (``builtin_weights``:
the taef2 autoencoder, MIT, and a head fitted on the shared data by ``benchmarks/build_builtin.py``).
``preset=tiny`` builds a small random-weight autoencoder offline (tests, demos; not a detector).
Torch is imported only when the model is built.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from aligncore import hookimpl
from aligncore.branch import Branch, BranchConfig
from aligncore.errors import AlignCoreError, ConfigError
from aligncore.hashing import digest_files, sha256_file

BRANCH_FILE = "branch.json"
HEAD_FILE = "head.safetensors"
WINDOW, REGION, GRID = 512, 256, 16


class AereconConfig(BranchConfig):
    encoder_path: str | None = Field(None, description="Encoder weights of a TAESD-family tiny autoencoder (.pth or .safetensors), e.g. taef2_encoder.pth.")
    decoder_path: str | None = Field(None, description="Decoder weights of the same autoencoder, e.g. taef2_decoder.pth.")
    scales: list[int] = Field([1, 2, 4], min_length=1, description="Integer reduction factors (box filter) of the analysed windows: the first is reconstructed (the training-free score), every one feeds the encoder statistics a head uses.")
    crop_size: int = Field(128, ge=8, description="Side of the reconstructed window at each scale (a multiple of the autoencoder's stride; smaller images use their whole region).")
    crop_select: Literal["center", "texture"] = Field("center", description="Window position: the region's centre, or its most textured window of a 3×3 grid.")
    canonical_size: int | None = Field(128, ge=16, description="Side of the canonical view (the whole image resized so its shorter side is this, centre-cropped) whose encoder statistics a head also uses; None = the native region only.")
    distance: Literal["l2", "feat"] = Field("l2", description="Training-free distance: 'l2' = log MSE in pixels, 'feat' = log distance in the encoder's first-block features.")
    center: float = Field(-6.2, description="Training-free score: the log distance scored 0.5 (lower distances score higher).")
    temperature: float = Field(0.6, gt=0, description="Training-free score: log-distance units per logit.")


class AereconBranch(Branch):
    """Reconstruction distance through a local tiny autoencoder at several scales (training-free, or a linear head)."""

    name = "aerecon"
    help = ("Training-free pixel expert: reconstruction error through a local TAESD-family tiny autoencoder "
            "(AEROBLADE-style), multi-scale; optional linear head over its features.")
    config_class = AereconConfig
    #: fields a head checkpoint fixes (its features depend on them)
    architecture_fields = ("scales", "crop_size", "crop_select", "canonical_size")
    #: the weight files' paths never change a score; their bytes do (see weights_digest)
    nonscoring_fields = Branch.nonscoring_fields | {"encoder_path", "decoder_path"}
    config: AereconConfig

    #: the taef2 autoencoder and a head fitted by benchmarks/build_builtin.py (see the model card beside them)
    builtin_weights = "aligncore.resources:builtin/aerecon"
    #: the built-in folder's autoencoder files
    BUILTIN_AE = ("encoder.safetensors", "decoder.safetensors")

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        if c.preset is None and not self.uses_builtin_weights:
            missing = [n for n in ("encoder_path", "decoder_path") if not getattr(c, n)]
            if missing:
                raise ConfigError(
                    f"branch 'aerecon' needs {' and '.join(missing)}: the weight files of a TAESD-family tiny "
                    "autoencoder (e.g. -o aerecon.encoder_path=taef2_encoder.pth -o aerecon.decoder_path=taef2_decoder.pth), "
                    "or no checkpoint and no paths for the built-in weights, or preset=tiny for a random-weight "
                    "autoencoder (tests only)." + self.builtin_hint()
                )
            for n in ("encoder_path", "decoder_path"):
                if not Path(getattr(c, n)).expanduser().is_file():
                    raise ConfigError(f"branch 'aerecon': {n} {getattr(c, n)!r} is not a file.")
        if any(s < 1 for s in c.scales):
            raise ConfigError(f"branch 'aerecon': scales must be positive integers, got {c.scales}.")
        self.model = None
        self.head: dict[str, np.ndarray] | None = None
        self._digest: str | None = None

    @classmethod
    def uses_builtin(cls, values) -> bool:
        # autoencoder files of the caller's own mean the training-free branch (or their own head) on them
        return not values.get("encoder_path") and not values.get("decoder_path") and super().uses_builtin(values)

    # ------------------------------------------------------------------ checkpoint and identity
    @property
    def checkpoint_dir(self) -> Path | None:
        """The head's folder: the checkpoint's, else the built-in weights' (None: the training-free score)."""
        from aligncore.pixel import resolve_checkpoint

        return resolve_checkpoint(self.config.checkpoint) if self.config.checkpoint else self.builtin_folder()

    def checkpoint_folder(self) -> Path | None:
        return self.checkpoint_dir

    @classmethod
    def checkpoint_record(cls, checkpoint) -> dict:
        """The scales/window a head was fitted with (unset fields adopt them; a different set value is an error)."""
        from aligncore.pixel import resolve_checkpoint

        folder = resolve_checkpoint(checkpoint)
        info = json.loads((folder / BRANCH_FILE).read_text())
        if info.get("branch") != cls.name:
            raise ConfigError(f"{folder} was written by branch {info.get('branch')!r}, not {cls.name!r}.")
        return {k: v for k, v in info.get("architecture", {}).items() if k in cls.architecture_fields}

    def write_branch_file(self, out_dir: Path, extra: dict | None = None) -> None:
        info = {"branch": self.name, "version": self.version,
                "architecture": {k: getattr(self.config, k) for k in self.architecture_fields}, **(extra or {})}
        (Path(out_dir) / BRANCH_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")

    def autoencoder_files(self) -> tuple[Path, Path] | None:
        """(encoder, decoder) weight files: the built-in ones or the configured paths; None with a preset."""
        if self.uses_builtin_weights:
            folder = self.builtin_folder()
            return folder / self.BUILTIN_AE[0], folder / self.BUILTIN_AE[1]
        if self.config.preset is not None:
            return None
        return Path(self.config.encoder_path).expanduser(), Path(self.config.decoder_path).expanduser()

    def weights_digest(self) -> str:
        if self._digest is None:
            parts = []
            folder = self.checkpoint_dir
            if folder is not None:
                parts.append(digest_files(folder, [f for f in (BRANCH_FILE, HEAD_FILE, *self.BUILTIN_AE)
                                                   if (folder / f).exists()]))
            ae = self.autoencoder_files()
            if ae is not None and not self.uses_builtin_weights:
                parts += [sha256_file(ae[0])[:16], sha256_file(ae[1])[:16]]
            self._digest = "-".join(parts)
        return self._digest

    # ------------------------------------------------------------------ model
    def load(self) -> None:
        import torch

        from . import tiny_ae_model

        c = self.config
        ae = self.autoencoder_files()
        if ae is None:
            model = tiny_ae_model.random_tiny_autoencoder(latent_channels=4, width=16, levels=3, gn_mid=True, seed=0)
        else:
            try:
                model = tiny_ae_model.load_tiny_autoencoder(*ae)
            except (RuntimeError, ValueError) as exc:
                raise ConfigError(f"branch 'aerecon': {ae[0]} / {ae[1]} are not a TAESD-family "
                                  f"encoder/decoder pair: {str(exc).splitlines()[0]}") from None
        if c.crop_size % model.stride:
            raise ConfigError(f"branch 'aerecon': crop_size {c.crop_size} is not a multiple of the autoencoder's "
                              f"stride ({model.stride}).")
        self.model = model.to(self.device).to(memory_format=torch.channels_last).eval()
        if self.checkpoint_dir is not None:  # a head: the checkpoint's or the built-in one
            from aligncore.safeio import load_state_dict

            sd = load_state_dict(self.checkpoint_dir / HEAD_FILE)
            self.head = {k: v.double().numpy() for k, v in sd.items()}
            n = len(self.feature_names())
            if self.head["coef"].shape[-1] != n:
                raise AlignCoreError(f"{self.checkpoint_dir}: the head expects {self.head['coef'].shape[-1]} features, "
                                     f"this autoencoder and these settings give {n}.")

    # ------------------------------------------------------------------ scoring
    def preprocess(self, image) -> tuple[np.ndarray, np.ndarray | None]:
        """PIL RGB (or uint8 array) → (the uint8 centre region the protocol analyses, never resampled;
        the canonical view, or None when ``canonical_size`` is None)."""
        from .aerecon_model import canonical_view

        arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.uint8)
        size = self.config.canonical_size
        return analysis_region(arr), (canonical_view(arr, size) if size else None)

    def collate(self, items):
        return list(items)  # regions differ in size; the model sees one image at a time

    def feature_names(self) -> list[str]:
        """Column names of :meth:`features` (the autoencoder must be loaded)."""
        from .aerecon_model import canonical_names, feature_names

        names = feature_names(self.model, self.config.scales)
        return names + (canonical_names(self.model) if self.config.canonical_size else [])

    def features(self, batch, native_only: bool = False) -> np.ndarray:
        """Preprocessed items → (N, F) float32: the native region's features, then the canonical view's."""
        from .aerecon_model import canonical_features, image_features

        c = self.config
        rows = []
        for region, view in batch:
            f = image_features(self.model, region, c.scales, c.crop_size, c.crop_select)
            if view is not None and not native_only:
                f = np.concatenate([f, canonical_features(self.model, view)])
            rows.append(f)
        return np.stack(rows)

    def score_batch(self, batch) -> list[float]:
        if self.head is not None:
            h = self.head
            x = self.features(batch).astype(np.float64)
            z = ((x - h["mean"]) / h["scale"]) @ h["coef"].reshape(-1) + float(h["intercept"].reshape(-1)[0])
        else:
            c = self.config
            x = self.features(batch, native_only=True).astype(np.float64)
            col = 0 if c.distance == "l2" else 2  # the first columns: l2, hp, feat, tex of the first scale
            z = (c.center - x[:, col]) / c.temperature
        return (1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))).tolist()


def analysis_region(arr: np.ndarray) -> np.ndarray:
    """The centre ≤256 window of the centre ≤512 window, sides and offsets on a 16-pixel grid."""
    for size in (WINDOW, REGION):
        h, w = arr.shape[:2]
        ch, cw = min(h, size) // GRID * GRID, min(w, size) // GRID * GRID
        if ch < GRID or cw < GRID:
            raise AlignCoreError(f"image of {w}x{h} pixels is too small for aerecon (at least {GRID}x{GRID}).")
        top, left = (h - ch) // 2 // GRID * GRID, (w - cw) // 2 // GRID * GRID
        arr = arr[top : top + ch, left : left + cw]
    return np.ascontiguousarray(arr)


def save_head(branch: AereconBranch, out_dir, mean, scale, coef, intercept, info: dict | None = None) -> Path:
    """Write a fitted logistic-regression head (standardisation + weights) so ``checkpoint=out_dir`` loads it."""
    import torch

    from aligncore.safeio import save_state_dict

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: torch.as_tensor(np.asarray(v, dtype=np.float32).reshape(-1))
               for k, v in (("mean", mean), ("scale", scale), ("coef", coef), ("intercept", intercept))}
    save_state_dict(tensors, out / HEAD_FILE)
    branch.write_branch_file(out, extra=info or {})
    return out


@hookimpl
def register_branches(register):
    register(AereconBranch)
