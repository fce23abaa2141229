"""The semantic-set builder (parameters per image, determinism, resumability) and the leakage audit."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aligncore import create_builder, hookimpl
from aligncore.branch import Branch, BranchConfig
from aligncore.testing import make_image_folder
from aligncore.train import TrainConfig, Trainer, TrainResult

PARAMS = ["pp_scale", "pp_noise_sigma", "pp_noise_seed", "pp_blur_sigma", "pp_jpeg_quality", "pp_resample_down", "pp_resample_up"]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def sources(tmp_path):
    return make_image_folder(tmp_path / "src", n_real=6, n_fake=6, size=(72, 56), generators=("genA", "genB"))


def build(sources, out, **cfg):
    cfg = {"size": 48, **cfg}
    return create_builder("semantic-set", cfg).build([sources], out, progress=False)


def test_every_image_has_its_parameters(sources, tmp_path):
    out = tmp_path / "set"
    manifest = build(sources, out)
    rows = _rows(manifest)
    assert len(rows) == 12 and {r["label"] for r in rows} == {"0", "1"}
    listed = {r["path"] for r in rows} | {r["clean_path"] for r in rows}
    images = {str(p.relative_to(out)) for p in out.rglob("*.png")}
    assert images == listed, "every written image is in the manifest and every manifest row has its image"
    for r in rows:
        missing = [k for k in PARAMS if r.get(k, "") == ""]
        assert not missing, f"{r['path']} lacks {missing}"
        with Image.open(out / r["path"]) as a, Image.open(out / r["clean_path"]) as b:
            assert a.size == b.size == (48, 48) and a.format == b.format == "PNG"  # format-aligned
            assert not np.array_equal(np.asarray(a), np.asarray(b))  # the chain changed the pixels
    clean = _rows(out / "clean_manifest.csv")
    assert [c["path"] for c in clean] == [r["clean_path"] for r in rows]
    assert not any(k.startswith("pp_") for k in clean[0])


def test_the_built_set_reads_as_its_manifest(sources, tmp_path):
    """Scoring or training on the set's folder takes the processed images only (not the clean/ copies)."""
    from aligncore.data import load_dataset

    out = tmp_path / "s"
    build(sources, out)
    rows = _rows(out / "manifest.csv")
    records = load_dataset(out).records
    assert len(records) == len(rows) == 12 and not any("/clean/" in r.path for r in records)
    assert {r.extra["clean_path"] for r in records} == {r["clean_path"] for r in rows}
    assert all(set(PARAMS) <= set(r.extra) for r in records)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["encoding"] == {"format": "png", "quality": None}


def test_manifest_parameters_reproduce_the_image(sources, tmp_path):
    from aligncore.data import load_image
    from aligncore_plugins.semantic_set import align_format, apply_chain

    out = tmp_path / "set"
    rows = _rows(build(sources, out))
    for r in rows[:4]:
        params = {k: r[k] for k in PARAMS}
        for k in ("pp_scale", "pp_noise_sigma", "pp_blur_sigma"):
            params[k] = float(params[k])
        for k in ("pp_noise_seed", "pp_jpeg_quality"):
            params[k] = int(params[k])
        again = apply_chain(align_format(load_image(r["source"]), 48), params)
        assert np.array_equal(np.asarray(again), np.asarray(Image.open(out / r["path"]).convert("RGB")))


def test_same_seed_gives_byte_identical_files(sources, tmp_path):
    build(sources, tmp_path / "a", seed=3)
    build(sources, tmp_path / "b", seed=3)
    build(sources, tmp_path / "c", seed=4)
    a, b, c = (_tree(tmp_path / x) for x in "abc")
    assert a == b
    assert a["manifest.csv"] != c["manifest.csv"]


