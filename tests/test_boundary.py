"""The folder boundary and the promises (issue 15, section 6): folder scans follow the manifest rule, entries
that are not files are listed with a reason, and a code-running pickle gives UnsafeCheckpointError on every
path that loads weights (the store-path and error-naming promises: tests/test_errors_name_input.py)."""

from __future__ import annotations

import csv
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from aligncore.cli import build_cli
from aligncore.errors import DataError
from aligncore.safeio import UnsafeCheckpointError
from aligncore.testing import make_image_folder


def alignctl(*args: str):
    return CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)


@pytest.fixture
def ds(tmp_path):
    return make_image_folder(tmp_path / "ds", n_real=3, n_fake=3)


def test_folder_scans_apply_the_manifest_rule_to_symlinks(ds, tmp_path):
    secret = tmp_path / "secret.png"
    shutil.copyfile(next((ds / "genA" / "0_real").iterdir()), secret)
    (ds / "genA" / "1_fake" / "leak.png").symlink_to(secret)
    (ds / "genA" / "1_fake" / "inside.png").symlink_to(next((ds / "genA" / "0_real").iterdir()))
    res = alignctl("run", "--branches", "fake", "--data", str(ds), "--out", str(tmp_path / "r"), "-q")
    assert res.exit_code == 1 and "leak.png" in res.output and "outside the data folder" in res.output, res.output
    assert "--allow-outside-paths" in res.output and not (tmp_path / "r").exists()
    from aligncore.data import load_dataset

    with pytest.raises(DataError, match="leak.png"):
        load_dataset(ds)
    paths = {Path(r.path).name for r in load_dataset(ds, allow_outside=True).records}
    assert {"leak.png", "inside.png"} <= paths  # with the flag (and a link inside the folder needs none)
    (ds / "genA" / "1_fake" / "leak.png").unlink()
    assert "inside.png" in {Path(r.path).name for r in load_dataset(ds).records}


def test_fifos_devices_and_symlink_loops_are_listed_with_a_reason(ds, tmp_path):
    fake = ds / "genA" / "1_fake"
    os.mkfifo(fake / "pipe.png")
    (fake / "loop-a.png").symlink_to(fake / "loop-b.png")
    (fake / "loop-b.png").symlink_to(fake / "loop-a.png")
    (fake / "dangling.png").symlink_to(fake / "nowhere.png")
    (fake / "zero.png").symlink_to("/dev/zero")  # a device (outside the folder: needs the flag)
    res = alignctl("run", "--branches", "fake", "--data", str(ds), "--out", str(tmp_path / "r"), "-q",
                   "--allow-outside-paths", "--store", str(tmp_path / "s.sqlite"))
    assert res.exit_code == 0, res.output
    with open(tmp_path / "r" / "skipped.csv", newline="") as f:
        reasons = {Path(r["path"]).name: r["reason"] for r in csv.DictReader(f)}
    assert "FIFO" in reasons["pipe.png"]
    assert "character device" in reasons["zero.png"]
    assert "symlink loop" in reasons["loop-a.png"] and "symlink loop" in reasons["loop-b.png"]
    assert "broken symlink" in reasons["dangling.png"]
    # a manifest naming them gets the same reasons instead of "does not exist"
    manifest = ds / "m.csv"
    manifest.write_text("path,label\n" + "".join(f"genA/1_fake/{n},1\n" for n in ("pipe.png", "loop-a.png")))
    from aligncore.data import load_dataset

    assert len(load_dataset(manifest).records) == 2


def test_reads_are_sized_by_the_file_and_still_capped_when_it_grows(tmp_path):
    """read_capped reads a file's size, not the whole limit, and a file that grew since its size was checked is
    read on up to the limit (one byte over: the caller refuses it), as f.read(limit + 1) did."""
    from aligncore.data.images import ImageLoadError, load_image
    from aligncore.files import open_regular, read_bytes, read_capped

    p = tmp_path / "f.bin"
    p.write_bytes(b"x" * 1000)
    assert read_bytes(p, 1000) == b"x" * 1000
    with open_regular(p, 1000) as f:
        with open(p, "ab") as grow:  # grows after open_regular checked its size
            grow.write(b"y" * 500)
        assert read_capped(f, 2000) == b"x" * 1000 + b"y" * 500
    with open_regular(p, 1500) as f:
        with open(p, "ab") as grow:
            grow.write(b"z" * 100)
        assert len(read_capped(f, 1500)) == 1501  # past the limit: one byte more, so it is refused
    if os.path.exists("/proc/self/status"):  # a regular file whose size says 0: read on, not taken as empty
        assert b"Pid:" in read_bytes("/proc/self/status", 1 << 20)
    with pytest.raises(ImageLoadError, match="not a recognised image"):
        load_image(p)  # read whole (1600 bytes), then refused as what it is


