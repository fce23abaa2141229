"""Outputs that destroy inputs (issue 15, section 3): output folders are refused when they overlap the data,
hold the user's files or another job's outputs; a run folder never mixes two runs whatever moment a SIGKILL
lands; and the processes of a distributed run die with the command that started them."""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from aligncore.cli import build_cli
from aligncore.errors import AlignCoreError
from aligncore.rundir import RunDir
from aligncore.testing import make_image_folder
from logit_branch import LogitPlugin
from procs import children

ALIGNCTL = [sys.executable, "-m", "aligncore"]


def alignctl(*args: str):
    return CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)


@pytest.fixture
def ds(tmp_path):
    return make_image_folder(tmp_path / "ds", n_real=4, n_fake=4, generators=("g1", "g2"))


def _run(ds, out, *extra):
    return alignctl("run", "--branches", "fake", "--data", str(ds), "--out", str(out), "-q", *extra)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_run_refuses_an_output_folder_that_overlaps_the_data(ds, tmp_path):
    before = _snapshot(ds)
    for out, how in ((ds, "is the data folder"), (ds / "g1" / "runs", "lies inside the data folder"),
                     (ds.parent, "holds the data folder")):
        res = _run(ds, out)
        assert res.exit_code == 1 and how in res.output and "--overwrite" in res.output, res.output
    assert _snapshot(ds) == before, "the data folder was touched"
    # a manifest: its own folder (and any folder holding it) is refused, a run folder beside it is fine
    manifest = tmp_path / "sets" / "m.csv"
    manifest.parent.mkdir()
    manifest.write_text("path,label\n" + "".join(f"{p},{1 if '1_fake' in str(p) else 0}\n" for p in sorted(ds.rglob("*.png"))))
    res = alignctl("run", "--branches", "fake", "--data", str(manifest), "--out", str(manifest.parent), "-q",
                   "--allow-outside-paths")
    assert res.exit_code == 1 and "is the folder of the data file" in res.output, res.output
    res = alignctl("run", "--branches", "fake", "--data", str(manifest), "--out", str(manifest.parent / "run"), "-q",
                   "--allow-outside-paths")
    assert res.exit_code == 0, res.output
    res = _run(ds, ds, "--overwrite")  # asked for: the run's files are written among the images, none replaced
    assert res.exit_code == 0 and {k: v for k, v in _snapshot(ds).items() if k in before} == before


def test_run_reuses_its_own_folder_and_refuses_a_folder_of_another_run_or_of_the_user(ds, tmp_path):
    out = tmp_path / "run"
    assert _run(ds, out).exit_code == 0
    first = RunDir.open(out).run_id
    res = _run(ds, out, "-o", "delay_s=0.01")  # the same configuration (a non-scoring option differs)
    assert res.exit_code == 0, res.output
    assert RunDir.open(out).run_id != first
    kept = _snapshot(out)
    for extra, what in ((["-o", "statistic=brightness"], "fingerprints"), (["--fusion", "max"], "fusion")):
        res = _run(ds, out, *extra)
        assert res.exit_code == 1 and "another configuration" in res.output and what in res.output, res.output
    assert _snapshot(out) == kept, "the earlier run was touched"
    res = _run(ds, out, "--fusion", "max", "--overwrite")
    assert res.exit_code == 0 and RunDir.open(out).config["fusion"] == "max"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    res = _run(ds, mine)
    assert res.exit_code == 1 and "thesis.tex" in res.output and "not a run's" in res.output, res.output
    assert _run(ds, mine, "--overwrite").exit_code == 0
    assert (mine / "thesis.tex").read_text() == "years of work" and RunDir.open(mine)


def test_build_refuses_an_existing_set_of_another_build(ds, tmp_path):
    out = tmp_path / "set"
    build = lambda *extra: alignctl("build", "fake-pairs", str(ds), "--out", str(out), "-q", *extra)
    assert build("-o", "seed=1").exit_code == 0
    first = _snapshot(out)
    assert build("-o", "seed=1").exit_code == 0 and _snapshot(out) == first  # the same build: nothing to do
    res = build("-o", "seed=2")
    assert res.exit_code == 1 and "another build" in res.output and "--overwrite" in res.output, res.output
    assert _snapshot(out) == first, "the existing set was touched"
    res = alignctl("build", "fake-pairs", str(ds / "g1"), "--out", str(out), "-q", "-o", "seed=1")
    assert res.exit_code == 1 and "sources" in res.output, res.output
    res = build("-o", "seed=2", "--overwrite")
    assert res.exit_code == 0, res.output
    fresh = tmp_path / "fresh"
    assert alignctl("build", "fake-pairs", str(ds), "--out", str(fresh), "-q", "-o", "seed=2").exit_code == 0
    assert {k: v for k, v in _snapshot(out).items() if k != "build.json"} == \
        {k: v for k, v in _snapshot(fresh).items() if k != "build.json"}, "--overwrite gives the same set as a fresh build"
    res = alignctl("build", "fake-pairs", str(ds), "--out", str(ds / "g1" / "set"), "-q")
    assert res.exit_code == 1 and "lies inside the data folder" in res.output
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("x")
    res = alignctl("build", "fake-pairs", str(ds), "--out", str(user), "-q")
    assert res.exit_code == 1 and "notes.txt" in res.output


