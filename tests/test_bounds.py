"""Unbounded resources (issue 15, section 1): what a flag, a config, a checkpoint or a file asks for is capped by
what the machine has, before any work, with a message naming the setting."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from aligncore.cli import build_cli
from aligncore.errors import AlignCoreError, ConfigError
from aligncore.limits import memory_budget, usable_cpus
from aligncore.testing import make_image_folder
from procs import children

ALIGNCTL = [sys.executable, "-m", "aligncore"]


def alignctl(*args: str):
    return CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)


@pytest.fixture
def ds(tmp_path):
    return make_image_folder(tmp_path / "ds", n_real=3, n_fake=3)


@pytest.mark.parametrize("args, needle", [
    (["--workers", "1000000"], "at most"),
    (["--num-processes", "1000000"], "rank(s)"),
    (["--num-processes", "0"], "1 or more"),
])
def test_workers_and_ranks_beyond_the_machine_exit_at_once(ds, tmp_path, args, needle):
    """A real process: it must end by itself, quickly, having started no worker or rank."""
    cmd = [*ALIGNCTL, "run", "--branches", "fake", "--data", str(ds), "--out", str(tmp_path / "o"), "-q", *args]
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    spawned = 0
    while proc.poll() is None and time.time() - t0 < 60:
        spawned = max(spawned, len(children(proc.pid)))
        time.sleep(0.05)
    assert proc.poll() is not None, "still running after 60 s"
    err = proc.stderr.read()
    assert proc.returncode == 1 and needle in err, err
    assert "0" in args or f"gives aligncore {usable_cpus()} CPU core(s)" in err, err
    assert err.startswith("Error: ") and "Traceback" not in err
    assert spawned == 0, f"{spawned} child processes were started"
    assert not (tmp_path / "o").exists()


def test_workers_in_a_config_file_are_capped_too(ds, tmp_path):
    cfg = tmp_path / "c.yaml"
    from aligncore.limits import max_workers

    cfg.write_text(f"branches: [fake]\ndata: {ds}\nworkers: {max_workers() + 1}\n")
    res = alignctl("run", "--config", str(cfg), "-q")
    assert res.exit_code == 1 and "workers" in res.output and "c.yaml" in res.output, res.output
    from aligncore.train.dpo_config import DPOTrainConfig

    with pytest.raises(Exception, match="dataloader_num_workers"):
        DPOTrainConfig(dataloader_num_workers=10**6)


def _laughs(levels: int) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [6, 9])
def test_yaml_alias_bombs_are_refused_in_every_parsed_file(ds, tmp_path, levels):
    t0 = time.time()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"branches: [fake]\ndata: {ds}\n" + _laughs(levels))
    res = alignctl("run", "--config", str(cfg), "--out", str(tmp_path / "o"), "-q")
    assert res.exit_code == 1 and "expands to more than" in res.output and "c.yaml" in res.output, res.output
    assert not (tmp_path / "o").exists()  # no 10 MB config.yaml written
    # the same bomb in a -o value, a builder config, a suite, a fusion state and a manifest line
    bomb_inline = "{" + _laughs(levels).replace("\n", ", ").rstrip(", ") + "}"
    res = alignctl("run", "--branches", "fake", "--data", str(ds), "-o", f"statistic={bomb_inline}", "-q")
    assert res.exit_code != 0 and "expands to more than" in res.output, res.output
    res = alignctl("build", "fake-pairs", str(ds), "--out", str(tmp_path / "b"), "--config", str(cfg))
    assert res.exit_code != 0 and "expands to more than" in res.output, res.output
    state = tmp_path / "state.json"
    nested: object = 1
    for _ in range(6):
        nested = [nested] * 9  # 531,441 values in about 1 MB of JSON
    state.write_text(json.dumps({"x": nested}))
    from aligncore.commands.run import read_fusion_state

    with pytest.raises(ConfigError, match="state.json"):
        read_fusion_state(str(state))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"path": "x.png", "label": 1, "extra": "[" * 5000 + "]" * 5000}) + "\n"
                        + "[" * 100_000 + "]" * 100_000 + "\n")
    res = alignctl("run", "--branches", "fake", "--data", str(manifest), "-q")
    assert res.exit_code != 0 and "m.jsonl line 2" in res.output and "Traceback" not in res.output, res.output
    assert time.time() - t0 < 60


def test_deep_nesting_is_refused_not_a_recursion_error(ds, tmp_path):
    for suffix, text in ((".yaml", "x: " + "[" * 50_000 + "]" * 50_000), (".json", "[" * 200_000 + "]" * 200_000),
                         (".toml", "x = " + "[" * 50_000 + "]" * 50_000)):
        cfg = tmp_path / f"c{suffix}"
        cfg.write_text(text)
        res = alignctl("run", "--config", str(cfg), "-q")
        assert res.exit_code == 1 and cfg.name in res.output and "Traceback" not in res.output, res.output
        assert "RecursionError" not in res.output


def test_a_perturbation_chain_is_bounded_as_a_whole(ds, tmp_path):
    for spec in ("resize:4+resize:4+resize:4", "resize:2+resize:2+resize:1.5", "resize:0.5+resize:4+resize:4",
                 "+".join(["jpeg:90"] * 9)):
        res = alignctl("run", "--branches", "fake", "--data", str(ds), "--perturb", spec, "-q")
        assert res.exit_code == 1 and "perturbation" in res.output, (spec, res.output)
    # within the chain bound, an image that would pass the pixel limit fails alone, before allocating anything
    from aligncore.data import images
    from aligncore.perturb import parse_perturb
    from PIL import Image

    chain = parse_perturb("resize:4")
    with pytest.raises(ValueError, match="above the limit"):
        old, images.MAX_PIXELS = images.MAX_PIXELS, 10_000
        try:
            chain(Image.new("RGB", (60, 60)))
        finally:
            images.MAX_PIXELS = old
    assert parse_perturb("resize:2+resize:2+crop:0.5").spec == "resize:2.0+resize:2.0+crop:0.5"


def test_oversized_and_special_files_are_never_read_nor_hashed(tmp_path):
    """A 16 GB sparse .jpg costs nothing; /dev/zero through the Python API is refused unread."""
    from aligncore import Detector
    from aligncore.data.datasets import Record, hash_records

    big = tmp_path / "big.jpg"
    with open(big, "wb") as f:
        f.truncate(16 << 30)
    t0 = time.time()
    hashes, unreadable = hash_records([Record(str(big), 1)])
    assert hashes == [None] and "above the limit" in unreadable[0][1]
    det = Detector(branches=["fake"])
    preds = det.predict([big, "/dev/zero", str(tmp_path)])
    assert time.time() - t0 < 5, "a file was read"
    assert "above the limit" in preds[0].error and "character device" in preds[1].error and "folder" in preds[2].error
    assert all(p.verdict is None for p in preds)


def test_batches_and_architectures_beyond_the_memory_are_refused(tmp_path):
    from aligncore.registry import create_branch

    budget = memory_budget()
    with pytest.raises(ConfigError, match="batch_size"):  # a batch of crops larger than the machine's memory
        create_branch("npr", preset="tiny", inference_crops=1024, crop_size=4096)
    with pytest.raises(ConfigError, match="memory"):
        create_branch("spectrum", tile=1024, max_tiles=1024, batch_size=max(1, budget // (1 << 20)))
    with pytest.raises(ConfigError, match="less than or equal"):
        create_branch("npr", preset="tiny", width=10**6)
    with pytest.raises(ConfigError, match="model"):
        create_branch("dinov2", preset="tiny", model="vit_gigantic_patch14_clip_224")
    with pytest.raises(ConfigError, match="max_pixels"):
        create_branch("qwen", preset="tiny", max_pixels=10**12)


def test_a_checkpoint_cannot_ask_for_a_huge_architecture(tmp_path):
    """branch.json's architecture is adopted through the same bounds; the message names the checkpoint."""
    from aligncore.registry import create_branch

    ck = tmp_path / "ck"
    ck.mkdir()
    for arch, needle in (({"width": 65536, "crop_size": 32}, "width"), ({"crop_size": 10**6}, "crop_size"),
                         ({"width": 512, "crop_size": 4096, "inference_crops": 1024}, None)):
        (ck / "branch.json").write_text(json.dumps({"branch": "npr", "architecture": arch}))
        with pytest.raises(AlignCoreError) as exc:
            create_branch("npr", checkpoint=str(ck), inference_crops=arch.get("inference_crops", 16))
        assert str(ck) in str(exc.value) or "memory" in str(exc.value), str(exc.value)
        if needle:
            assert needle in str(exc.value)
