"""Pixel-set builders: real photos → (real crop, autoencoder reconstruction) pairs.

Content stays identical inside a pair, so the only difference a detector can learn is the
decoder's trace. Three builders share one base, :class:`PixelSetBuilder`:

- ``tiny-ae``  — TAESD-family tiny autoencoders from local weight files (taesd, taesdxl, taesd3,
  taef1, taef2), architecture read from the state-dict keys (:mod:`aligncore_plugins.tiny_ae_model`);
- ``sd-vae``   — diffusers ``AutoencoderKL``, default the Stable Diffusion 2.1 VAE (scaling 0.18215);
- ``flux-vae`` — the FLUX.1 VAE (16 latent channels, no quant convs, scaling 0.3611, shift 0.1159).

Every photo is centre-cropped (never resampled) to a multiple of the decoder's latent stride
(optionally to at most ``max_side`` first); the real crop and its reconstruction are written in the
same format (PNG, or JPEG at the same quality and subsampling), so no detector can separate the
classes by file format. The output folder is a ``0_real/1_fake`` dataset and its ``manifest.csv``
records the pairing, decoder, PSNR and seed. torch/diffusers are imported only inside methods.
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence

from pydantic import Field

from aligncore import hookimpl
from aligncore.errors import ConfigError, DataError, ModelUnavailableError
from aligncore.supervision import BuilderConfig, SupervisionBuilder, WorkItem, item_seed
from aligncore.torchutil import autocast_for, resolve_device, seeded

SUBSET = "pixel"
REAL_DIR, FAKE_DIR = "0_real", "1_fake"
PSNR_CAP = 100.0  # identical images would give infinity


class PixelSetConfig(BuilderConfig):
    device: str = Field("auto", description="Device for the autoencoder: auto (cuda if available), cpu, cuda or cuda:N.")
    batch_size: int | None = Field(
        None, ge=1, description="Photos per model call (same-size crops are batched); default 8 on GPU, 1 on CPU."
    )
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="Autocast dtype on GPU (auto: the builder's choice); the CPU always runs fp32."
    )
    max_side: int | None = Field(
        None, ge=8, description="Centre-crop each photo to at most this many pixels per side (a crop, never a resize)."
    )
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: leave torch's setting).")
    preset: Literal["tiny"] | None = Field(
        None, description="'tiny': a small random-weight autoencoder built offline (tests; not a real decoder)."
    )
    decoder_name: str | None = Field(
        None, description="Name written to the generator/decoder columns (default derived from the model)."
    )


class PixelSetBuilder(SupervisionBuilder):
    """Shared logic; subclasses implement :meth:`load_model`, :meth:`reconstruct` and the naming."""

    #: how many threads decode, and whether a missing model may be downloaded, never change the set
    nonoutput_fields = frozenset({"threads", "download"})

    config_class: ClassVar[type[PixelSetConfig]] = PixelSetConfig
    config: PixelSetConfig
    #: tiny: a small autoencoder with random weights, built offline
    presets = {"tiny": {"weights": "random"}}
    #: autocast dtype on GPU when precision is 'auto'
    gpu_dtype: ClassVar[str] = "bf16"

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        self.model = None
        self._seconds = 0.0
        self._reconstructed = 0
        self._last_psnrs: list[float] = []

    # ---------------------------------------------------------------- to implement
    @property
    def latent_stride(self) -> int:
        """Pixels per latent cell; crops are rounded down to a multiple of it."""
        raise NotImplementedError

    def load_model(self):
        """Build or load the autoencoder (on CPU); return the module."""
        raise NotImplementedError

    def reconstruct(self, x, seeds: list[int]):
        """(N, 3, H, W) float RGB in [0, 1] on the device → same shape in [0, 1]."""
        raise NotImplementedError

    def default_decoder_name(self) -> str:
        raise NotImplementedError

    def decoder_provenance(self) -> dict[str, Any]:
        return {}

    # ---------------------------------------------------------------- naming
    @property
    def decoder_name(self) -> str:
        return self.config.decoder_name or self.default_decoder_name()

    # ---------------------------------------------------------------- planning
    def plan(self, sources: Sequence[Path]) -> list[WorkItem]:
        """Every real (label 0) or unlabelled photo in the sources; key = source name / relative path."""
        from aligncore.data import load_dataset

        items: list[WorkItem] = []
        prefixes: set[str] = set()
        for src in sources:
            ds = load_dataset(src)
            root = Path(ds.root)
            base = root.parent if root.is_file() else root
            prefix = root.stem if root.is_file() else root.name
            n = 2
            while prefix in prefixes:  # two sources with the same folder name
                prefix = f"{root.stem if root.is_file() else root.name}-{n}"
                n += 1
            prefixes.add(prefix)
            for rec in ds.records:
                if rec.label == 1:
                    continue
                p = Path(rec.path)
                try:
                    rel = p.relative_to(base).as_posix()
                except ValueError:
                    rel = p.name
                items.append(WorkItem(key=f"{prefix}/{rel}", source=p))
        if not items:
            raise DataError(f"no real (label 0) or unlabelled photos found in {', '.join(map(str, sources))}.")
        items.sort(key=lambda it: it.key)
        # Output names: the key flattened into one file name (source folders such as '0_real' must not
        # become folders under 1_fake/, where a dataset reader would take the innermost one as the label),
        # without its suffix unless two photos differ only by suffix.
        def flat(key: str) -> str:
            return key.replace("/", "__")

        stems: dict[str, int] = {}
        for it in items:
            stem = flat(str(Path(it.key).with_suffix("")))
            stems[stem] = stems.get(stem, 0) + 1
        for it in items:
            stem = flat(str(Path(it.key).with_suffix("")))
            it.meta["out_stem"] = stem if stems[stem] == 1 else flat(it.key).replace(".", "_")
        if len({it.meta["out_stem"] for it in items}) != len(items):
            for it in items:  # pathological names: make them unique with a digest of the key
                it.meta["out_stem"] += "-" + hashlib.sha1(it.key.encode("utf-8", "surrogateescape")).hexdigest()[:8]
        return items

    # ---------------------------------------------------------------- model
    def batch_items(self) -> int:
        if self.config.batch_size:
            return self.config.batch_size
        return 8 if self.device.startswith("cuda") else 1

    @property
    def device(self) -> str:
        return resolve_device(self.config.device)

    def setup(self) -> None:
        import torch

        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        if self.model is None:
            self.model = self.load_model().to(self.device).eval()

    def autocast(self):
        """The GPU autocast context (precision 'auto' = the builder's ``gpu_dtype``); the CPU always runs fp32."""
        import contextlib

        dev = self.device
        if not dev.startswith("cuda"):
            return contextlib.nullcontext()
        return autocast_for(dev, self.gpu_dtype if self.config.precision == "auto" else self.config.precision)

    # ---------------------------------------------------------------- processing
    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int] | None:
        """Centre crop to at most ``max_side`` and to a multiple of the latent stride; None if too small."""
        s = self.latent_stride
        cap = self.config.max_side or max(width, height)
        tw, th = min(width, cap) // s * s, min(height, cap) // s * s
        if tw < s or th < s:
            return None
        left, top = (width - tw) // 2, (height - th) // 2
        return left, top, left + tw, top + th

    def process(self, item: WorkItem, out_dir: Path) -> list[dict[str, Any]]:
        return self.process_batch([item], out_dir)[0]

    def process_batch(self, items: Sequence[WorkItem], out_dir: Path) -> list[list[dict[str, Any]]]:
        import numpy as np
        import torch

        from aligncore.data import ImageLoadError, load_image

        crops: dict[int, Any] = {}
        for i, it in enumerate(items):
            try:
                img = load_image(it.source)
            except ImageLoadError:
                continue  # unreadable photo: journalled with no rows, never retried
            box = self.crop_box(*img.size)
            if box is None:
                continue
            crops[i] = np.asarray(img.crop(box), dtype=np.uint8)
        # batch crops of equal size together (one model call per size)
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, arr in crops.items():
            by_shape.setdefault(arr.shape[:2], []).append(i)
        recons: dict[int, Any] = {}
        dev = self.device
        for idxs in by_shape.values():
            x = torch.from_numpy(np.stack([crops[i] for i in idxs])).to(dev).permute(0, 3, 1, 2).float().div_(255)
            seeds = [item_seed(self.config.seed, items[i].key) for i in idxs]
            t0 = time.perf_counter()
            with torch.inference_mode(), self.autocast():
                y = self.reconstruct(x, seeds)
            y8 = y.float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            self._seconds += time.perf_counter() - t0
            self._reconstructed += len(idxs)
            for j, i in enumerate(idxs):
                recons[i] = y8[j]
        results: list[list[dict[str, Any]]] = []
        for i, it in enumerate(items):
            if i not in crops:
                results.append([])
                continue
            results.append(self._write_pair(it, crops[i], recons[i], out_dir))
        return results

    def _write_pair(self, item: WorkItem, real, recon, out_dir: Path) -> list[dict[str, Any]]:
        real_row = self.write_image(real, f"{REAL_DIR}/{item.meta['out_stem']}")
        fake_row = self.write_image(recon, f"{FAKE_DIR}/{item.meta['out_stem']}")
        value = psnr(real, recon)
        self._last_psnrs.append(value)
        h, w = real.shape[:2]
        common = {
            "generator": self.decoder_name,
            "subset": SUBSET,
            "pair_id": item.key,
            "source": str(item.source),
            "psnr": round(value, 4),
            "decoder": self.decoder_name,
            **self.encoding(),
            "seed": self.config.seed,
            "width": w,
            "height": h,
        }
        return [{**real_row, "label": 0, **common}, {**fake_row, "label": 1, **common}]

    # ---------------------------------------------------------------- reporting
    def finalize(self, rows: list[dict[str, Any]], out_dir: Path) -> dict[str, Any]:
        """The set's PSNR statistics (over every pair, resumed ones included) for ``provenance.json``."""
        values = [float(r["psnr"]) for r in rows if int(r["label"]) == 1 and r.get("psnr") is not None]
        self._stats = {
            "pairs": len(values),
            "psnr_mean": round(sum(values) / len(values), 4) if values else None,
            "psnr_min": round(min(values), 4) if values else None,
            "psnr_max": round(max(values), 4) if values else None,
        }
        return {"psnr": self._stats}

    def summary(self) -> str | None:
        stats = getattr(self, "_stats", None)
        if not stats or not stats["pairs"]:
            return "no pairs were built (no readable photo at least one latent stride in size)"
        line = (
            f"{stats['pairs']} pairs through {self.decoder_name}: mean PSNR {stats['psnr_mean']:.2f} dB "
            f"(min {stats['psnr_min']:.2f}, max {stats['psnr_max']:.2f})"
        )
        if self._reconstructed:
            line += (
                f"; this run reconstructed {self._reconstructed} photos in {self._seconds:.1f} s "
                f"({self._seconds / self._reconstructed:.2f} s per photo on {self.device})"
            )
        return line

    def provenance(self) -> dict[str, Any]:
        return {
            "decoder": self.decoder_name,
            "latent_stride": self.latent_stride,
            "crop": "centre crop to a multiple of the latent stride (no resampling)",
            "psnr_definition": "PSNR (dB, 8-bit) between the real crop and the reconstruction before file encoding",
            **self.decoder_provenance(),
        }