def test_train_report_and_leaderboard_never_write_over_their_inputs(ds, tmp_path):
    res = alignctl("train", "npr", "--set", str(ds), "--out", str(ds / "ckpt"), "--preset", "tiny", "-q")
    assert res.exit_code == 1 and "lies inside the data folder" in res.output and not (ds / "ckpt").exists()
    store = tmp_path / "s.sqlite"
    assert _run(ds, tmp_path / "r", "--store", str(store)).exit_code == 0
    before = (tmp_path / "r" / "predictions.csv").read_bytes()
    res = alignctl("report", str(tmp_path / "r"), "--out", str(tmp_path / "r" / "predictions.csv"))
    assert res.exit_code == 1 and (tmp_path / "r" / "predictions.csv").read_bytes() == before
    size = store.stat().st_size
    res = alignctl("leaderboard", "--store", str(store), "--out", str(store))
    assert res.exit_code == 1 and "score store" in res.output and store.stat().st_size == size


# ---------------------------------------------------------------------- SIGKILL at any moment


@pytest.fixture
def branch(request):
    """The writer's branch: ``fake``, or ``logit-fake`` (a branch with logits; registered here and in the writer)."""
    from aligncore.testing import registered_plugin

    if request.param == "fake":
        yield "fake"
        return
    with registered_plugin(LogitPlugin(), "outputs-logit-plugin"):
        yield "logit-fake"


WRITER = """
import sys, time
from pathlib import Path
import aligncore.rundir as rundir
from aligncore.config import make_run_config
from aligncore.runner import run
from aligncore.testing import registered_plugin
out, data, store, ready, branch, tests = sys.argv[1:7]
sys.path.insert(0, tests)
from logit_branch import LogitPlugin
held = registered_plugin(LogitPlugin(), "outputs-logit-plugin")  # kept: collected, it would unregister
held.__enter__()  # registered until the kill
# a slow disk: each step of a publish takes a while, so a random kill often lands inside one
for name in ("_replace_file", "_exchange", "_carry_over", "_new_stage"):
    def slow(*a, _f=getattr(rundir, name)):
        time.sleep(0.03)
        r = _f(*a)
        time.sleep(0.03)
        return r
    setattr(rundir, name, slow)
k = 0
while True:
    stat = ("smoothness", "brightness")[k % 2]
    run(make_run_config(branches=[branch], data=data, out=out, store=store, overwrite=True,
                        branch_options={branch: {"statistic": stat}}), progress=False)
    Path(ready).touch()
    time.sleep(0.3)  # a pause between runs: a kill in it must find the run just published whole
    k += 1
"""


def _reference(ds: Path, tmp: Path, branch: str = "fake") -> dict[str, tuple[bytes, dict]]:
    """{fingerprint: (predictions.csv, overall metrics)} of each configuration the writer alternates."""
    from aligncore.config import make_run_config
    from aligncore.runner import run

    refs = {}
    for stat in ("smoothness", "brightness"):
        res = run(make_run_config(branches=[branch], data=str(ds), out=str(tmp / stat), store=str(tmp / "ref.sqlite"),
                                  branch_options={branch: {"statistic": stat}}), progress=False)
        fp = res.branches[branch].fingerprint
        refs[fp] = ((tmp / stat / "predictions.csv").read_bytes(), res.metrics["overall"])
    return refs


