"""Distributed scoring: 2 CPU ranks (gloo, through accelerate launch) equal 1 process; a killed rank loses nothing."""

from __future__ import annotations

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aligncore.distributed import free_port
from aligncore.resources import accelerate_config, accelerate_configs

ALIGNCTL = [sys.executable, "-m", "aligncore"]


def _preds(d: Path):
    with open(d / "predictions.csv", newline="") as f:
        return [(r["path"], r["score_fake"], r["fused_score"], r["verdict"]) for r in csv.DictReader(f)]


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (so a test never touches another job's ranks on a shared machine)."""
    parents: dict[int, int] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                parents[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, todo = set(), [pid]
    while todo:
        cur = todo.pop()
        kids = [c for c, pp in parents.items() if pp == cur and c not in found]
        found.update(kids)
        todo.extend(kids)
    return found


def _rank_pids(rank: int, root: int) -> list[int]:
    pids = []
    for pid in _descendants(root):
        p = Path("/proc") / str(pid)
        try:
            env = (p / "environ").read_bytes().split(b"\0")
            cmd = (p / "cmdline").read_bytes()
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"aligncore" in cmd and b"accelerate" not in cmd:
            pids.append(pid)
    return pids


@pytest.fixture
def dataset(tmp_path):
    from aligncore.testing import make_image_folder

    return make_image_folder(tmp_path / "ds", n_real=12, n_fake=12, generators=("g1", "g2"))


CONFIGS = sorted(accelerate_configs().values())


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_accelerate_parses_every_config(path):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(path))
    assert cfg.num_processes >= 1 and cfg.num_machines >= 1
    if "zero" in path.name:
        assert str(cfg.distributed_type) == "DistributedType.DEEPSPEED"
        assert cfg.deepspeed_config["zero_stage"] == int(path.name[4])


def test_two_cpu_ranks_equal_one_process(dataset, tmp_path):
    """Launched by accelerate itself with the shipped CPU config, as users launch multi-GPU runs."""
    env1 = {**os.environ, "ALIGNCORE_STORE": str(tmp_path / "one.sqlite")}
    subprocess.run(ALIGNCTL + ["run", "--branches", "fake", "--data", str(dataset), "--out", str(tmp_path / "one"), "-q"],
                   env=env1, check=True, capture_output=True)
    env2 = {**os.environ, "ALIGNCORE_STORE": str(tmp_path / "two.sqlite")}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(accelerate_config("cpu_2proc")), "--main_process_port", str(free_port()),
              "-m", "aligncore"]
    out = subprocess.run(launch + ["run", "--branches", "fake", "--data", str(dataset), "--out", str(tmp_path / "two"), "-q"],
                         env=env2, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "branch fake: scored 24, reused from store 0" in out.stdout  # both ranks' counts, summed on rank 0
    assert _preds(tmp_path / "two") == _preds(tmp_path / "one")
    db = sqlite3.connect(tmp_path / "two.sqlite")
    assert db.execute("SELECT COUNT(*), COUNT(DISTINCT sha256) FROM scores").fetchone() == (24, 24)
    assert not list((tmp_path / "two" / "shards").glob("*.sqlite"))  # merged and removed


def test_killing_one_rank_loses_nothing(dataset, tmp_path):
    store = tmp_path / "k.sqlite"
    env = {**os.environ, "ALIGNCORE_STORE": str(store)}
    cmd = ALIGNCTL + ["run", "--branches", "fake", "--data", str(dataset), "--out", str(tmp_path / "k"), "-q",
                      "--num-processes", "2", "--device", "cpu", "--batch-size", "1", "-o", "delay_s=0.5"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    shard1 = tmp_path / "k" / "shards" / "rank1.sqlite"
    deadline, killed = time.time() + 90, False
    while time.time() < deadline and not killed:
        time.sleep(0.2)
        if shard1.exists():
            try:
                n = sqlite3.connect(shard1).execute("SELECT COUNT(*) FROM scores").fetchone()[0]
            except sqlite3.Error:
                continue
            if n >= 3:
                for pid in _rank_pids(1, proc.pid):
                    os.kill(pid, signal.SIGKILL)
                    killed = True
    assert killed, "rank 1 never started scoring"
    proc.wait(timeout=120)
    assert proc.returncode != 0  # the launcher reports the dead rank
    env_fresh = {**os.environ, "ALIGNCORE_STORE": str(tmp_path / "fresh.sqlite")}
    subprocess.run(ALIGNCTL + ["run", "--branches", "fake", "--data", str(dataset), "--out", str(tmp_path / "fresh"), "-q"],
                   env=env_fresh, check=True, capture_output=True)
    again = subprocess.run(cmd[:-2], env=env, capture_output=True, text=True)  # same run, resumed (no delay)
    assert again.returncode == 0, again.stderr[-3000:]
    db = sqlite3.connect(store)
    assert db.execute("SELECT COUNT(*), COUNT(DISTINCT sha256) FROM scores").fetchone() == (24, 24)
    assert _preds(tmp_path / "k") == _preds(tmp_path / "fresh")
