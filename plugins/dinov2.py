"""Built-in plugin: the ``dinov2`` pixel expert (the paper's DINOv2 ViT-L/14 + LoRA r=8, BCE).

Preprocessing never resamples: ``crop_size`` windows (default 336, a multiple of the
14-pixel patch) are cut at native resolution — centre crop by default, an even grid
averaged with ``inference_crops`` > 1, a random window in training; images smaller
than the window are padded by reflection (``pad_mode``). Pretrained weights come from
a local file (``weights``) or the Hugging Face cache; nothing is downloaded unless
``allow_download``. ``preset="tiny"`` builds a 2-block DINOv2-architecture ViT offline;
``preset="random"`` the configured model with random weights (speed checks, e.g. ViT-L/14 on a GPU).
Torch, timm and peft are imported only when the model is built (``dinov2_model``).
Training uses the shared pixel trainer with :class:`DINOv2TrainConfig` (lr 1e-4, and the
``from_scratch`` switch: every weight trained from a random start, no LoRA).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from aligncore import hookimpl
from aligncore.errors import AlignCoreError
from aligncore.pixel import NeuralPixelBranch, PixelBranchConfig
from aligncore.safeio import load_state_dict, save_state_dict
from aligncore.torchutil import seeded
from aligncore.train.pixel_config import PixelTrainConfig

#: the timm DINOv2 family (ViT-S/B/L/g with 14-pixel patches, with or without registers): a checkpoint or
#: config cannot ask for another, larger architecture under this branch's name
DINOV2_NAMES = r"^vit_(small|base|large|giant2)_patch14_(reg4_)?dinov2(\.[A-Za-z0-9_]+)?$"
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # DINOv2's (timm's IMAGENET_DEFAULT_MEAN/STD)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DINOv2Config(PixelBranchConfig):
    model: str = Field("vit_large_patch14_dinov2.lvd142m", pattern=DINOV2_NAMES,
                       description="timm DINOv2 model name (vit_{small,base,large,giant2}_patch14[_reg4]_dinov2, e.g. "
                       "vit_small_patch14_dinov2.lvd142m, vit_base_patch14_dinov2.lvd142m, vit_large_patch14_dinov2.lvd142m).")
    weights: str | None = Field(None, description="Local pretrained weights (a model.safetensors / .bin file or a folder "
                                "holding one) for `model`; default: the Hugging Face cache.")
    allow_download: bool = Field(False, description="Download missing pretrained weights from the Hub (never by default: "
                                 "a missing model fails at once instead of hanging).")
    crop_size: int = Field(336, ge=14, le=1022, description="Window side at native resolution (a multiple of 14, at most "
                           "1022 = 73 patches; no resizing).")
    inference_crops: int = Field(1, ge=1, le=1024, description="Windows averaged per image when scoring: 1 = centre crop, more = an even grid.")
    activation_mb: float | None = Field(None, gt=0, description="The largest activation tensor one forward pass may make "
                                        "when scoring, in MB (windows go through the model in chunks under it). "
                                        "Default: 16 on CPU, 1024 on CUDA. Scores do not depend on it.")
    lora_r: int = Field(8, ge=1, le=1024, description="LoRA rank on the attention projections (qkv, proj).")
    lora_alpha: int = Field(16, ge=1, le=65536, description="LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input in training.")
    from_scratch: bool = Field(False, description="Random initialisation, every weight trained and saved (no pretrained weights; no LoRA).")


class DINOv2TrainConfig(PixelTrainConfig):
    branch_fields: ClassVar[tuple[str, ...]] = PixelTrainConfig.branch_fields + ("from_scratch",)

    lr: float = Field(1e-4, gt=0, description="AdamW learning rate (LoRA + head; use ~3e-4 from scratch).")
    from_scratch: bool = Field(False, description="Train every weight from a random initialisation: no pretrained "
                               "weights needed, no LoRA (recorded in the checkpoint).")


class DINOv2Branch(NeuralPixelBranch):
    """DINOv2 ViT (timm) + LoRA + linear head on native-resolution windows."""

    name = "dinov2"
    help = "Pixel expert: DINOv2 ViT (default ViT-L/14 at 336) + LoRA r=8 + linear head, native-resolution crops."
    config_class = DINOv2Config
    architecture_fields = ("crop_size", "crop_align", "model", "preset", "lora_r", "lora_alpha", "from_scratch")
    nonscoring_fields = NeuralPixelBranch.nonscoring_fields | {"allow_download", "lora_dropout"}
    #: tiny: a 2-block ViT on two 14-pixel patches a side, random weights; random: the configured model (by
    #: default ViT-L/14 at 336) with random weights, for speed and memory checks (its scores mean nothing)
    presets = {"tiny": {"crop_size": 28, "weights": "random"}, "random": {"weights": "random"}}
    train_config_class = DINOv2TrainConfig
    score_libraries = NeuralPixelBranch.score_libraries + ("timm", "peft")
    #: a ViT's CPU time per image is lowest with ~16 MB activations per forward pass (ViT-S/14 @224: 10 windows;
    #: measured in benchmarks/perf/peer_baseline.py --only budget), twice a CNN's
    cpu_activation_mb = 16.0
    config: DINOv2Config

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        if self.config.crop_size % 14:
            raise AlignCoreError(f"dinov2 crop_size must be a multiple of the 14-pixel patch, got {self.config.crop_size}.")

    @property
    def tiny(self) -> bool:
        return self.config.preset == "tiny"

    @property
    def random_weights(self) -> bool:
        return super().random_weights or (not self.config.checkpoint and self.config.from_scratch)

    def untrained(self) -> str | None:
        problem = super().untrained()
        if problem and not self.config.from_scratch:
            problem += (" Without a checkpoint its classification head is untrained (the pretrained backbone alone "
                        "gives no verdict).")
        elif problem:
            problem += " from_scratch=true without a checkpoint is a random model."
        return problem

    def base_weights_identity(self) -> str:
        """The pretrained backbone a LoRA checkpoint builds on: its Hub revision or its file's digest."""
        from aligncore.identity import weights_identity

        from . import dinov2_model as dm

        c = self.config
        if self.tiny or c.from_scratch or self.random_weights:  # the same test as build_model: no backbone is read
            return ""
        return weights_identity(dm.pretrained_file(c.model, c.weights, c.allow_download))

    def pretrained_provenance(self) -> str:
        from aligncore.hashing import sha256_file
        from aligncore.hub import snapshot_revision

        from . import dinov2_model as dm

        c = self.config
        f = dm.pretrained_file(c.model, c.weights, c.allow_download)
        return f"pretrained:{dm.hub_id_for(c.model)}@{snapshot_revision(f) or sha256_file(f)[:16]}"

    def build_model(self, for_training: bool = False, gradient_checkpointing: bool = False, pretrained: bool = True) -> None:
        import torch

        from . import dinov2_model as dm

        c = self.config
        full_weights = c.from_scratch  # a from-scratch checkpoint holds every weight
        weights_file = None
        if pretrained and not self.tiny and not c.from_scratch and not self.random_weights:
            weights_file = dm.pretrained_file(c.model, c.weights, c.allow_download)
        # for training, initialisation follows the trainer's seed; otherwise a fixed one, so a tiny /
        # untrained model scores the same in every process
        with seeded(0) if not for_training else torch.random.fork_rng(devices=[]):
            backbone = dm.build_backbone(c.model, c.crop_size, self.tiny, weights_file)
            model = dm.DinoClassifier(backbone)
            if not full_weights:
                model = dm.add_lora(model, c.lora_r, c.lora_alpha, c.lora_dropout)
        if gradient_checkpointing:
            model.backbone.set_grad_checkpointing(True)
        self.model = model

    def normalize(self, x):
        import torch

        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        return (x.float() / 255.0 - mean) / std

    # ------------------------------------------------------------------ weights
    def trainable_state_dict(self) -> dict:
        from . import dinov2_model as dm

        if self.config.from_scratch:
            return dict(self.model.state_dict())
        sd = {f"backbone.{k}": v for k, v in dm.adapter_state_dict(self.model).items()}
        sd.update({f"head.{k}": v for k, v in self.model.head.state_dict().items()})
        return sd

    def load_trainable_state_dict(self, sd: dict) -> None:
        from . import dinov2_model as dm

        if self.config.from_scratch:
            self.model.load_state_dict(sd, strict=True)
            return
        dm.load_adapter_state_dict(self.model, {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")})
        self.model.head.load_state_dict({k[len("head."):]: v for k, v in sd.items() if k.startswith("head.")}, strict=True)

    def load_weights(self, folder: Path) -> None:
        from . import dinov2_model as dm

        if self.config.from_scratch:
            self.model.load_state_dict(load_state_dict(folder / "model.safetensors"), strict=True)
            return
        dm.load_adapter_state_dict(self.model, load_state_dict(folder / "adapter_model.safetensors"))
        self.model.head.load_state_dict(load_state_dict(folder / "head.safetensors"), strict=True)

    def save(self, out_dir) -> Path:
        """peft adapter (adapter_model.safetensors + adapter_config.json) + head.safetensors + branch.json."""
        from . import dinov2_model as dm

        out = Path(out_dir)
        if self.config.from_scratch:
            save_state_dict(self.model.state_dict(), out / "model.safetensors")
        else:
            save_state_dict(dm.adapter_state_dict(self.model), out / "adapter_model.safetensors", metadata={"format": "pt"})
            cfg = dm.lora_config(self.config.lora_r, self.config.lora_alpha, self.config.lora_dropout).to_dict()
            cfg["base_model_name_or_path"] = self.config.model
            (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str) + "\n")
            save_state_dict(self.model.head.state_dict(), out / "head.safetensors")
        self.write_branch_file(out)
        return out


@hookimpl
def register_branches(register):
    register(DINOv2Branch)