def psnr(a, b) -> float:
    import numpy as np

    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * math.log10(255.0**2 / mse))


# ============================================================================ tiny autoencoders


class TinyAEConfig(PixelSetConfig):
    encoder_path: str | None = Field(None, description="Encoder weights of a TAESD-family autoencoder (.pth or .safetensors).")
    decoder_path: str | None = Field(None, description="Decoder weights of the same autoencoder (.pth or .safetensors).")
    reinit_decoder: bool = Field(
        False, description="Sanity baseline: keep the loaded encoder, give the decoder random weights (seeded)."
    )
    latent_channels: int = Field(4, ge=1, description="Latent channels of the preset=tiny random autoencoder.")


class TinyAEBuilder(PixelSetBuilder):
    name = "tiny-ae"
    help = "Real photos and their reconstructions through a TAESD-family tiny autoencoder (local weights)."
    config_class = TinyAEConfig
    config: TinyAEConfig
    gpu_dtype = "fp16"
    #: ``alignctl demo``: a random-weight tiny autoencoder, or the real tiny FLUX.2 one (taef2) when
    #: the demo's weights folder holds its files
    demo_options = {"role": "pixel", "options": {"preset": "tiny", "threads": 1},
                    "weights": {"encoder_path": "taef2_encoder.pth", "decoder_path": "taef2_decoder.pth"}}

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        if c.preset is None:
            missing = [n for n in ("encoder_path", "decoder_path") if not getattr(c, n)]
            if missing:
                raise ConfigError(
                    f"builder 'tiny-ae' needs {' and '.join(missing)} (TAESD-family weight files, e.g. "
                    "-o encoder_path=taef2_encoder.pth -o decoder_path=taef2_decoder.pth), or preset=tiny for a "
                    "random offline autoencoder."
                )
            for n in ("encoder_path", "decoder_path"):
                if not Path(getattr(c, n)).expanduser().is_file():
                    raise ConfigError(f"builder 'tiny-ae': {n} {getattr(c, n)!r} is not a file.")
        self._layout = None

    def _load_module(self):
        from aligncore_plugins import tiny_ae_model

        return tiny_ae_model

    @property
    def latent_stride(self) -> int:
        if self.model is not None:
            return self.model.stride
        if self._layout is None:
            m = self._load_module()
            if self.config.preset == "tiny":
                self._layout = m.standard_layout(self.config.latent_channels, 16, 3, True, 1)
            else:
                try:
                    self._layout = m.layout_from_state_dict(
                        m.read_state_dict(Path(self.config.encoder_path).expanduser()), None
                    )
                except (RuntimeError, ValueError) as exc:
                    raise ConfigError(f"builder 'tiny-ae': {self.config.encoder_path} is not a TAESD-family encoder "
                                      f"this module can read: {str(exc).splitlines()[0]}") from None
        return self._layout.stride

    def load_model(self):
        import torch

        m = self._load_module()
        if self.config.preset == "tiny":
            model = m.random_tiny_autoencoder(self.config.latent_channels, seed=self.config.seed)
        else:
            try:
                model = m.load_tiny_autoencoder(
                    Path(self.config.encoder_path).expanduser(), Path(self.config.decoder_path).expanduser()
                )
            except (RuntimeError, ValueError) as exc:
                raise ConfigError(
                    f"builder 'tiny-ae': {self.config.encoder_path} / {self.config.decoder_path} are not a "
                    f"TAESD-family encoder/decoder pair this module can load strictly: {str(exc).splitlines()[0]}"
                ) from None
        if self.config.reinit_decoder:
            gen = torch.Generator().manual_seed(self.config.seed)
            with torch.no_grad():
                for mod in model.decoder.modules():
                    if isinstance(mod, torch.nn.Conv2d):
                        bound = 1 / math.sqrt(mod.weight[0].numel())
                        mod.weight.copy_(torch.empty_like(mod.weight).uniform_(-bound, bound, generator=gen))
                        if mod.bias is not None:
                            mod.bias.copy_(torch.empty_like(mod.bias).uniform_(-bound, bound, generator=gen))
        self._layout = model.layout
        return model

    def reconstruct(self, x, seeds):
        return self.model.reconstruct(x)

    def default_decoder_name(self) -> str:
        if self.config.preset == "tiny":
            base = "tiny-ae-random"
        else:
            base = Path(self.config.decoder_path).stem
            for suffix in ("_decoder", ".decoder", "-decoder"):
                base = base.removesuffix(suffix)
        return base + ("-random-decoder" if self.config.reinit_decoder else "")

    def decoder_provenance(self) -> dict[str, Any]:
        out: dict[str, Any] = {"preset": self.config.preset, "reinit_decoder": self.config.reinit_decoder}
        if self.config.preset is None:
            from aligncore.hashing import sha256_file

            out["encoder_path"] = str(self.config.encoder_path)
            out["decoder_path"] = str(self.config.decoder_path)
            out["encoder_sha256"] = sha256_file(Path(self.config.encoder_path).expanduser())
            out["decoder_sha256"] = sha256_file(Path(self.config.decoder_path).expanduser())
        if self.model is not None:
            out["latent_channels"] = self.model.latent_channels
            out["groupnorm_mid_blocks"] = self.model.layout.has_groupnorm
        return out