def test_resumes_after_an_interrupted_build(sources, tmp_path):
    build(sources, tmp_path / "full", seed=1)
    part = tmp_path / "part"
    build(sources, part, seed=1)
    lines = (part / "journal.jsonl").read_text().splitlines(keepends=True)
    # a kill: the last five items were never journalled, the last line is torn, one output is half-written
    (part / "journal.jsonl").write_text("".join(lines[:-5]) + lines[-5][: len(lines[-5]) // 2])
    lost = json.loads(lines[-2])["rows"][0]["path"]
    (part / lost).write_bytes(b"\x89PNG")
    (part / "manifest.csv").unlink()
    build(sources, part, seed=1)
    full, resumed = _tree(tmp_path / "full"), _tree(part)
    full.pop("journal.jsonl"), resumed.pop("journal.jsonl")  # journal order differs, content does not
    assert full == resumed


def test_per_class_and_labelled_sources(sources, tmp_path):
    rows = _rows(build(sources, tmp_path / "s", per_class=2))
    assert sorted(r["label"] for r in rows) == ["0", "0", "1", "1"]
    # real=/fake= prefixes label whole folders (e.g. a folder of surreal generations)
    rows = _rows(create_builder("semantic-set", size=32).build(
        [f"real={sources / 'genA' / '0_real'}", f"fake={sources / 'genB' / '1_fake'}"], tmp_path / "t", progress=False))
    assert sorted(r["label"] for r in rows) == ["0"] * 3 + ["1"] * 3
    assert {r["generator"] for r in rows if r["label"] == "1"} == {"1_fake"}


def test_builder_on_shared_data(shared_data, tmp_path):
    rows = _rows(create_builder("semantic-set", size=64, per_class=3).build(
        [shared_data / "MANIFEST.csv"], tmp_path / "s", progress=False))
    assert sorted(r["label"] for r in rows) == ["0"] * 3 + ["1"] * 3
    assert all(r[k] != "" for r in rows for k in PARAMS)


# ---------------------------------------------------------------------- leakage audit


class ResidualConfig(BranchConfig):
    pass


class ResidualBranch(Branch):
    """A small trainable pixel-only detector: logistic regression on high-frequency residual energy."""

    name = "test-residual"
    help = "test: logistic regression on pixel residual statistics"
    config_class = ResidualConfig

    def load(self):
        self.w = json.loads((Path(self.config.checkpoint) / "w.json").read_text()) if self.config.checkpoint else None

    def preprocess(self, image):
        g = np.asarray(image.convert("L"), dtype=np.float64)
        dx, dy = np.diff(g, axis=1), np.diff(g, axis=0)
        lap = g[1:-1, 1:-1] * 4 - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
        return np.array([math.log1p(np.abs(dx).mean()), math.log1p(np.abs(dy).mean()), math.log1p(np.abs(lap).mean())])

    def score_batch(self, batch):
        x = np.atleast_2d(batch)
        z = (x - self.w["mean"]) / self.w["std"] @ np.asarray(self.w["coef"]) + self.w["bias"]
        return (1 / (1 + np.exp(-z))).tolist()



class ResidualTrainer(Trainer):
    """Fits the residual branch's logistic regression (a third-party training method in the new shape)."""

    def train(self, train_set, out_dir):
        from sklearn.linear_model import LogisticRegression

        from aligncore.data import load_dataset, load_image

        branch = self.new_branch()
        recs = load_dataset(train_set).records
        x = np.stack([branch.preprocess(load_image(r.path)) for r in recs])
        y = np.array([r.label for r in recs])
        mean, std = x.mean(0), x.std(0) + 1e-9
        lr = LogisticRegression(C=10.0).fit((x - mean) / std, y)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "w.json").write_text(json.dumps({"mean": mean.tolist(), "std": std.tolist(),
                                                "coef": lr.coef_[0].tolist(), "bias": float(lr.intercept_[0])}))
        return TrainResult(out)


ResidualBranch.trainer_class = ResidualTrainer
ResidualBranch.train_config_class = TrainConfig


@pytest.fixture
def residual_branch():
    from aligncore.plugins import get_plugin_manager
    from aligncore.registry import reset_registry

    class Plugin:
        @hookimpl
        def register_branches(self, register):
            register(ResidualBranch)

    pm, plugin = get_plugin_manager(), Plugin()
    pm.register(plugin, name="test-residual")
    reset_registry()
    try:
        yield "test-residual"
    finally:
        pm.unregister(plugin)
        reset_registry()


def test_leakage_audit_reports_control_and_processed(tmp_path, residual_branch):
    from click.testing import CliRunner

    from aligncore.cli import build_cli

    # real images are noisy, fakes smooth: a pure pixel cue the control must pick up
    src = make_image_folder(tmp_path / "src", n_real=12, n_fake=12, size=(64, 64), seed=5)
    build(src, tmp_path / "set", size=64, noise_sigma=(10.0, 12.0), blur_sigma=(1.5, 2.0))
    res = CliRunner().invoke(build_cli(), ["audit", "leakage", "--set", str(tmp_path / "set"), "--pixel-branch",
                                           residual_branch, "--out", str(tmp_path / "audit"), "--folds", "3"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "audit" / "leakage.json").read_text())
    assert report["n"] == 24 and len(report["control"]["fold_auc"]) == 3
    assert report["control"]["auc"] >= 0.95, "the pixel detector must learn the pixel cue on the unprocessed copies"
    assert report["processed"]["auc"] < report["control"]["auc"]
    assert "control" in res.output and "processed" in res.output and f"verdict: {report['verdict']}" in res.output
    scores = _rows(tmp_path / "audit" / "processed" / "scores.csv")
    assert len(scores) == 24 and all(s["score"] != "nan" for s in scores)  # every item scored out of fold


def test_leakage_audit_refuses_a_set_without_clean_copies(sources, tmp_path, residual_branch):
    from aligncore.errors import DataError
    from aligncore_plugins.leakage import leakage_audit

    build(sources, tmp_path / "s", keep_clean=False)
    with pytest.raises(DataError, match="keep_clean"):
        leakage_audit(tmp_path / "s", residual_branch, tmp_path / "a")


@pytest.mark.parametrize("name, cfg", [("semantic-set", {"size": 48}), ("fake-pairs", {})])
def test_both_classes_are_written_with_one_encoder_setting(name, cfg, sources, tmp_path):
    from PIL import JpegImagePlugin

    from aligncore.errors import AlignCoreError

    builder = create_builder(name, {**cfg, "format": "jpeg", "jpeg_quality": 83})
    out = tmp_path / "s"
    rows = _rows(builder.build([sources], out, progress=False))
    tables = set()
    for r in rows:
        with Image.open(out / r["path"]) as im:
            assert im.format == "JPEG" and r["path"].endswith(".jpg") and JpegImagePlugin.get_sampling(im) == 2
            tables.add(json.dumps(im.quantization, sort_keys=True))
    assert {r["label"] for r in rows} == {"0", "1"} and len(tables) == 1  # same quality for both classes
    with pytest.raises(AlignCoreError, match="only available while build"):
        builder.write_image(Image.new("RGB", (4, 4)), "x")
