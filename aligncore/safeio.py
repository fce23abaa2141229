"""The one way aligncore loads weights: safetensors, peft adapter folders, or weights-only torch files.

Checkpoints come from strangers. A ``.pt``/``.bin`` file is a pickle, and unpickling can
run any code the file names. So:

- ``*.safetensors`` is read with safetensors (no code, just tensors);
- a pickle-based file goes through ``torch.load(..., weights_only=True)``, whose unpickler
  only rebuilds tensors and plain containers; anything else (``os.system``, ``builtins.open``,
  a custom class) is refused with :class:`UnsafeCheckpointError` naming what it asked for;
- a peft adapter folder is checked the same way before peft touches it.

Call :func:`load_state_dict` (files or folders), :func:`safe_torch_load` (a torch file that
holds more than a flat state dict, e.g. a trainer state), :func:`load_numpy_arrays` (numpy
weights) or :func:`load_peft_adapter`; write checkpoints with :func:`save_state_dict` /
:func:`save_numpy_arrays` (atomic, so a kill never leaves a torn file). ``torch.load``,
safetensors loading and ``pickle`` appear in this module only (``tests/test_safeio.py`` and
``tests/test_model_shape.py`` check), and ``trust_remote_code=True`` is never passed to Hugging
Face loaders by default.
"""

from __future__ import annotations

import pickletools
import re
import zipfile
from pathlib import Path
from typing import Any

from .errors import AlignCoreError

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
#: file names looked for, in order, when a folder is given
WEIGHT_FILES = (
    "adapter_model.safetensors", "model.safetensors", "weights.safetensors",
    "adapter_model.bin", "pytorch_model.bin", "model.pt", "model.pth", "weights.pt",
)
#: Hugging Face loaders must never run code shipped with a model unless a user asks by name
TRUST_REMOTE_CODE = False


class UnsafeCheckpointError(AlignCoreError):
    """A checkpoint would run code (or is not a weights file) and was refused unopened."""


def pickle_globals(path: str | Path) -> list[str]:
    """Names of the callables/classes a pickle (or torch zip checkpoint) imports, read without unpickling."""
    p = Path(path)
    blobs: list[bytes] = []
    if zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as zf:
            blobs = [zf.read(n) for n in zf.namelist() if n.endswith(".pkl")]
    else:
        blobs = [p.read_bytes()]
    found: list[str] = []
    for blob in blobs:
        strings: list[str] = []
        try:
            for op, arg, _ in pickletools.genops(blob):
                if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                    strings.append(str(arg))
                elif op.name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
        except Exception:  # legacy torch files hold several pickles and raw storage bytes: stop at the end of the first
            pass
    return list(dict.fromkeys(found))


def _is_torch_safe(name: str) -> bool:
    return name.startswith(("torch.", "collections.OrderedDict", "_codecs.encode", "numpy.core.multiarray._reconstruct",
                            "numpy.dtype", "numpy.ndarray", "builtins.set", "builtins.frozenset", "builtins.bytearray",
                            "builtins.slice", "builtins.complex"))


def safe_torch_load(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)``, with a refusal that says what the file tried to import.
    ``mmap``: map the tensors instead of reading them (a zip checkpoint is then checked without reading its data)."""
    import pickle

    import torch

    p = Path(path)
    if not p.is_file():
        raise AlignCoreError(f"checkpoint file {p} does not exist.")
    try:
        return torch.load(p, map_location=map_location, weights_only=True, mmap=mmap)
    except (EOFError, OSError, ValueError, KeyError, IndexError, MemoryError, zipfile.BadZipFile) as exc:
        text = str(exc).splitlines()[0][:300] if str(exc) else "the file ends early or is not a torch file"
        raise AlignCoreError(f"checkpoint {p} cannot be read: {type(exc).__name__}: {text}") from None
    except (pickle.UnpicklingError, RuntimeError, AttributeError, ModuleNotFoundError, TypeError) as exc:
        text = str(exc)
        if not isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" not in text:
            raise AlignCoreError(f"checkpoint {p} cannot be read: {type(exc).__name__}: {text.splitlines()[0][:300]}") from None
        names = [n for n in pickle_globals(p) if not _is_torch_safe(n)]
        m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if not names and m:
            names = [m.group(1)]
        what = ", ".join(names[:5]) or "objects other than tensors"
        raise UnsafeCheckpointError(
            f"refused to load {p}: it is a pickle that would import {what} while loading, which could run code "
            "on this machine. aligncore only loads tensors (safetensors, or torch files that pass "
            "torch.load(weights_only=True)). If you trust its author, convert it once in a sandbox: "
            "load it there and save the state dict with safetensors.torch.save_file."
        ) from None


def find_weights_file(folder: str | Path) -> Path:
    """The weights file of a checkpoint folder (safetensors preferred)."""
    d = Path(folder)
    for name in WEIGHT_FILES:
        if (d / name).is_file():
            return d / name
    for pattern in ("*.safetensors", *(f"*{s}" for s in PICKLE_SUFFIXES)):
        hits = sorted(d.glob(pattern))
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise AlignCoreError(f"checkpoint folder {d} holds several weight files ({', '.join(h.name for h in hits[:5])}); "
                                 "pass the file itself.")
    raise AlignCoreError(f"checkpoint folder {d} holds no weights (looked for {', '.join(WEIGHT_FILES)}).")


def load_state_dict(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """Tensors from a ``.safetensors`` file, a weights-only torch file, or a folder holding one of them."""
    p = Path(path).expanduser()
    if not p.exists():
        raise AlignCoreError(f"checkpoint {p} does not exist.")
    if p.is_dir():
        p = find_weights_file(p)
    if p.suffix.lower() in SAFE_SUFFIXES:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device=str(map_location))
        except (SafetensorError, OSError, ValueError) as exc:
            raise AlignCoreError(f"checkpoint {p} is not a readable safetensors file: {exc}") from None
    obj = safe_torch_load(p, map_location)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise AlignCoreError(f"checkpoint {p} holds a {type(obj).__name__}, not a state dict of tensors.")
    return obj


def load_numpy_arrays(path: str | Path) -> dict[str, Any]:
    """numpy arrays from a ``.safetensors`` file (weights of numpy-scored models)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise AlignCoreError(f"checkpoint file {p} does not exist.")
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(p))
    except (SafetensorError, OSError, ValueError) as exc:
        raise AlignCoreError(f"checkpoint {p} is not a readable safetensors file: {exc}") from None


