"""The example plugin's own tests, written with aligncore.testing (run them after `pip install -e .`)."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner

from aligncore import RunConfig, create_branch, create_builder, create_fusion, list_components, run
from aligncore.data import load_dataset, load_image
from aligncore.registry import create_audit
from aligncore.testing import check_branch_contract, make_image_folder


def test_every_hook_registered_its_component():
    for kind, name in (("branch", "example"), ("fusion", "median"), ("builder", "posterize-pairs"),
                       ("audit", "class-balance")):
        assert [r.plugin for r in list_components(kind, name)] == ["example"], kind


def test_the_branch_keeps_the_contract(tmp_path):
    folder = make_image_folder(tmp_path / "images", n_real=3, n_fake=3)
    images = [load_image(r.path) for r in load_dataset(folder).records]
    check_branch_contract(create_branch("example"), images)


def test_the_fusion_takes_the_median_and_skips_missing_scores():
    out = create_fusion("median").predict({"a": np.array([0.1, 0.9, np.nan]), "b": np.array([0.3, 0.2, np.nan]),
                                           "c": np.array([0.8, 0.7, 0.6])})
    assert np.allclose(out.score, [0.3, 0.7, 0.6]) and out.verdict.tolist() == [False, True, True]


def test_the_builder_writes_pairs_that_train_a_branch(tmp_path):
    folder = make_image_folder(tmp_path / "images", n_real=4, n_fake=0)
    manifest = create_builder("posterize-pairs", bits=2).build([str(folder)], tmp_path / "set", progress=False)
    recs = load_dataset(manifest).records
    assert len(recs) == 8 and sorted(r.label for r in recs) == [0] * 4 + [1] * 4
    assert {r.extra["pair_id"] for r in recs if r.label == 0} == {r.extra["pair_id"] for r in recs if r.label == 1}


def test_the_audit_counts_classes_and_fails_an_unequal_set(tmp_path):
    even = create_audit("class-balance").run(make_image_folder(tmp_path / "even", 4, 4), tmp_path / "a")
    assert even.metrics == {"n_real": 4, "n_fake": 4, "ratio": 1.0, "verdict": "pass"}
    skewed = create_audit("class-balance", max_ratio=2).run(make_image_folder(tmp_path / "skew", 1, 6), tmp_path / "b")
    assert skewed.metrics["verdict"] == "imbalanced" and skewed.details == {"per_generator": {"genA": 6}}


def test_a_run_fuses_with_the_plugin_fusion(tmp_path):
    folder = make_image_folder(tmp_path / "images", n_real=4, n_fake=4)
    result = run(RunConfig(branches=["example", "fake"], fusion="median",
                           data=str(folder), out=str(tmp_path / "run"), store=str(tmp_path / "s.sqlite")), progress=False)
    assert result.metrics["overall"]["n"] == 8 and result.metrics["fusion"]["name"] == "median"


def test_the_command_is_added_to_alignctl(tmp_path):
    from aligncore.cli import build_cli

    folder = make_image_folder(tmp_path / "images", n_real=3, n_fake=3)
    r = CliRunner().invoke(build_cli(), ["example-summary", str(folder), "--out", str(tmp_path / "run"), "-q",
                                         "--store", str(tmp_path / "s.sqlite")])
    assert r.exit_code == 0, r.output
    assert "example: mean P(fake) real" in r.output and "(6 images)" in r.output