# ============================================================================ diffusers KL autoencoders


class KLVAEConfig(PixelSetConfig):
    model: str = Field(
        "", description="Hugging Face model id or local folder holding the VAE (default: the builder's model)."
    )
    subfolder: str | None = Field("vae", description="Subfolder of the model holding the VAE ('' for none).")
    revision: str | None = Field(None, description="Model revision (branch, tag or commit) on the Hub.")
    download: bool = Field(
        False, description="Allow fetching from the Hugging Face Hub (needs network); otherwise local files/cache only."
    )
    sample_latent: bool = Field(
        False, description="Sample the latent (seeded per photo) instead of taking the posterior mean."
    )
    scaling_factor: float | None = Field(None, description="Latent scaling factor (default: the model config's).")
    shift_factor: float | None = Field(None, description="Latent shift factor (default: the model config's).")


class KLVAEBuilder(PixelSetBuilder):
    """Base for diffusers ``AutoencoderKL`` builders."""

    config_class = KLVAEConfig
    config: KLVAEConfig
    default_model: ClassVar[str] = ""
    default_scaling: ClassVar[float] = 1.0
    default_shift: ClassVar[float] = 0.0
    #: AutoencoderKL arguments for preset=tiny (random weights, built offline)
    tiny_config: ClassVar[dict[str, Any]] = {}

    @property
    def model_id(self) -> str:
        return self.config.model or self.default_model

    @property
    def latent_stride(self) -> int:
        if self.model is not None:
            return 2 ** (len(self.model.config.block_out_channels) - 1)
        if self.config.preset == "tiny":
            return 2 ** (len(self.tiny_config["block_out_channels"]) - 1)
        # a real VAE's stride is known only once loaded: load it now (once)
        self.setup()
        return 2 ** (len(self.model.config.block_out_channels) - 1)

    def load_model(self):
        from diffusers import AutoencoderKL

        if self.config.preset == "tiny":
            with seeded(self.config.seed):
                return AutoencoderKL(**self.tiny_config)
        return _load_hf_vae(AutoencoderKL, self.model_id, self.config.subfolder or None, self.config.revision,
                            self.config.download)

    def _factors(self) -> tuple[float, float]:
        cfg = self.model.config
        scale = self.config.scaling_factor
        if scale is None:
            scale = getattr(cfg, "scaling_factor", None) or self.default_scaling
        shift = self.config.shift_factor
        if shift is None:
            shift = getattr(cfg, "shift_factor", None)
            shift = self.default_shift if shift is None else shift
        return float(scale), float(shift)

    def reconstruct(self, x, seeds):
        import torch

        scale, shift = self._factors()
        dist = self.model.encode(x * 2 - 1).latent_dist
        if self.config.sample_latent:
            noise = torch.stack([
                torch.randn(dist.mean.shape[1:], generator=torch.Generator().manual_seed(s % 2**63)) for s in seeds
            ]).to(dist.mean.device, dist.mean.dtype)
            z = dist.mean + dist.std * noise
        else:
            z = dist.mode()
        z = (z - shift) * scale  # the latent a diffusion model sees
        y = self.model.decode(z / scale + shift).sample
        return (y.float() + 1) / 2

    def default_decoder_name(self) -> str:
        if self.config.preset == "tiny":
            return f"{self.name}-tiny-random"
        return Path(self.model_id.rstrip("/")).name + "-vae"

    def decoder_provenance(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model_id, "subfolder": self.config.subfolder, "preset": self.config.preset,
                               "revision": self.config.revision}
        if self.model is not None:
            scale, shift = self._factors()
            out.update(scaling_factor=scale, shift_factor=shift, latent_channels=self.model.config.latent_channels,
                       weights_digest=_module_digest(self.model))
        return out


