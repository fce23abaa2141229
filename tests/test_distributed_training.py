"""DDP training smoke test: 2 CPU ranks (accelerate launch, gloo) on the tiny DINOv2 preset.

With gradients averaged over ranks, two ranks that each take half of every batch must end
with the same weights as one process that takes the whole batch.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from aligncore.distributed import free_port
from aligncore.resources import accelerate_config


@pytest.fixture
def pair_set(tmp_path):
    from aligncore.registry import create_builder
    from aligncore.testing import make_image_folder

    src = make_image_folder(tmp_path / "src", n_real=12, n_fake=0, size=(64, 64))
    return create_builder("fake-pairs").build([src], tmp_path / "pairs", progress=False)


def test_two_rank_ddp_training_equals_one_process(pair_set, tmp_path):
    from safetensors.torch import load_file

    args = ["train", "dinov2", "--preset", "tiny", "--set", str(pair_set), "-o", "max_steps=3", "-o", "batch_size=4",
            "-o", "epochs=1", "-o", "lr=0.01"]
    one = subprocess.run([sys.executable, "-m", "aligncore", *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(accelerate_config("cpu_2proc")), "--main_process_port", str(free_port()),
              "-m", "aligncore"]
    two = subprocess.run(launch + args + ["--out", str(tmp_path / "two")], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("checkpoint written") == 1  # only rank 0 reports
    for name in ("adapter_model.safetensors", "head.safetensors"):
        a = load_file(tmp_path / "one" / "last" / name)
        b = load_file(tmp_path / "two" / "last" / name)
        assert a.keys() == b.keys()
        for k in a:
            assert (a[k].float() - b[k].float()).abs().max().item() < 1e-5, k
    lora_b = [v for k, v in load_file(tmp_path / "two" / "last" / "adapter_model.safetensors").items() if "lora_B" in k]
    assert lora_b and max(float(v.abs().max()) for v in lora_b) > 0  # training moved the zero-initialised LoRA B
