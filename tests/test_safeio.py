"""Unsafe checkpoints: weights load only through aligncore.safeio, and code-running pickles are refused."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aligncore.errors import AlignCoreError
from aligncore.safeio import (
    UnsafeCheckpointError, check_adapter_dir, load_peft_adapter, load_state_dict, pickle_globals, safe_torch_load,
)

REPO = Path(__file__).resolve().parents[1]


class _CreatesFile:
    """Unpickling this calls open(marker, 'w'): the file appears only if the pickle's code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _malicious(tmp_path: Path, fmt: str) -> tuple[Path, Path]:
    marker = tmp_path / f"PWNED-{fmt}"
    payload = {"weight": torch.zeros(2), "evil": _CreatesFile(str(marker))}
    path = tmp_path / f"evil-{fmt}.bin"
    if fmt == "torch-zip":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    return path, marker


@pytest.mark.parametrize("fmt", ["torch-zip", "raw-pickle"])
def test_malicious_pickle_is_refused_and_its_payload_never_runs(tmp_path, fmt):
    path, marker = _malicious(tmp_path, fmt)
    assert "builtins.open" in pickle_globals(path) or "io.open" in pickle_globals(path)
    for load in (load_state_dict, safe_torch_load):
        with pytest.raises(UnsafeCheckpointError, match=r"refused to load .*would import .*open"):
            load(path)
    # a checkpoint folder and a peft adapter folder holding it are refused the same way
    d = tmp_path / f"ckpt-{fmt}"
    d.mkdir()
    path.rename(d / "pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError):
        load_state_dict(d)
    (d / "adapter_config.json").write_text("{}")
    (d / "pytorch_model.bin").rename(d / "adapter_model.bin")
    with pytest.raises(UnsafeCheckpointError):
        check_adapter_dir(d)
    assert not marker.exists(), "the pickle's payload ran"


def test_the_payload_is_real(tmp_path):
    """Control: plain pickle.load of the same file does create the marker, so the test above can fail."""
    path, marker = _malicious(tmp_path, "raw-pickle")
    code = "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))"
    subprocess.run([sys.executable, "-c", code, str(path)], check=False, capture_output=True)
    assert marker.exists()


def test_safetensors_and_weights_only_files_load(tmp_path):
    from safetensors.torch import save_file

    sd = {"a.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(1)}
    save_file(sd, tmp_path / "model.safetensors")
    torch.save(sd, tmp_path / "plain.pt")
    torch.save({"state_dict": sd, "step": 3}, tmp_path / "wrapped.ckpt")
    for p in (tmp_path / "model.safetensors", tmp_path / "plain.pt", tmp_path / "wrapped.ckpt", tmp_path):
        got = load_state_dict(p)
        assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd), p


def test_unreadable_checkpoints_give_clear_errors(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    with pytest.raises(AlignCoreError, match="not a readable safetensors"):
        load_state_dict(tmp_path / "junk.safetensors")
    with pytest.raises(AlignCoreError):
        load_state_dict(tmp_path / "junk.pt")
    with pytest.raises(AlignCoreError, match="does not exist"):
        load_state_dict(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AlignCoreError, match="holds no weights"):
        load_state_dict(empty)


def test_peft_adapter_roundtrip(tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)

    def base():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))

    model = get_peft_model(base(), LoraConfig(r=2, target_modules=["0", "2"], init_lora_weights=False))
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    x = torch.randn(3, 4)
    again = load_peft_adapter(base(), tmp_path / "adapter")
    assert torch.allclose(model(x), again(x))


# ---------------------------------------------------------------------- the code base itself

_SOURCE_DIRS = ("aligncore", "plugins", "benchmarks")


def _sources():
    for d in _SOURCE_DIRS:
        for p in sorted((REPO / d).rglob("*.py")):
            if p.name != "safeio.py":
                yield p, p.read_text(encoding="utf-8")


def test_no_unsafe_deserialisation_in_the_code_base():
    bad = []
    for p, text in _sources():
        # every weight load goes through safeio: no torch.load, safetensors reader or pickle anywhere else
        for pat, why in ((r"\btorch\.load\(", "torch.load"), (r"^\s*(from|import)\s+safetensors\b", "a safetensors import"),
                         (r"\bsafe_open\(|\bload_file\(", "a safetensors reader"),
                         (r"^\s*(from|import)\s+(c?pickle|dill|joblib)\b", "a pickle import")):
            if re.search(pat, text, re.MULTILINE):
                bad.append(f"{p.relative_to(REPO)}: {why} (use aligncore.safeio)")
        for pat, why in ((r"\bpickle\.loads?\(", "pickle.load"), (r"\bjoblib\.load\(", "joblib.load"),
                         (r"\bdill\.loads?\(", "dill.load"), (r"allow_pickle\s*=\s*True", "np.load(allow_pickle=True)"),
                         (r"\bcloudpickle\.loads?\(", "cloudpickle.load")):
            if re.search(pat, text):
                bad.append(f"{p.relative_to(REPO)}: {why} (use aligncore.safeio)")
    assert not bad, "\n".join(bad)


def test_trust_remote_code_is_never_on_by_default():
    hits = []
    for p, text in _sources():
        for m in re.finditer(r"trust_remote_code\s*[=:]\s*(True|1\b)", text):
            hits.append(f"{p.relative_to(REPO)}: {m.group(0)}")
    assert not hits, "\n".join(hits)
    # every registered component config that exposes the switch defaults it to off
    from aligncore.registry import get_registry

    reg = get_registry()
    for kind, comps in reg.components.items():
        for name, r in comps.items():
            field = r.cls.config_class.model_fields.get("trust_remote_code")
            if field is not None:
                assert field.get_default() is False, f"{kind} {name}: trust_remote_code defaults to {field.get_default()}"