def _load_hf_vae(cls, model_id: str, subfolder: str | None, revision: str | None, download: bool):
    """A local folder, or the Hub cache (network only when ``download``); ModelUnavailableError otherwise."""
    from aligncore.hub import resolve_weights

    how = ("Pass -o model=LOCAL_FOLDER (a diffusers model folder, or a VAE folder with -o subfolder=''), "
           "or -o download=true where the Hub is reachable.")
    local = Path(model_id).expanduser()
    if local.exists():  # a VAE folder itself, or a model folder holding the VAE in `subfolder`
        folder = local
        subfolder = subfolder if subfolder and (local / subfolder / "config.json").is_file() else None
    else:
        prefix = f"{subfolder}/" if subfolder else ""
        folder = resolve_weights(model_id, files=[f"{prefix}config.json", f"{prefix}diffusion_pytorch_model.safetensors"],
                                 allow_download=download, revision=revision, how=how)
    from aligncore.safeio import check_folder, unsafe_from

    check_folder(Path(folder) / subfolder if subfolder else folder)  # the documented refusal, before diffusers unpickles
    try:
        return cls.from_pretrained(str(folder), subfolder=subfolder)
    except Exception as exc:
        unsafe = unsafe_from(exc, folder)
        if unsafe is not None:
            raise unsafe from None
        raise ModelUnavailableError(str(folder), how, exc, local=True) from None


