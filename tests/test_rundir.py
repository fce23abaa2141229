"""Run folders: published atomically, refused when incomplete or mixed, read back exactly."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from aligncore import rundir
from aligncore.errors import AlignCoreError
from aligncore.fusion import FusionOutput
from aligncore.rundir import RunDir, ScoreTable


def _table(n: int, seed: int) -> ScoreTable:
    rng = np.random.default_rng(seed)
    s = rng.random(n)
    s[0] = 1 - 2.0**-50  # prints as 1.000000 with 6 decimals; must read back exactly
    return ScoreTable(branches=["b"], paths=[f"/d/{seed}/{i}.png" for i in range(n)], sha256=[f"{seed:02d}{i:062d}" for i in range(n)],
                      labels=np.arange(n) % 2, generators=np.full(n, "g", dtype=object), subsets=np.full(n, "", dtype=object),
                      scores={"b": s}, errors=[""] * n, skipped=[("/d/bad.png", "empty file")])


def _write(out: Path, n: int, seed: int) -> RunDir:
    t = _table(n, seed)
    fused = FusionOutput(t.scores["b"], t.scores["b"] >= 0.5)
    return RunDir.write(out, run_id=f"run-{seed}", kind="run", table=t, fused=fused, metrics={"n": n, "seed": seed},
                        config={"branches": ["b"], "fingerprints": {"b": "b-1"}, "dataset": {"root": "/d"}})


def test_write_then_open_gives_the_table_back_exactly(tmp_path):
    _write(tmp_path / "r", 50, 1)
    rs = RunDir.open(tmp_path / "r").scores()
    t = _table(50, 1)
    assert rs.run_id == "run-1" and rs.dataset == "d" and rs.branches == ["b"]
    assert np.array_equal(rs.scores["b"], t.scores["b"]) and rs.sha256 == t.sha256 and rs.skipped == t.skipped
    assert np.array_equal(rs.labels, t.labels) and rs.verdicts.tolist() == (t.scores["b"] >= 0.5).tolist()
    half = rs.subset(rs.labels == 1)
    assert len(half) == 25 and half.run_id == "run-1" and len(half.fused) == 25


def test_open_refuses_incomplete_and_mixed_folders(tmp_path):
    with pytest.raises(AlignCoreError, match="not a finished run folder"):
        RunDir.open(tmp_path)
    _write(tmp_path / "r", 20, 1)
    other = tmp_path / "other"
    _write(other, 30, 2)
    (tmp_path / "r" / "metrics.json").write_bytes((other / "metrics.json").read_bytes())  # what a torn copy leaves
    with pytest.raises(AlignCoreError, match="mixes files of different runs"):
        RunDir.open(tmp_path / "r")
    (other / "predictions.csv").unlink()
    with pytest.raises(AlignCoreError, match="predictions.csv is missing"):
        RunDir.open(other)


def test_a_run_written_before_run_json_listed_its_files_still_opens(tmp_path):
    _write(tmp_path / "r", 10, 1)
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    del info["files"], info["format"]
    (tmp_path / "r" / "run.json").write_text(json.dumps(info))
    assert len(RunDir.open(tmp_path / "r").scores()) == 10


@pytest.mark.parametrize("foreign", [False, True])
def test_replacing_a_run_keeps_shards_and_foreign_files_and_drops_outputs_of_the_old_run(tmp_path, monkeypatch, foreign):
    swaps = []
    real_exchange = rundir._exchange
    monkeypatch.setattr(rundir, "_exchange", lambda a, b: swaps.append(b) or real_exchange(a, b))
    out = tmp_path / "r"
    _write(out, 20, 1)
    if foreign:
        (out / "notes.txt").write_text("mine")
    (out / "shards").mkdir()
    (out / "shards" / "rank1.sqlite").write_text("x")
    (out / "ablation").mkdir()
    (out / "report.html").write_text("<html>")
    inode = out.stat().st_ino
    _write(out, 30, 2)
    rd = RunDir.open(out)
    assert rd.run_id == "run-2" and len(rd.scores()) == 30
    assert (out / "shards" / "rank1.sqlite").exists() and (not foreign or (out / "notes.txt").read_text() == "mine")
    assert not (out / "ablation").exists() and not (out / "report.html").exists()
    # a folder holding files of the user is never moved (its files are replaced in place); a run folder is swapped
    assert (out.stat().st_ino == inode) == foreign and len(swaps) == (0 if foreign else 1)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no staging folder is left behind"


def test_without_the_swap_files_are_replaced_in_place(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir, "_exchange", lambda a, b: False)  # a file system that cannot swap folders
    out = tmp_path / "r"
    _write(out, 20, 1)
    (out / "notes.txt").write_text("mine")
    _write(out, 30, 2)
    assert RunDir.open(out).run_id == "run-2" and (out / "notes.txt").exists()


def test_an_interrupted_publish_leaves_the_old_run_and_is_cleaned_up_next_time(tmp_path, monkeypatch):
    out = tmp_path / "r"
    _write(out, 20, 1)

    def killed(a, b):
        raise KeyboardInterrupt  # the process dies after staging, before the swap

    monkeypatch.setattr(rundir, "_exchange", killed)
    with pytest.raises(KeyboardInterrupt):
        _write(out, 30, 2)
    assert RunDir.open(out).run_id == "run-1"
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".r.rundir-")]
    monkeypatch.undo()
    _write(out, 40, 3)
    assert RunDir.open(out).run_id == "run-3"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


WRITER = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_rundir import _write
Path({ready!r}).touch()
k = 0
while True:
    k += 1
    _write(Path({out!r}), 200 + 300 * (k % 2), k)
"""


def test_sigkill_at_random_moments_leaves_one_complete_run(tmp_path):
    """A writer replacing the run over and over is killed at random moments: every reader sees one whole run."""
    out = tmp_path / "r"
    _write(out, 10, 0)
    ready = tmp_path / "writing"
    script = WRITER.format(tests=str(Path(__file__).parent), out=str(out), ready=str(ready))
    rng = random.Random(0)
    seen = set()
    for _ in range(5):
        ready.unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while not ready.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.05 + rng.random() * 0.3)  # a few writes in: the kill lands at a random point of one
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        rd = RunDir.open(out)  # never refused: the swap is atomic
        rs, m = rd.scores(), rd.metrics()
        assert m["n"] == len(rs) and rd.run_id == f"run-{m['seed']}" and rs.paths[0] == f"/d/{m['seed']}/0.png"
        seen.add(rd.run_id)
        assert len([p for p in tmp_path.iterdir() if p.name.startswith(".")]) <= 1  # at most the killed stage
    assert len(seen) > 1, "the writer never completed a run: the kills were too early"
