"""The ``dinov2`` branch's model: a timm DINOv2 ViT, LoRA on its attention projections, a linear head.

Imported lazily (torch, timm, peft). timm's DINOv2 blocks have one fused ``attn.qkv``
Linear and an ``attn.proj`` Linear; LoRA targets exactly those (the regex keeps it off
``patch_embed.proj``, a Conv2d) — as in the paper's ViT-L/14 + LoRA r=8 expert.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from aligncore.errors import ModelUnavailableError
from aligncore.hub import resolve_weights
from aligncore.safeio import load_state_dict

LORA_TARGETS = r".*\.attn\.(qkv|proj)$"
TINY_ARCH = "vit_small_patch14_dinov2"
TINY_OVERRIDES = {"embed_dim": 32, "depth": 2, "num_heads": 2}


class DinoClassifier(nn.Module):
    """Backbone (CLS-token features) → Linear → one logit."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x)).squeeze(-1)


#: file names looked for in a local weights folder
LOCAL_WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def hub_id_for(model_name: str) -> str:
    """The Hugging Face repository timm names for ``model_name``'s pretrained weights."""
    import timm

    cfg = timm.models.get_pretrained_cfg(model_name)
    return (cfg.hf_hub_id if cfg is not None else None) or f"timm/{model_name}"


def pretrained_file(model_name: str, weights: str | None, allow_download: bool) -> Path:
    """The pretrained weights file for ``model_name``: the given path, the HF cache, or (only if allowed) a download."""
    how = ("For this branch: pass the file with `-o dinov2.weights=PATH` (model.safetensors of "
           f"{hub_id_for(model_name)}), or set allow_download=true where the Hub is reachable; to train without "
           "pretrained weights use `-o from_scratch=true` (alignctl train), and for tests use --preset tiny.")
    if weights:
        p = resolve_weights(weights, how=how)
        if p.is_file():
            return p
        for name in LOCAL_WEIGHT_NAMES:
            if (p / name).is_file():
                return p / name
        raise ModelUnavailableError(str(p), f"The folder holds none of {', '.join(LOCAL_WEIGHT_NAMES)}. {how}", local=True)
    return resolve_weights(hub_id_for(model_name), files=["model.safetensors"], allow_download=allow_download,
                           how=how) / "model.safetensors"


def build_backbone(model_name: str, img_size: int, tiny: bool, weights_file: Path | None) -> nn.Module:
    import timm

    if tiny:
        return timm.create_model(TINY_ARCH, pretrained=False, num_classes=0, img_size=img_size, **TINY_OVERRIDES)
    if weights_file is None:
        return timm.create_model(model_name, pretrained=False, num_classes=0, img_size=img_size)
    # the tensors are read by safeio; timm adapts the position embedding to img_size as it loads them
    # (the image is never resized)
    return timm.create_model(model_name, pretrained=True, num_classes=0, img_size=img_size,
                             pretrained_cfg_overlay={"state_dict": load_state_dict(weights_file)})


def add_lora(model: DinoClassifier, r: int, alpha: int, dropout: float) -> DinoClassifier:
    """Inject LoRA into the backbone's attention projections; only LoRA and the head stay trainable."""
    from peft import inject_adapter_in_model

    cfg = lora_config(r, alpha, dropout)
    model.backbone = inject_adapter_in_model(cfg, model.backbone)
    for n, p in model.backbone.named_parameters():
        p.requires_grad = "lora_" in n
    for p in model.head.parameters():
        p.requires_grad = True
    return model


def lora_config(r: int, alpha: int, dropout: float):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGETS, bias="none")


def adapter_state_dict(model: DinoClassifier) -> dict:
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model.backbone)


def load_adapter_state_dict(model: DinoClassifier, sd: dict) -> None:
    from peft import set_peft_model_state_dict

    res = set_peft_model_state_dict(model.backbone, sd)
    missing = [k for k in getattr(res, "missing_keys", []) if "lora_" in k]
    if missing:
        raise RuntimeError(f"adapter is missing LoRA weights: {missing[:3]}...")

