"""Interrupted and concurrent jobs, unwritable outputs: real `alignctl` processes, SIGKILLed mid-way.

Scoring uses the model-free ``fake`` branch slowed by ``-o delay_s=...`` (a non-scoring field,
so the fingerprint is the same with and without it); building uses the ``fake-pairs`` builder.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from aligncore.store import ScoreStore
from aligncore.testing import make_image_folder

ALIGNCTL = [sys.executable, "-m", "aligncore"]
N_IMAGES = 24


def alignctl(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run([*ALIGNCTL, *args], capture_output=True, text=True, timeout=300, **kw)
    if check and out.returncode != 0:
        raise AssertionError(f"alignctl {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


def run_in_process(data: Path, store: Path, out: Path):
    """The same run as `alignctl run --branches fake --batch-size 2`, without a process start."""
    from aligncore.config import make_run_config
    from aligncore.runner import run

    return run(make_run_config(branches=["fake"], data=str(data), store=str(store), out=str(out), batch_size=2),
               progress=False)


def store_rows(path: Path) -> list[tuple]:
    if not path.exists():
        return []
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute("SELECT sha256, fingerprint FROM scores").fetchall()
    except sqlite3.OperationalError:  # schema not created yet
        return []
    finally:
        con.close()


def wait_for(pred, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.time()
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"process ended before the kill point:\n{proc.stderr.read() if proc.stderr else ''}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for the kill point")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("jobs") / "ds", n_real=N_IMAGES // 2, n_fake=N_IMAGES // 2,
                             generators=("genA", "genB"))


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    """An uninterrupted run: its predictions are what every interrupted run must end with."""
    d = tmp_path_factory.mktemp("ref")
    run_in_process(dataset, d / "s.sqlite", d / "run")
    return (d / "run" / "predictions.csv").read_text(), (d / "run" / "metrics.json").read_text()


def _run_args(dataset, store, out, delay=None):
    args = ["run", "--branches", "fake", "--data", str(dataset), "--store", str(store), "--out", str(out),
            "--batch-size", "2", "-q"]
    return args + (["-o", f"delay_s={delay}"] if delay else [])


def test_sigkill_during_scoring_then_resume(dataset, reference, tmp_path):
    store = tmp_path / "store.sqlite"
    proc = subprocess.Popen([*ALIGNCTL, *_run_args(dataset, store, tmp_path / "run", delay=0.3)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(store_rows(store)) >= 4, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    kept = len(store_rows(store))
    assert 4 <= kept < N_IMAGES, f"the kill was not mid-way ({kept} rows)"
    assert not (tmp_path / "run" / "predictions.csv").exists()

    out = alignctl(*_run_args(dataset, store, tmp_path / "run"))
    m = re.search(r"branch fake: scored (\d+), reused from store (\d+), failed (\d+)", out.stdout)
    assert m, out.stdout
    scored, reused, failed = map(int, m.groups())
    assert (reused, scored, failed) == (kept, N_IMAGES - kept, 0), "each image must be scored exactly once"
    rows = store_rows(store)
    assert len(rows) == N_IMAGES and len(set(rows)) == N_IMAGES
    # the end result is the uninterrupted run's: same predictions, same metrics
    assert (tmp_path / "run" / "predictions.csv").read_text() == reference[0]
    assert _metrics_core(tmp_path / "run" / "metrics.json") == _metrics_core_text(reference[1])


def _metrics_core_text(text: str) -> dict:
    import json

    m = json.loads(text)
    return {"overall": m["overall"], "per_branch": m["per_branch"]}


def _metrics_core(path: Path) -> dict:
    return _metrics_core_text(path.read_text())


def test_two_concurrent_runs_on_one_store(dataset, reference, tmp_path):
    store = tmp_path / "store.sqlite"
    procs = [subprocess.Popen([*ALIGNCTL, *_run_args(dataset, store, tmp_path / f"run{i}", delay=0.05)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (so, se) in zip(procs, outs):
        assert p.returncode == 0, f"{so}\n{se}"
    rows = store_rows(store)
    assert len(rows) == N_IMAGES, "all rows present"
    con = sqlite3.connect(store)
    dup = con.execute("SELECT sha256, fingerprint, COUNT(*) FROM scores GROUP BY 1, 2 HAVING COUNT(*) > 1").fetchall()
    runs = con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    assert dup == [] and runs == 2
    for i in range(2):
        assert (tmp_path / f"run{i}" / "predictions.csv").read_text() == reference[0]


def test_sigkill_during_a_build_then_resume(dataset, tmp_path):
    args = lambda out, delay: ["build", "fake-pairs", str(dataset), "--out", str(out), "-q", "-o", "seed=7",
                               "-o", f"delay_s={delay}"]
    alignctl(*args(tmp_path / "ref", 0.0))
    proc = subprocess.Popen([*ALIGNCTL, *args(tmp_path / "set", 0.25)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = tmp_path / "set" / "journal.jsonl"
    wait_for(lambda: journal.exists() and journal.read_text().count("\n") >= 3, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done = journal.read_text().count("\n")
    assert 3 <= done < N_IMAGES // 2 and not (tmp_path / "set" / "manifest.csv").exists()
    alignctl(*args(tmp_path / "set", 0.0))
    ref, got = tmp_path / "ref", tmp_path / "set"
    assert (got / "manifest.csv").read_bytes() == (ref / "manifest.csv").read_bytes()
    files = lambda d: sorted(p.relative_to(d).as_posix() for p in d.rglob("*.png"))
    assert files(got) == files(ref) and len(files(ref)) == N_IMAGES  # 12 reals, 12 fakes, no leftovers
    assert all((got / f).read_bytes() == (ref / f).read_bytes() for f in files(ref))
    assert not list(got.rglob("*.tmp"))


def test_sigkill_during_checkpoint_saves_never_leaves_a_torn_file(tmp_path):
    """The generic piece of kill-safe training: a checkpoint written by safeio.save_state_dict."""
    ckpt = tmp_path / "ckpt" / "model.safetensors"
    code = (
        "import sys, torch\n"
        "from aligncore.safeio import save_state_dict\n"
        "step = 0\n"
        "while True:\n"
        "    step += 1\n"
        "    save_state_dict({'w': torch.full((256, 256), float(step))}, sys.argv[1], {'step': str(step)})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(ckpt)], stderr=subprocess.PIPE, text=True)
    wait_for(lambda: ckpt.exists(), proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    from safetensors import safe_open

    from aligncore.safeio import load_state_dict

    sd = load_state_dict(ckpt)
    with safe_open(str(ckpt), "pt") as f:
        step = int(f.metadata()["step"])
    assert step >= 1 and bool((sd["w"] == float(step)).all()), "the checkpoint on disk is one complete save"


# ---------------------------------------------------------------------- unwritable outputs


def _unwritable_dir() -> Path | None:
    for cand in (Path("/sys/aligncore-test"), Path("/proc/aligncore-test")):
        try:
            cand.mkdir()
        except OSError:
            return cand
        cand.rmdir()
    return None


def test_unwritable_run_directory_gives_a_clear_error(dataset, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    targets = [blocker / "run"]  # a path below a regular file can never be created, even by root
    ro = _unwritable_dir()
    if ro is not None:
        targets.append(ro)  # a directory on a filesystem that refuses writes (sysfs/procfs)
    for out in targets:
        res = alignctl("run", "--branches", "fake", "--data", str(dataset), "--out", str(out), "-q", check=False)
        assert res.returncode == 1
        assert "cannot write to the run directory" in res.stderr and "Traceback" not in res.stderr, res.stderr
    res = alignctl("run", "--branches", "fake", "--data", str(dataset), "--store", str(blocker / "s.sqlite"),
                   "--out", str(tmp_path / "r"), "-q", check=False)
    assert res.returncode == 1 and "cannot open the score store" in res.stderr and "Traceback" not in res.stderr
    res = alignctl("build", "fake-pairs", str(dataset), "--out", str(blocker / "set"), "-q", check=False)
    assert res.returncode == 1 and "cannot create the output folder" in res.stderr and "Traceback" not in res.stderr


def _limit_file_size(nbytes: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return apply


def test_full_disk_while_scoring_keeps_the_store_readable(tmp_path):
    """RLIMIT_FSIZE makes every write past a size fail (EFBIG), as a full disk would (ENOSPC)."""
    small = make_image_folder(tmp_path / "small", n_real=2, n_fake=2)
    big = make_image_folder(tmp_path / "big", n_real=40, n_fake=40, seed=3)
    store = tmp_path / "store.sqlite"
    run_in_process(small, store, tmp_path / "r0")
    before = set(store_rows(store))
    # checkpoint the WAL into the main file, so the limit bites on new data, not old
    con = sqlite3.connect(store)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    limit = store.stat().st_size + 4096
    res = subprocess.run([*ALIGNCTL, "run", "--branches", "fake", "--data", str(big), "--store", str(store),
                          "--out", str(tmp_path / "r1"), "-q", "--batch-size", "4"],
                         capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size(limit))
    assert res.returncode == 1, res.stdout + res.stderr
    # SQLite reports the failed write as "disk I/O error" (EFBIG) or "database or disk is full" (ENOSPC)
    assert "cannot write to the score store" in res.stderr and "Free disk space" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    with ScoreStore(store) as s:  # still opens, still answers
        assert s.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert s.count() >= len(before)
    assert before <= set(store_rows(store))
    # with the space back, a re-run finishes the job
    run_in_process(big, store, tmp_path / "r1")
    assert len(store_rows(store)) == len(before) + 80


def test_sigkill_during_training_then_resume_gives_the_same_weights(tmp_path):
    """A real SIGKILL of `alignctl train npr` mid-run; the same command again ends bit-identical to an uninterrupted run."""
    import json as _json

    from safetensors.numpy import load_file

    from aligncore.registry import create_builder

    src = make_image_folder(tmp_path / "src", n_real=16, n_fake=0, size=(112, 112))
    pairs = create_builder("fake-pairs").build([src], tmp_path / "pairs", progress=False)
    args = [sys.executable, "-m", "aligncore", "train", "npr", "--preset", "tiny", "--device", "cpu", "--set", str(pairs),
            "-o", "max_steps=40", "-o", "epochs=100", "-o", "batch_size=16", "-o", "crop_size=96",
            "-o", "save_every_steps=4", "-o", "val_fraction=0.25"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(args + ["--out", str(tmp_path / "full")], env=env, check=True, capture_output=True)
    proc = subprocess.Popen(args + ["--out", str(tmp_path / "cut")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "cut" / "state" / "trainer_state.json"
    step, deadline = 0, time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
        try:
            step = _json.loads(state.read_text())["global_step"]
        except (OSError, ValueError, KeyError):
            continue
        if step >= 8:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and 8 <= step < 40, (proc.returncode, step)
    subprocess.run(args + ["--out", str(tmp_path / "cut")], env=env, check=True, capture_output=True)
    a = load_file(str(tmp_path / "full" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _open_and_write(path, start):
    start.wait()
    s = ScoreStore(path)
    s.put_scores("fp", "b", [(f"h{os.getpid()}", 0.5)])
    s.close()


def test_many_processes_creating_one_new_store_at_once(tmp_path):
    """Switching a brand-new SQLite file to WAL answers "locked" without waiting; ranks starting together hit it."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    for trial in range(25):
        path = str(tmp_path / f"s{trial}.sqlite")
        start = ctx.Event()
        procs = [ctx.Process(target=_open_and_write, args=(path, start)) for _ in range(8)]
        for p in procs:
            p.start()
        start.set()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0] * 8, f"trial {trial}"
        db = sqlite3.connect(path)
        assert db.execute("SELECT COUNT(*) FROM scores").fetchone()[0] == 8
        db.close()
