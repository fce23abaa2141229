"""The one scoring path: scores unchanged from the per-branch path, one decode per image for all
branches, the score contract in the Python API, full-precision predictions."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aligncore import Detector, hookimpl
from aligncore.config import make_run_config
from aligncore.data import load_dataset, load_image
from aligncore.perturb import parse_perturb
from aligncore.registry import create_branch, get_registry
from aligncore.runner import run
from aligncore.testing import FakeBranch, registered_plugin

from decode_reference import FIXTURE, current_scores, make_reference_images


def _preds(run_dir: Path) -> dict[str, dict]:
    with open(run_dir / "predictions.csv", newline="") as f:
        return {r["path"]: r for r in csv.DictReader(f)}


def test_scores_equal_the_frozen_per_branch_path(tmp_path):
    """The ``fake`` branch's scores (clean and perturbed) equal, bit for bit, what the per-branch path stored."""
    want = json.loads(FIXTURE.read_text())
    images = make_reference_images(tmp_path / "images")
    got = current_scores(images, tmp_path)
    assert got == want
    preds = _preds(tmp_path / "run-clean")  # predictions.csv holds the stored value itself
    assert {Path(p).relative_to(images).as_posix(): float(r["score_fake"]) for p, r in preds.items()} == want["clean"]


@pytest.mark.parametrize("perturb", [None, "jpeg:75"])
def test_two_branch_run_equals_each_branch_alone(tmp_path, perturb):
    """npr and spectrum scored in one run (one decode) give the scores each branch gives alone, image by image."""
    images = make_reference_images(tmp_path / "images")
    res = run(make_run_config(branches="npr,spectrum", preset="tiny", device="cpu", data=str(images),
                              out=str(tmp_path / "r"), perturb=perturb), progress=False)
    preds = _preds(res.out_dir)
    paths = [r.path for r in load_dataset(images).records]
    chain = parse_perturb(perturb)
    pixels = [chain(load_image(p)) if chain else load_image(p) for p in paths]
    for name in ("npr", "spectrum"):
        alone = create_branch(name, preset="tiny", device="cpu").score(pixels)
        together = [float(preds[p][f"score_{name}"]) for p in paths]
        assert np.max(np.abs(np.array(together) - np.array(alone))) <= 1e-6, name


def _count_calls(monkeypatch, owner, attr: str) -> Counter:
    calls: Counter = Counter()
    real = getattr(owner, attr)

    def counted(*args, **kwargs):
        calls[str(args[-1]) if attr == "load_image" else "call"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, attr, counted)
    return calls


def test_a_two_branch_run_decodes_each_image_once(tmp_path, monkeypatch):
    from aligncore.data import loader

    images = make_reference_images(tmp_path / "images")
    paths = [r.path for r in load_dataset(images).records]
    decodes = _count_calls(monkeypatch, loader, "load_image")
    spectrum_cls = type(create_branch("spectrum"))
    spectrum_prep = Counter()
    real_prep = spectrum_cls.preprocess
    monkeypatch.setattr(spectrum_cls, "preprocess", lambda self, im: (spectrum_prep.update(["x"]), real_prep(self, im))[1])

    def go(branches: str, out: str):
        return run(make_run_config(branches=branches, preset="tiny", device="cpu", data=str(images), out=str(tmp_path / out)),
                   progress=False)

    res = go("npr,spectrum", "a")
    assert decodes == Counter({p: 1 for p in paths}), "each image decoded once for both branches"
    assert res.branches["npr"].scored == res.branches["spectrum"].scored == len(paths)
    decodes.clear()
    res = go("npr,spectrum", "b")  # everything is in the store: nothing is decoded
    assert sum(decodes.values()) == 0 and res.branches["spectrum"].reused == len(paths)
    decodes.clear()
    spectrum_prep.clear()
    res = go("fake,spectrum", "c")  # only fake is missing: decoded once, preprocessed for fake only
    assert decodes == Counter({p: 1 for p in paths}) and sum(spectrum_prep.values()) == 0
    assert res.branches["fake"].scored == len(paths) and res.branches["spectrum"].scored == 0


class WildBranch(FakeBranch):
    """Scores chosen by image width: 10 → 2.0 (out of range), 11 → NaN, 12 → a valid 0.25; 13 raises."""

    name = "wild"
    help = "test branch breaking the score contract"

    def preprocess(self, image):
        return image.size[0]

    def score_batch(self, batch):
        if 13 in batch:
            raise RuntimeError("cannot score width 13")
        return [{10: 2.0, 11: float("nan"), 12: 0.25}[w] for w in batch]


class _Plugin:
    @hookimpl
    def register_branches(self, register):
        register(WildBranch)


def test_detector_applies_the_score_contract(tmp_path):
    with registered_plugin(_Plugin(), "wild-plugin"):
        assert "wild" in get_registry().names("branch")
        det = Detector(branches=["wild"], fusion="or")
        imgs = [Image.new("RGB", (w, 8), (w, w, w)) for w in (10, 11, 12, 13)]
        p_high, p_nan, p_ok, p_raise = det.predict(imgs + [tmp_path / "missing.png"])[:4]
        missing = det.predict(tmp_path / "missing.png")[0]
    for p, why in ((p_high, "invalid score 2.0"), (p_nan, "invalid score nan"), (p_raise, "cannot score width 13")):
        assert p.verdict is None and not p.is_fake and why in p.error, p
        assert math.isnan(p.score) and math.isnan(p.scores["wild"])
    assert p_ok.verdict == "real" and p_ok.score == 0.25 and p_ok.error is None
    assert missing.verdict is None and "cannot read" in missing.error


def test_predictions_hold_the_scores_the_metrics_were_computed_from(image_folder, tmp_path):
    from sklearn.metrics import average_precision_score, roc_auc_score

    res = run(make_run_config(branches="fake", data=str(image_folder), out=str(tmp_path / "r")), progress=False)
    rows = list(_preds(res.out_dir).values())
    y = np.array([int(r["label"]) for r in rows])
    fused = np.array([float(r["fused_score"]) for r in rows])
    assert all(repr(float(r["fused_score"])) == r["fused_score"] for r in rows)  # round-trippable text
    m = json.loads((res.out_dir / "metrics.json").read_text())["overall"]
    assert round(roc_auc_score(y, fused), 6) == m["auc"] and round(average_precision_score(y, fused), 6) == m["ap"]
    assert res.is_main and res.table is not None and len(res.table) == len(rows)
