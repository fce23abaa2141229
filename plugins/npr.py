"""Built-in plugin: the ``npr`` pixel expert (a compact CNN on the neighbouring-pixel residual).

Trainable from scratch on a CPU in minutes, so it is the offline default pixel expert.
Without ``checkpoint`` or ``preset`` it scores with its built-in weights (``builtin_weights``,
trained on the shared data by ``benchmarks/build_builtin.py``); ``--checkpoint DIR`` from
``alignctl train npr`` uses your own, ``--preset tiny`` a small random-weight model (tests).
Torch is imported only when the model is built (``npr_model``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from aligncore import hookimpl
from aligncore.errors import AlignCoreError
from aligncore.pixel import NeuralPixelBranch, PixelBranchConfig
from aligncore.safeio import load_state_dict, save_state_dict
from aligncore.torchutil import seeded


class NPRConfig(PixelBranchConfig):
    crop_size: int = Field(128, ge=8, le=4096, description="Side of the square window cut at native resolution (even; no resizing).")
    inference_crops: int = Field(16, ge=1, le=1024, description="Windows averaged per image when scoring: 1 = centre crop, more = an even grid.")
    width: int = Field(16, ge=4, le=512, description="Channels of the first stage (later stages use 2× and 4×; 512 is about 70M parameters).")


class NPRBranch(NeuralPixelBranch):
    """CNN on x − nearest_up(x[::2, ::2]) at native resolution; multi-crop logit average when scoring."""

    name = "npr"
    help = "Pixel expert: compact CNN on the neighbouring-pixel residual (NPR, CVPR 2024); CPU-trainable."
    config_class = NPRConfig
    architecture_fields = ("crop_size", "crop_align", "width")
    #: a small model for tests and demos (the sizes apply only where the user set none); random: the default
    #: architecture with random weights, for speed checks (its scores mean nothing)
    presets = {"tiny": {"width": 8, "crop_size": 32, "weights": "random"}, "random": {"weights": "random"}}
    #: trained on the shared data by benchmarks/build_builtin.py (see the model card beside them)
    builtin_weights = "aligncore.resources:builtin/npr"
    config: NPRConfig
    #: ``alignctl demo``: the pixel expert, tiny, trained for seconds on the demo's pixel set
    demo_options = {"role": "pixel", "options": {"preset": "tiny"},
                    "train": {"epochs": 4, "batch_size": 8, "crop_size": 64, "lr": 2e-3, "val_fraction": 0.2,
                              "max_minutes": 1.5}}

    def build_model(self, for_training: bool = False, gradient_checkpointing: bool = False) -> None:
        from .npr_model import NPRNet

        if self.config.crop_size % 2:
            raise AlignCoreError("npr needs an even crop_size (the residual works on 2×2 cells).")
        width = self.config.width
        if for_training:
            self.model = NPRNet(width)  # initialised from the trainer's seed
        else:
            with seeded(0):  # a random-weight model scores the same in every process
                self.model = NPRNet(width)
        self.model.gradient_checkpointing = gradient_checkpointing

    def normalize(self, x):
        return x.float() / 255.0

    def trainable_state_dict(self) -> dict:
        return dict(self.model.state_dict())  # BatchNorm running statistics are part of the weights

    def load_trainable_state_dict(self, sd: dict) -> None:
        self.model.load_state_dict(sd, strict=True)

    def load_weights(self, folder: Path) -> None:
        self.load_trainable_state_dict(load_state_dict(folder / "model.safetensors"))

    def save(self, out_dir) -> Path:
        out = Path(out_dir)
        save_state_dict(self.model.state_dict(), out / "model.safetensors")
        self.write_branch_file(out)
        return out


@hookimpl
def register_branches(register):
    register(NPRBranch)
