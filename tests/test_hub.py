"""Detectors on the Hugging Face Hub, tested offline through the real code paths.

A checkpoint written by ``save_pretrained`` is placed in a temporary Hugging Face cache exactly as
``hf download`` leaves it (``models--OWNER--NAME/snapshots/<commit>`` + ``refs/main``); with
``HF_HUB_OFFLINE=1`` it is found there and scores identically through ``--checkpoint hf:o/n`` and
``Detector.from_pretrained``. ``alignctl push`` runs to the point where ``HfApi.upload_folder`` is
called; that call (and ``create_repo``) is intercepted and sees the exact files and card.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import aligncore
from aligncore.cli import build_cli
from aligncore.errors import ConfigError, ModelUnavailableError

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def place_in_cache(cache: Path, folder: Path, repo: str = "o/n", commit: str = COMMIT, ref: str | None = "main") -> Path:
    """Lay ``folder`` out as huggingface_hub does: content in ``blobs/<sha256>``, the snapshot's files
    relative symlinks to them, ``refs/<ref>`` naming the commit."""
    import hashlib
    import os

    storage = cache / ("models--" + repo.replace("/", "--"))
    snap = storage / "snapshots" / commit
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = f.read_bytes()
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snap / f.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    if ref:
        (storage / "refs").mkdir(exist_ok=True)
        (storage / "refs" / ref).write_text(commit)
    return snap


@pytest.fixture(scope="module")
def trained_npr(tmp_path_factory) -> Path:
    """A tiny npr trained for one epoch (seconds), with the training record `alignctl train` leaves."""
    from aligncore.testing import make_image_folder
    from aligncore.train import train_branch

    root = tmp_path_factory.mktemp("train")
    data = make_image_folder(root / "set", n_real=6, n_fake=6, generators=("genA", "genB"))
    out = root / "ck"
    train_branch("npr", str(data), out, branch_options={"preset": "tiny", "device": "cpu"},
                 train_options={"epochs": 1, "batch_size": 4, "crop_size": 32, "val_fraction": 0.5},
                 progress=False, command="alignctl train npr --set set --out ck")
    return out


def _run(args, *extra):
    return CliRunner().invoke(build_cli(), ["run", *args, "-q", "--device", "cpu", *extra])


def _scores(run_dir: Path, branch: str) -> list[str]:
    return [r[f"score_{branch}"] for r in csv.DictReader(open(run_dir / "predictions.csv"))]


def test_save_pretrained_checkpoint_scores_identically_from_the_offline_cache(trained_npr, hf_cache, image_folder, tmp_path):
    det = aligncore.Detector(["npr"], device="cpu", branch_options={"npr": {"checkpoint": str(trained_npr)}})
    saved = det.save_pretrained(tmp_path / "saved", repo_id="o/n")
    assert sorted(p.name for p in saved.iterdir()) == [
        "README.md", "aligncore.json", "branch.json", "metrics.csv", "model.safetensors", "training_run.json"]
    place_in_cache(hf_cache, saved)

    local = _run(["--branches", "npr", "--checkpoint", str(trained_npr), "--data", str(image_folder),
                  "--out", str(tmp_path / "local"), "--store", str(tmp_path / "a.sqlite")])
    assert local.exit_code == 0, local.output
    hub = _run(["--branches", "npr", "--checkpoint", "hf:o/n", "--data", str(image_folder),
                "--out", str(tmp_path / "hub"), "--store", str(tmp_path / "b.sqlite")])
    assert hub.exit_code == 0, hub.output
    assert _scores(tmp_path / "hub", "npr") == _scores(tmp_path / "local", "npr")
    assert len(_scores(tmp_path / "hub", "npr")) == 12

    # the revision enters the fingerprint; the folder's content is the same weights
    from aligncore import create_branch

    from_hub = create_branch("npr", checkpoint="hf:o/n")
    from_dir = create_branch("npr", checkpoint=str(trained_npr))
    assert from_hub.weights_digest() == from_dir.weights_digest()
    assert from_hub.fingerprint() != from_dir.fingerprint()
    assert Path(from_hub.config.checkpoint).name == COMMIT

    # the Python API reads the same repository, offline
    pred = aligncore.Detector.from_pretrained("o/n", device="cpu").predict(sorted(image_folder.rglob("*.png"))[:3])
    files = sorted(str(p) for p in image_folder.rglob("*.png"))
    by_path = {r["path"]: r["score_npr"] for r in csv.DictReader(open(tmp_path / "hub" / "predictions.csv"))}
    assert [repr(p.scores["npr"]) for p in pred] == [by_path[f] for f in files[:3]]

    # the card names the branch, the fingerprint and the training's metrics, and no machine path
    card = (saved / "README.md").read_text()
    layout = json.loads((saved / "aligncore.json").read_text())
    fp = layout["branches"]["npr"]["fingerprint"]
    assert fp == create_branch("npr", checkpoint=str(saved)).fingerprint()
    assert "| branch | `npr` |" in card and f"| fingerprint | `{fp}` |" in card
    assert "| loss |" in card and "Validation during training" in card
    assert "alignctl train npr --set set --out ck" in card and "license: unknown" in card
    assert str(tmp_path) not in card and str(trained_npr) not in card


def test_revisions_refs_and_nothing_downloaded_unless_allowed(trained_npr, hf_cache, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: calls.append((a, k)) or 1 / 0)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: calls.append((a, k)) or 1 / 0)
    saved = aligncore.Detector(["npr"], device="cpu", branch_options={"npr": {"checkpoint": str(trained_npr)}}) \
        .save_pretrained(tmp_path / "saved")
    place_in_cache(hf_cache, saved, commit=COMMIT)
    place_in_cache(hf_cache, saved, commit=OTHER, ref=None)
    from aligncore import create_branch

    a = create_branch("npr", checkpoint="hf:o/n")
    b = create_branch("npr", checkpoint=f"hf:o/n@{OTHER}")
    assert Path(a.config.checkpoint).name == COMMIT and Path(b.config.checkpoint).name == OTHER
    assert a.fingerprint() != b.fingerprint() and a.weights_digest() == b.weights_digest()

    with pytest.raises(ModelUnavailableError, match="not in the Hugging Face cache.*downloading was not allowed"):
        create_branch("npr", checkpoint="hf:o/missing")
    with pytest.raises(ModelUnavailableError, match="HF_HUB_OFFLINE is set"):
        create_branch("npr", checkpoint="hf:o/missing", allow_download=True)
    # a cache without refs/main: the message names the snapshots it holds
    shutil.rmtree(hf_cache / "models--o--n" / "refs")
    with pytest.raises(ModelUnavailableError, match=r"holds snapshot\(s\) 0123456789ab, fedcba987654 but no refs/main"):
        create_branch("npr", checkpoint="hf:o/n")
    assert calls == []
    # allowed and online: the resolver asks huggingface_hub (here it fails), naming the repository
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(ModelUnavailableError, match="'o/missing'.*ZeroDivisionError"):
        create_branch("npr", checkpoint="hf:o/missing", allow_download=True)
    assert len(calls) == 1 and calls[0][0] == ("o/missing",)


def test_push_uploads_the_exact_files_and_card(trained_npr, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    seen: dict = {}

    def create_repo(self, repo_id, **kw):
        seen["create"] = (repo_id, kw)

    def upload_folder(self, *, folder_path, repo_id, **kw):
        root = Path(folder_path)
        seen["files"] = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        seen["card"] = (root / "README.md").read_text()
        seen["layout"] = json.loads((root / "aligncore.json").read_text())
        seen["upload"] = (repo_id, kw)
        return "https://hub.invalid/o/n/commit/1"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    r = CliRunner().invoke(build_cli(), ["push", str(trained_npr), "--repo", "o/n", "--private", "--license", "apache-2.0"])
    assert r.exit_code == 0, r.output
    assert seen["create"] == ("o/n", {"repo_type": "model", "private": True, "exist_ok": True})
    assert seen["upload"][0] == "o/n" and seen["upload"][1]["repo_type"] == "model"
    assert seen["files"] == ["README.md", "aligncore.json", "branch.json", "metrics.csv", "model.safetensors",
                             "training_run.json"]
    card = seen["card"]
    fp = seen["layout"]["branches"]["npr"]["fingerprint"]
    from aligncore import create_branch

    assert fp == create_branch("npr", checkpoint=str(trained_npr)).fingerprint()  # the same weights and settings
    for needle in ("license: apache-2.0", "library_name: aligncore", "# o/n", "| branch | `npr` |", f"`{fp}`",
                   "--checkpoint hf:o/n", 'Detector.from_pretrained("o/n")', "- data: `set`",
                   "alignctl train npr --set set --out ck", "| loss |", "## Limits"):
        assert needle in card, needle
    assert str(trained_npr.parent) not in card
    assert "pushed to o/n: https://hub.invalid/o/n/commit/1" in r.output
    # offline mode refuses before anything is built or sent
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    seen.clear()
    r = CliRunner().invoke(build_cli(), ["push", str(trained_npr), "--repo", "o/n"])
    assert r.exit_code != 0 and "HF_HUB_OFFLINE is set" in r.output and not seen


def test_a_multi_branch_detector_round_trips(tmp_path, image_folder, hf_cache):
    det = aligncore.Detector(["fake", "npr"], fusion="max", preset="tiny", device="cpu")
    saved = det.save_pretrained(tmp_path / "two")
    layout = json.loads((saved / "aligncore.json").read_text())
    assert layout["branches"]["fake"]["path"] is None and layout["branches"]["npr"]["path"] == "npr"
    assert layout["fusion"]["name"] == "max"
    assert "RANDOM weights" in (saved / "README.md").read_text()
    images = sorted(image_folder.rglob("*.png"))
    again = aligncore.Detector.from_pretrained(saved, device="cpu")
    assert [b.name for b in again.branches] == ["fake", "npr"] and again.fusion.name == "max"
    assert [p.score for p in again.predict(images)] == [p.score for p in det.predict(images)]
    # --checkpoint BRANCH=DIR picks that branch's folder; a branch saved without weights says so
    place_in_cache(hf_cache, saved, repo="o/two")
    r = _run(["--branches", "npr", "--checkpoint", "npr=hf:o/two", "--data", str(image_folder), "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    with pytest.raises(ConfigError, match="holds no weights for branch 'fake'"):
        aligncore.create_branch("fake", checkpoint=str(saved))
    with pytest.raises(ConfigError, match="holds the detector branch.*fake, npr, not 'spectrum'"):
        aligncore.create_branch("spectrum", checkpoint=str(saved))


def test_save_pretrained_refuses_a_folder_that_holds_files(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(aligncore.errors.AlignCoreError, match="not empty"):
        aligncore.Detector(["fake"]).save_pretrained(tmp_path / "x")
