"""End-to-end runs: store, resume after SIGKILL, bad files, re-fusion, the Python API."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aligncore import Detector
from aligncore.config import make_run_config
from aligncore.runner import refuse, run

ALIGNCTL = [sys.executable, "-m", "aligncore"]


def _preds(run_dir: Path) -> list[dict]:
    with open(run_dir / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_run_writes_predictions_metrics_and_leaderboard(image_folder, tmp_path):
    cfg = make_run_config(branches="fake", fusion="or", data=str(image_folder), out=str(tmp_path / "r"))
    res = run(cfg, progress=False)
    rows = _preds(res.out_dir)
    assert len(rows) == 12 and {"score_fake", "fused_score", "verdict", "generator"} <= set(rows[0])
    m = json.loads((res.out_dir / "metrics.json").read_text())
    assert m["overall"]["n"] == 12 and set(m["per_generator"]) == {"genA", "genB"}
    assert m["overall"]["auc"] is not None
    db = sqlite3.connect(os.environ["ALIGNCORE_STORE"])
    assert db.execute("SELECT COUNT(*) FROM leaderboard").fetchone()[0] == 1
    assert db.execute("SELECT COUNT(*) FROM scores").fetchone()[0] == 12
    # a second run reuses every score
    res2 = run(make_run_config(branches="fake", data=str(image_folder), out=str(tmp_path / "r2")), progress=False)
    assert res2.branches["fake"].scored == 0 and res2.branches["fake"].reused == 12
    assert [r["fused_score"] for r in _preds(res2.out_dir)] == [r["fused_score"] for r in rows]


def test_fingerprint_changes_with_scoring_config_only():
    from aligncore.registry import create_branch

    a = create_branch("fake").fingerprint()
    assert a == create_branch("fake", batch_size=3, device="cpu", delay_s=1).fingerprint()
    assert a != create_branch("fake", scale=2.0).fingerprint()


def test_refuse_uses_stored_scores_without_models(image_folder, tmp_path, monkeypatch):
    res = run(make_run_config(branches="fake", data=str(image_folder), out=str(tmp_path / "r")), progress=False)
    from aligncore.branch import Branch

    def boom(self):
        raise AssertionError("a model was loaded during re-fusion")

    monkeypatch.setattr(Branch, "load", boom)
    monkeypatch.setattr(Branch, "preprocess", boom)
    out, metrics = refuse(res.out_dir, "weighted", {"threshold": 0.3})
    rows = _preds(out)
    assert len(rows) == 12 and metrics["fusion"]["name"] == "weighted"
    assert all((float(r["fused_score"]) >= 0.3) == (r["verdict"] == "fake") for r in rows)


def _bad_folder(root: Path) -> Path:
    real, fake = root / "0_real", root / "1_fake"
    real.mkdir(parents=True)
    fake.mkdir(parents=True)
    rng = np.random.default_rng(0)
    good = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(good).save(real / "good.png")
    buf = io.BytesIO()
    Image.fromarray(good).save(buf, "JPEG")
    (real / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    (real / "zero.png").write_bytes(b"")
    (fake / "text.png").write_text("I am text, not a PNG")
    Image.fromarray((np.arange(2000, dtype=np.uint16).reshape(40, 50) * 30).astype(np.uint16)).save(fake / "gray16.png")
    Image.fromarray(rng.integers(0, 255, (40, 50, 4), dtype=np.uint8), "CMYK").save(fake / "cmyk.jpg")
    p = Image.fromarray(rng.integers(0, 4, (40, 50), dtype=np.uint8), "P")
    p.putpalette(list(rng.integers(0, 255, 768)))
    p.save(fake / "palette.png", transparency=0)
    frames = [Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)) for _ in range(3)]
    frames[0].save(fake / "anim.gif", save_all=True, append_images=frames[1:])
    return root


def test_bad_files_are_listed_and_good_ones_scored(tmp_path):
    data = _bad_folder(tmp_path / "bad")
    out = subprocess.run(ALIGNCTL + ["run", "--branches", "fake", "--data", str(data), "--out", str(tmp_path / "r"), "-q"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    skipped = {Path(r["path"]).name: r["reason"] for r in csv.DictReader(open(tmp_path / "r" / "skipped.csv"))}
    assert set(skipped) == {"truncated.jpg", "zero.png", "text.png"}
    assert "empty file" in skipped["zero.png"] and "not a recognised image" in skipped["text.png"]
    assert "truncated" in skipped["truncated.jpg"] or "corrupt" in skipped["truncated.jpg"]
    scored = {Path(r["path"]).name for r in _preds(tmp_path / "r")}
    assert scored == {"good.png", "gray16.png", "cmyk.jpg", "palette.png", "anim.gif"}
    assert "skipped 3 file(s)" in out.stdout and "zero.png: empty file" in out.stdout


def test_sigkill_halfway_then_resume_scores_each_image_once(tmp_path):
    from aligncore.testing import make_image_folder

    data = make_image_folder(tmp_path / "ds", n_real=20, n_fake=20)
    store = tmp_path / "kill.sqlite"
    env = {**os.environ, "ALIGNCORE_STORE": str(store)}
    cmd = ALIGNCTL + ["run", "--branches", "fake", "--data", str(data), "--batch-size", "2", "-q",
                      "-o", "delay_s=0.15", "--out", str(tmp_path / "killed")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    done = 0
    while time.time() < deadline:
        time.sleep(0.2)
        if store.exists():
            try:
                done = sqlite3.connect(store).execute("SELECT COUNT(*) FROM scores").fetchone()[0]
            except sqlite3.Error:
                done = 0
            if done >= 10:
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 10 <= done < 40, f"kill landed at {done} scored images"
    out = subprocess.run(cmd[:-1] + [str(tmp_path / "resumed")], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    line = next(l for l in out.stdout.splitlines() if l.startswith("branch fake"))
    scored = int(line.split("scored ")[1].split(",")[0])
    reused = int(line.split("reused from store ")[1].split(",")[0])
    db = sqlite3.connect(store)
    assert db.execute("SELECT COUNT(*) FROM scores").fetchone()[0] == 40
    assert db.execute("SELECT COUNT(DISTINCT sha256) FROM scores").fetchone()[0] == 40
    assert reused >= done and scored + reused == 40
    # the same predictions as an uninterrupted run on a fresh store
    fresh_env = {**os.environ, "ALIGNCORE_STORE": str(tmp_path / "fresh.sqlite")}
    subprocess.run(cmd[:-1] + [str(tmp_path / "fresh")], env=fresh_env, check=True, capture_output=True)
    strip = lambda rows: [(r["path"], r["fused_score"], r["verdict"]) for r in rows]  # noqa: E731
    assert strip(_preds(tmp_path / "resumed")) == strip(_preds(tmp_path / "fresh"))


def test_detector_api_matches_run(image_folder, tmp_path):
    res = run(make_run_config(branches="fake", data=str(image_folder), out=str(tmp_path / "r")), progress=False)
    rows = _preds(res.out_dir)
    det = Detector(branches=["fake"], fusion="or")
    preds = det.predict([r["path"] for r in rows] + [str(tmp_path / "missing.png")])
    assert [p.score for p in preds[:-1]] == [float(r["fused_score"]) for r in rows]  # full precision, both ways
    assert [p.verdict for p in preds[:-1]] == [r["verdict"] for r in rows] and all(p.error is None for p in preds[:-1])
    assert preds[-1].verdict is None and "cannot read" in preds[-1].error
    pil = Image.open(rows[0]["path"])
    assert det.predict(pil)[0].scores["fake"] == pytest.approx(preds[0].scores["fake"])