def check_pickle_file(path: str | Path) -> None:
    """Refuse (:class:`UnsafeCheckpointError`) a pickle-based file that would import anything but tensors,
    exactly as ``torch.load(weights_only=True)`` decides; a zip checkpoint's tensor data is mapped, not read."""
    import torch

    p = Path(path)
    with torch.serialization.safe_globals(_numpy_data_globals()):  # plain arrays, as trainers' RNG states hold
        if zipfile.is_zipfile(p):
            try:
                safe_torch_load(p, "cpu", mmap=True)
                return
            except UnsafeCheckpointError:
                raise
            except AlignCoreError:
                pass  # mmap is not possible for this file: load it normally
        safe_torch_load(p, "cpu")


def _numpy_data_globals() -> list:
    """numpy's array and dtype reconstructors: data only (what transformers allows for its RNG states too)."""
    import numpy as np

    core = np._core if hasattr(np, "_core") else np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


#: pickles a loader never unpickles (transformers writes its TrainingArguments there, for people)
NEVER_LOADED = frozenset({"training_args.bin"})


def check_folder(folder: str | Path, what: str = "checkpoint") -> None:
    """Check every pickle-based file below ``folder`` (as :func:`check_pickle_file`) before a library that
    unpickles on its own (transformers, peft, diffusers, a trainer resuming) reads the folder: a code-running
    pickle is refused with :class:`UnsafeCheckpointError`, never with the library's own message."""
    d = Path(folder)
    if not d.is_dir():
        return
    for p in sorted(d.rglob("*")):
        if p.suffix.lower() in PICKLE_SUFFIXES and p.name not in NEVER_LOADED and p.is_file():
            check_pickle_file(p)


def unsafe_from(exc: BaseException, where: str | Path) -> UnsafeCheckpointError | None:
    """The documented refusal for a library's own weights-only error (its text suggests weights_only=False,
    which would run the file's code); None for any other error."""
    text = str(exc)
    if "Weights only load failed" in text or "weights_only" in text or "Unsupported global" in text:
        m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        what = m.group(1) if m else "objects other than tensors"
        return UnsafeCheckpointError(
            f"refused to load {where}: it holds a pickle that would import {what} while loading, which could run "
            "code on this machine. aligncore only loads tensors (safetensors, or torch files that pass "
            "torch.load(weights_only=True)).")
    return None


def check_adapter_dir(folder: str | Path) -> Path:
    """Check a peft adapter folder before peft reads it; returns its weights file. Every pickle in the folder
    is checked, not only the file this function would pick (peft may pick another)."""
    d = Path(folder)
    if not (d / "adapter_config.json").is_file():
        raise AlignCoreError(f"{d} is not a peft adapter folder (no adapter_config.json).")
    weights = find_weights_file(d)
    check_folder(d)  # refuses code-running pickles before peft sees them
    return weights


def load_peft_adapter(model: Any, folder: str | Path, **kwargs: Any) -> Any:
    """``PeftModel.from_pretrained(model, folder)`` after :func:`check_adapter_dir`."""
    from peft import PeftModel

    check_adapter_dir(folder)
    kwargs.setdefault("is_trainable", False)
    try:
        return PeftModel.from_pretrained(model, str(folder), **kwargs)
    except Exception as exc:
        unsafe = unsafe_from(exc, folder)
        if unsafe is not None:
            raise unsafe from None
        raise


def save_state_dict(state_dict: dict[str, Any], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write tensors as safetensors atomically (temp file, fsync, rename): a kill mid-save leaves the old file.

    Trainers should save every checkpoint through this, so a resumed run never meets a torn file.
    """
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    return _atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def save_numpy_arrays(arrays: dict[str, Any], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write numpy arrays as safetensors atomically (see :func:`save_state_dict`)."""
    import numpy as np
    from safetensors.numpy import save_file

    data = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    return _atomic_write(Path(path), lambda tmp: save_file(data, str(tmp), metadata=metadata))


def _atomic_write(p: Path, write) -> Path:
    import os

    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise AlignCoreError(f"cannot write checkpoint {p}: {exc.strerror or exc}. Free disk space or choose another --out.") from None
    return p