def _module_digest(module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class SDVAEBuilder(KLVAEBuilder):
    name = "sd-vae"
    help = "Real photos and their reconstructions through a Stable Diffusion VAE (default SD 2.1; diffusers)."
    default_model = "stabilityai/stable-diffusion-2-1"
    default_scaling = 0.18215
    tiny_config = {
        "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": (8, 16),
        "down_block_types": ("DownEncoderBlock2D",) * 2, "up_block_types": ("UpDecoderBlock2D",) * 2,
        "layers_per_block": 1, "norm_num_groups": 4, "sample_size": 32, "scaling_factor": 0.18215,
    }


class FluxVAEBuilder(KLVAEBuilder):
    name = "flux-vae"
    help = "Real photos and their reconstructions through the FLUX.1 VAE (16 latent channels; diffusers)."
    default_model = "black-forest-labs/FLUX.1-dev"
    default_scaling = 0.3611
    default_shift = 0.1159
    tiny_config = {
        "in_channels": 3, "out_channels": 3, "latent_channels": 16, "block_out_channels": (8, 16),
        "down_block_types": ("DownEncoderBlock2D",) * 2, "up_block_types": ("UpDecoderBlock2D",) * 2,
        "layers_per_block": 1, "norm_num_groups": 4, "sample_size": 32, "scaling_factor": 0.3611,
        "shift_factor": 0.1159, "use_quant_conv": False, "use_post_quant_conv": False,
    }


@hookimpl
def register_supervision_builders(register):
    register(TinyAEBuilder)
    register(SDVAEBuilder)
    register(FluxVAEBuilder)