# ---------------------------------------------------------------------- unsafe pickles, every path


class _CreatesFile:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil(path: Path, marker: Path, tensors: dict | None = None) -> Path:
    torch.save({**(tensors or {"w": torch.zeros(2)}), "evil": _CreatesFile(str(marker))}, path)
    return path


def _assert_documented_refusal(exc_info, marker: Path) -> None:
    msg = str(exc_info.value)
    assert "weights_only=False" not in msg and "refused to load" in msg, msg
    assert not marker.exists(), "the pickle's payload ran"


def test_a_peft_adapter_folder_is_checked_whole(tmp_path):
    """The adapter check looked at one file (model.safetensors) while peft would load adapter_model.bin."""
    from safetensors.torch import save_file

    from aligncore.safeio import check_adapter_dir

    d, marker = tmp_path / "adapter", tmp_path / "PWNED"
    d.mkdir()
    (d / "adapter_config.json").write_text("{}")
    save_file({"w": torch.zeros(1)}, str(d / "model.safetensors"))
    _evil(d / "adapter_model.bin", marker)
    with pytest.raises(UnsafeCheckpointError) as exc:
        check_adapter_dir(d)
    _assert_documented_refusal(exc, marker)


def test_a_qwen_checkpoint_with_an_unsafe_base_or_adapter_is_refused(tmp_path):
    from aligncore.registry import create_branch
    from aligncore_plugins import qwen_model as qm

    marker = tmp_path / "PWNED"
    for part in ("base", "adapter"):
        ck = tmp_path / f"ck-{part}"
        proc = qm.build_tiny_processor(56 * 56, 112 * 112)
        proc.save_pretrained(str(ck))
        (ck / "aligncore_qwen.json").write_text(json.dumps({"branch": "qwen", "preset": "tiny",
                                                            "min_pixels": 3136, "max_pixels": 12544}))
        if part == "base":
            model = qm.build_tiny_model(proc.tokenizer)
            from safetensors.torch import load_file

            model.save_pretrained(str(ck / qm.BASE_DIR))
            sd = load_file(str(ck / qm.BASE_DIR / "model.safetensors"))
            (ck / qm.BASE_DIR / "model.safetensors").unlink()  # the base as a pickle, as older checkpoints hold it
            _evil(ck / qm.BASE_DIR / "pytorch_model.bin", marker, sd)
        else:
            (ck / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
            _evil(ck / "adapter_model.bin", marker)
        branch = create_branch("qwen", checkpoint=str(ck), device="cpu")
        with pytest.raises(UnsafeCheckpointError) as exc:
            branch.ensure_loaded()
        _assert_documented_refusal(exc, marker)


def test_a_trainer_checkpoint_being_resumed_is_checked(tmp_path):
    """A DPO trainer resumes from OUT/trainer/checkpoint-N, whose optimizer/RNG states transformers unpickles."""
    from aligncore.safeio import check_folder

    ck, marker = tmp_path / "checkpoint-8", tmp_path / "PWNED"
    ck.mkdir()
    torch.save({"state": {}, "param_groups": []}, ck / "optimizer.pt")
    import numpy as np

    torch.save({"python": (3, (1, 2), None), "numpy": ("MT19937", np.arange(4, dtype=np.uint32), 0, 0, 0.0),
                "cpu": torch.zeros(3, dtype=torch.uint8)}, ck / "rng_state.pth")
    with open(ck / "training_args.bin", "wb") as f:  # transformers writes it for people and never loads it
        pickle.dump({"note": "never unpickled"}, f)
    check_folder(ck)  # a trainer's own states pass
    _evil(ck / "scheduler.pt", marker)
    with pytest.raises(UnsafeCheckpointError) as exc:
        check_folder(ck)
    _assert_documented_refusal(exc, marker)


def test_a_diffusers_vae_folder_is_checked_before_diffusers_reads_it(tmp_path):
    from aligncore.registry import create_builder

    vae, marker = tmp_path / "vae", tmp_path / "PWNED"
    vae.mkdir()
    (vae / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    _evil(vae / "diffusion_pytorch_model.bin", marker)
    builder = create_builder("sd-vae", {"model": str(vae), "device": "cpu"})
    with pytest.raises(UnsafeCheckpointError) as exc:
        builder.load_model()
    _assert_documented_refusal(exc, marker)


def test_empty_and_truncated_torch_files_name_the_file(tmp_path):
    from aligncore.errors import AlignCoreError
    from aligncore.safeio import safe_torch_load

    for data in (b"", b"PK\x03\x04 truncated zip"):
        p = tmp_path / "w.pt"
        p.write_bytes(data)
        with pytest.raises(AlignCoreError, match="w.pt"):
            safe_torch_load(p)