def _check_readers(out: Path, refs: dict, branch: str = "fake") -> str:
    """Every reader refuses the folder, or all of them see one and the same complete run. Returns what was seen."""
    try:
        rd = RunDir.open(out)
    except AlignCoreError:
        for args in (["fuse", str(out), "--fusion", "max"], ["ablate", str(out)], ["report", str(out)]):
            res = alignctl(*args)
            assert res.exit_code == 1 and "Traceback" not in res.output, res.output
        return "refused"
    fp = rd.config["fingerprints"][branch]
    predictions, overall = refs[fp]  # the run's own description names one of the two configurations...
    assert (out / "predictions.csv").read_bytes() == predictions  # ...and every file is that configuration's
    assert rd.metrics()["overall"] == overall
    import yaml

    assert yaml.safe_load((out / "config.yaml").read_text())["fingerprints"][branch] == fp
    res = alignctl("fuse", str(out), "--fusion", "max")
    assert res.exit_code == 0, res.output
    fused = RunDir.open(out / "fusions" / "max")
    assert fused.config["fingerprints"][branch] == fp
    assert np.array_equal(fused.scores().scores[branch], rd.scores().scores[branch])
    if branch != "fake":  # trust's logit column is part of the one run as well
        assert np.array_equal(fused.scores().logits[branch], rd.scores().logits[branch])
    res = alignctl("ablate", str(out), "--fusions", "or,max")
    assert res.exit_code == 0, res.output
    with open(out / "ablation" / "ablation.csv", newline="") as f:
        assert {r["run_id"] for r in csv.DictReader(f)} == {rd.run_id}
    res = alignctl("report", str(out))
    assert res.exit_code == 0, res.output
    assert rd.run_id in (out / "report.html").read_text()
    return fp


@pytest.mark.parametrize("in_place, branch", [(False, "fake"), (True, "fake"), (False, "logits")],
                         ids=["swapped", "in-place", "swapped-logits"], indirect=["branch"])
def test_sigkill_at_random_moments_never_leaves_a_folder_mixing_two_runs(tmp_path, in_place, branch):
    """A writer alternating two configurations into one folder is SIGKILLed at random moments; after each kill
    run, fuse, ablate and report either refuse the folder or all see one consistent run. ``in-place``: the
    folder also holds a file of the user, so it is never swapped and its files are replaced one by one;
    ``logits``: a branch that gives logits, so predictions.csv also has trust's ``logit_*`` column."""
    ds = make_image_folder(tmp_path / "ds", n_real=10, n_fake=10, generators=("g1", "g2"))
    refs = _reference(ds, tmp_path / "ref", branch)
    if branch != "fake":
        assert all(f"logit_{branch}".encode() in preds.split(b"\n")[0] for preds, _ in refs.values())
    out, ready = tmp_path / "out", tmp_path / "ready"
    out.mkdir()
    if in_place:
        (out / "notes.txt").write_text("mine")
    rng = random.Random(15 + in_place)
    seen = []
    for attempt in range(3):
        ready.unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(out), str(ds), str(tmp_path / "s.sqlite"), str(ready),
                                 branch, str(Path(__file__).parent)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while not ready.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        # the first kill lands in the writer's pause after a publish (the folder must then hold that whole run,
        # whatever the machine's speed); the others at a random moment of the next run, often inside its publish
        time.sleep(0.05 if attempt == 0 else 0.3 + rng.random() * 0.6)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        seen.append(_check_readers(out, refs, branch))
        assert not in_place or (out / "notes.txt").read_text() == "mine"
    assert len(set(seen) - {"refused"}) >= 1, f"no kill left a complete run: {seen}"


# ---------------------------------------------------------------------- children die with the parent


def _tree(pid: int) -> list[int]:
    return [d for c in children(pid) for d in (c, *_tree(c))]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_sigkill_of_a_distributed_run_takes_its_launcher_and_ranks_with_it(tmp_path):
    ds = make_image_folder(tmp_path / "ds", n_real=12, n_fake=12)
    env = {**os.environ, "ALIGNCORE_STORE": str(tmp_path / "s.sqlite"), "OMP_NUM_THREADS": "1"}
    cmd = ALIGNCTL + ["run", "--branches", "fake", "--data", str(ds), "--out", str(tmp_path / "k"), "-q",
                      "--num-processes", "2", "--device", "cpu", "--batch-size", "1", "-o", "delay_s=0.5"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    shard = tmp_path / "k" / "shards" / "rank1.sqlite"
    deadline = time.time() + 150
    while not shard.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None and shard.exists(), "the ranks never started"
    time.sleep(1.0)
    family = _tree(proc.pid)
    try:
        assert len(family) >= 3, f"expected a launcher and two ranks, found {family}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 20
        while any(_alive(p) for p in family) and time.time() < deadline:
            time.sleep(0.2)
        survivors = [p for p in family if _alive(p)]
        assert not survivors, f"processes outlived alignctl: {survivors}"
        time.sleep(1.0)
        assert not (tmp_path / "k" / "run.json").exists(), "a rank went on and published the run"
    finally:
        for p in family:
            if _alive(p):
                os.kill(p, signal.SIGKILL)
