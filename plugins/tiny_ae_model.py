"""Tiny autoencoders of the TAESD family (SD, SDXL, SD3, FLUX.1, FLUX.2 latent spaces), written from
the published description (madebyollin/taesd, MIT) and the state-dict keys of the released weights.

Both halves are ``nn.Sequential`` stacks whose integer indices are the state-dict prefixes:

- encoder: ``conv(3, w)``, ``Block``, then per level a stride-2 bias-free ``conv`` and three
  ``Block``s, then ``conv(w, latent)``; input RGB in [0, 1];
- decoder: ``Clamp`` (``tanh(x / 3) * 3``), ``conv(latent, w)``, ``ReLU``, then per level three
  ``Block``s, ``Upsample(2)`` and a bias-free ``conv``, then a ``Block`` and ``conv(w, 3)``; output in [0, 1].

A ``Block`` is ``relu(conv3(relu(conv3(relu(conv3(x))))) + skip(x))``. The FLUX.2 variant (taef2) adds,
in its mid blocks, a branch ``conv1x1(w, 4w) → GroupNorm(4) → ReLU → conv1x1(4w, w)`` that is added to
the block's input before the convolutions (state-dict keys ``N.pool.*``).

Rather than hard-coding one variant, :func:`layout_from_state_dict` reads the layer sequence from the
keys (which indices are plain convs, which are blocks, which blocks carry the GroupNorm branch, which
indices hold parameter-free layers), so every variant with this shape builds exactly and loads strictly.
Imported lazily (torch) by ``aligncore_plugins.vae_sets``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


def conv(n_in: int, n_out: int, stride: int = 1, bias: bool = True, k: int = 3) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, k, stride=stride, padding=k // 2, bias=bias)


class Clamp(nn.Module):
    """Soft clamp of the latent to about ±3 at the decoder's entry."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    def __init__(self, n_in: int, n_out: int, groupnorm_branch: bool = False):
        super().__init__()
        self.conv = nn.Sequential(conv(n_in, n_out), nn.ReLU(), conv(n_out, n_out), nn.ReLU(), conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()
        self.pool: nn.Module | None = None
        if groupnorm_branch:
            wide = n_in * 4
            self.pool = nn.Sequential(
                nn.Conv2d(n_in, wide, 1, bias=False), nn.GroupNorm(4, wide), nn.ReLU(), nn.Conv2d(wide, n_in, 1, bias=False)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


# --------------------------------------------------------------------------- layouts as data


@dataclass(frozen=True)
class Layer:
    """One entry of a Sequential: kind is conv | block | clamp | relu | upsample."""

    kind: str
    n_in: int = 0
    n_out: int = 0
    stride: int = 1
    bias: bool = True
    gn: bool = False


@dataclass(frozen=True)
class TinyAELayout:
    encoder: tuple[Layer, ...]
    decoder: tuple[Layer, ...]

    @property
    def latent_channels(self) -> int:
        return self.encoder[-1].n_out

    @property
    def stride(self) -> int:
        """Pixels per latent cell along each side: 2 ** (stride-2 convs in the encoder)."""
        s = 1
        for layer in self.encoder:
            s *= layer.stride
        return s

    @property
    def has_groupnorm(self) -> bool:
        return any(layer.gn for layer in self.encoder + self.decoder)


def standard_layout(latent_channels: int = 4, width: int = 64, levels: int = 3, gn_mid: bool = False,
                    blocks_per_level: int = 3) -> TinyAELayout:
    """The TAESD layout; ``gn_mid`` adds the GroupNorm branch to the innermost blocks (as taef2 does)."""
    enc = [Layer("conv", 3, width), Layer("block", width, width)]
    for lv in range(levels):
        enc.append(Layer("conv", width, width, stride=2, bias=False))
        inner = lv == levels - 1
        enc += [Layer("block", width, width, gn=gn_mid and inner)] * blocks_per_level
    enc.append(Layer("conv", width, latent_channels))
    dec = [Layer("clamp"), Layer("conv", latent_channels, width), Layer("relu")]
    for lv in range(levels):
        inner = lv == 0
        dec += [Layer("block", width, width, gn=gn_mid and inner)] * blocks_per_level
        dec += [Layer("upsample"), Layer("conv", width, width, bias=False)]
    dec += [Layer("block", width, width), Layer("conv", width, 3)]
    return TinyAELayout(tuple(enc), tuple(dec))


def _layers_from_keys(sd: dict[str, torch.Tensor], part: str) -> list[Layer]:
    idx_re = re.compile(r"^(\d+)\.")
    indices = sorted({int(m.group(1)) for k in sd if (m := idx_re.match(k))})
    if not indices:
        raise ValueError(f"{part}: state dict has no Sequential-indexed keys (e.g. '0.weight')")
    layers: list[Layer] = []
    n = indices[-1] + 1
    for i in range(n):
        if f"{i}.weight" in sd:
            w = sd[f"{i}.weight"]
            if w.ndim != 4:
                raise ValueError(f"{part}: key {i}.weight is not a conv weight (shape {tuple(w.shape)})")
            bias = f"{i}.bias" in sd
            # in the encoder, the bias-free 3x3 convs between blocks are the stride-2 downsamplers
            stride = 2 if (part == "encoder" and not bias and 0 < i < n - 1) else 1
            layers.append(Layer("conv", w.shape[1], w.shape[0], stride=stride, bias=bias))
        elif f"{i}.conv.0.weight" in sd:
            w0 = sd[f"{i}.conv.0.weight"]
            w4 = sd[f"{i}.conv.4.weight"]
            layers.append(Layer("block", w0.shape[1], w4.shape[0], gn=f"{i}.pool.0.weight" in sd))
        else:  # parameter-free layer: which one follows from its position
            if part == "encoder":
                raise ValueError(f"{part}: unexpected parameter-free layer at index {i}")
            if i == 0:
                layers.append(Layer("clamp"))
            elif i == 2 and layers[-1].kind == "conv":
                layers.append(Layer("relu"))  # right after the latent → width conv
            else:
                layers.append(Layer("upsample"))
    return layers


def layout_from_state_dict(encoder_sd: dict | None, decoder_sd: dict | None) -> TinyAELayout:
    """Read the layer sequence of each half from its keys (either may be None: use the standard one)."""
    enc = _layers_from_keys(encoder_sd, "encoder") if encoder_sd is not None else None
    dec = _layers_from_keys(decoder_sd, "decoder") if decoder_sd is not None else None
    if enc is None or dec is None:
        ref = enc or dec
        latent = ref[-1].n_out if enc is not None else ref[1].n_in
        gn = any(layer.gn for layer in ref)
        std = standard_layout(latent_channels=latent, gn_mid=gn)
        enc = enc or list(std.encoder)
        dec = dec or list(std.decoder)
    return TinyAELayout(tuple(enc), tuple(dec))


def _build(layers: tuple[Layer, ...]) -> nn.Sequential:
    mods: list[nn.Module] = []
    for layer in layers:
        if layer.kind == "conv":
            mods.append(conv(layer.n_in, layer.n_out, stride=layer.stride, bias=layer.bias))
        elif layer.kind == "block":
            mods.append(Block(layer.n_in, layer.n_out, groupnorm_branch=layer.gn))
        elif layer.kind == "clamp":
            mods.append(Clamp())
        elif layer.kind == "relu":
            mods.append(nn.ReLU())
        elif layer.kind == "upsample":
            mods.append(nn.Upsample(scale_factor=2))
        else:
            raise ValueError(f"unknown layer kind {layer.kind!r}")
    return nn.Sequential(*mods)


class TinyAutoencoder(nn.Module):
    """Encoder + decoder; ``reconstruct`` maps RGB in [0, 1] to RGB in [0, 1]."""

    def __init__(self, layout: TinyAELayout):
        super().__init__()
        self.layout = layout
        self.encoder = _build(layout.encoder)
        self.decoder = _build(layout.decoder)

    @property
    def stride(self) -> int:
        return self.layout.stride

    @property
    def latent_channels(self) -> int:
        return self.layout.latent_channels

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).clamp(0, 1)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


# --------------------------------------------------------------------------- loading


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors only, read through :mod:`aligncore.safeio` (safetensors, or weights-only torch files).

    diffusers-style prefixes (``encoder.layers.``/``decoder.layers.``) are stripped.
    """
    from aligncore.safeio import load_state_dict

    sd = load_state_dict(path)  # refuses code-running pickles; unwraps {"state_dict": ...}
    for prefix in ("encoder.layers.", "decoder.layers.", "layers."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return dict(sd)


def load_tiny_autoencoder(encoder_path: str | Path, decoder_path: str | Path) -> TinyAutoencoder:
    """Build the module the weight files describe and load both halves strictly (in float32)."""
    enc_sd = read_state_dict(encoder_path)
    dec_sd = read_state_dict(decoder_path)
    layout = layout_from_state_dict(enc_sd, dec_sd)
    if layout.latent_channels != layout.decoder[1].n_in:
        raise ValueError(
            f"encoder ({encoder_path}) gives {layout.latent_channels} latent channels but the decoder "
            f"({decoder_path}) expects {layout.decoder[1].n_in}: they are not a pair"
        )
    model = TinyAutoencoder(layout)
    model.encoder.load_state_dict({k: v.float() for k, v in enc_sd.items()}, strict=True)
    model.decoder.load_state_dict({k: v.float() for k, v in dec_sd.items()}, strict=True)
    return model.eval()


def random_tiny_autoencoder(latent_channels: int = 4, width: int = 16, levels: int = 3, gn_mid: bool = True,
                            blocks_per_level: int = 1, seed: int = 0) -> TinyAutoencoder:
    """A small random-weight autoencoder of the same family (offline tests, sanity baselines)."""
    from aligncore.torchutil import seeded

    with seeded(seed):
        model = TinyAutoencoder(standard_layout(latent_channels, width, levels, gn_mid, blocks_per_level))
    return model.eval()
