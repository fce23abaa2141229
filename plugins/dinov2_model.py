"""The ``dinov2`` branch's model: a timm DINOv2 ViT, LoRA on its attention projections, a linear head.

Imported lazily (torch, timm, peft). timm's DINOv2 blocks have one fused ``attn.qkv``
Linear and an ``attn.proj`` Linear; LoRA targets exactly those (the regex keeps it off
``patch_embed.proj``, a Conv2d) — as in the paper's ViT-L/14 + LoRA r=8 expert.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from aligncore.errors import ModelUnavailableError

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


def find_pretrained_file(model_name: str, weights: str | None, allow_download: bool) -> str:
    """A local weights file for ``model_name``: the given path, the HF cache, or (only if allowed) a download.

    Never touches the network unless ``allow_download`` and HF_HUB_OFFLINE is unset; a missing
    file raises ModelUnavailableError at once.
    """
    import timm

    if weights:
        p = Path(weights).expanduser()
        if p.is_dir():
            for name in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
                if (p / name).exists():
                    return str(p / name)
        elif p.is_file():
            return str(p)
        raise ModelUnavailableError(str(p), "The weights path does not exist or holds no model.safetensors / pytorch_model.bin.")
    cfg = timm.models.get_pretrained_cfg(model_name)
    hub_id = (cfg.hf_hub_id if cfg is not None else None) or f"timm/{model_name}"
    from huggingface_hub import try_to_load_from_cache

    for fname in ("model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(hub_id, fname)
        if isinstance(hit, str):
            return hit
    how = (
        f"For this branch: pass the file with `-o dinov2.weights=PATH` (model.safetensors of {hub_id}), "
        "or set allow_download=true where the Hub is reachable; to train without pretrained weights use "
        "from_scratch=true (`-o from_scratch=true` for alignctl train), and for tests use --preset tiny."
    )
    if not allow_download or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise ModelUnavailableError(hub_id, how)
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(hub_id, "model.safetensors")
    except Exception as exc:
        raise ModelUnavailableError(hub_id, how, cause=exc) from None


def build_backbone(model_name: str, img_size: int, tiny: bool, pretrained_file: str | None) -> nn.Module:
    import timm

    if tiny:
        return timm.create_model(TINY_ARCH, pretrained=False, num_classes=0, img_size=img_size, **TINY_OVERRIDES)
    if pretrained_file is None:
        return timm.create_model(model_name, pretrained=False, num_classes=0, img_size=img_size)
    # timm adapts the position embedding to img_size when it loads the file (the image is never resized)
    return timm.create_model(model_name, pretrained=True, num_classes=0, img_size=img_size,
                             pretrained_cfg_overlay={"file": pretrained_file})


def add_lora(model: DinoClassifier, r: int, alpha: int, dropout: float) -> DinoClassifier:
    """Inject LoRA into the backbone's attention projections; only LoRA and the head stay trainable."""
    from peft import LoraConfig, inject_adapter_in_model

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


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
