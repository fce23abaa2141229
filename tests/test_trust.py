"""Results you can trust (issue 10) and fail-open results (issue 15, section 4): no number may be silently wrong.

Every test here reproduces one way a confident number used to come out wrong with exit status 0,
and checks that it now either is right or says it is not.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from aligncore import hookimpl
from aligncore.cli import build_cli
from aligncore.config import make_run_config
from aligncore.registry import create_branch, create_fusion
from aligncore.runner import run
from aligncore.testing import FakeBranch, make_image_folder, registered_plugin


def alignctl(*args: str):
    return CliRunner().invoke(build_cli(), [str(a) for a in args], catch_exceptions=False)


def _preds(run_dir: Path) -> list[dict]:
    with open(Path(run_dir) / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))


def _metrics(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "metrics.json").read_text())


@pytest.fixture
def ds(tmp_path):
    return make_image_folder(tmp_path / "ds", n_real=6, n_fake=6, generators=("genA", "genB"))


# ---------------------------------------------------------------------- test branches


class NaNBranch(FakeBranch):
    """Returns NaN for every image: a branch that silently fails everywhere."""

    name = "nanny"
    help = "test: NaN for every image"

    def score_batch(self, batch):
        return [float("nan")] * len(np.atleast_2d(np.asarray(batch)))


class HalfBranch(FakeBranch):
    """The fake branch's score, except it raises for images narrower than 52 pixels."""

    name = "half"
    help = "test: fails on narrow images"

    def preprocess(self, image):
        return np.append(super().preprocess(image), float(image.width))

    def score_batch(self, batch):
        b = np.atleast_2d(np.asarray(batch))
        if (b[:, -1] < 52).any():
            raise ValueError("too narrow")
        return super().score_batch(b[:, :-1])


class TieBranch(FakeBranch):
    """Scores that differ only beyond the sixth decimal (they tie when printed with 6 decimals)."""

    name = "ties"
    help = "test: scores tied to 6 decimals"

    def score_batch(self, batch):
        base = super().score_batch(batch)
        return [0.5 + 1e-10 * round(1000 * s) for s in base]


class LogitBranch(FakeBranch):
    """Confident logits (|z| up to 40): their float32 sigmoid would print as 1.000000 / 0.000000."""

    name = "confident"
    help = "test: large logits"

    def score_batch(self, batch):
        from aligncore.branch import scores_from_logits

        base = np.asarray(super().score_batch(batch))
        return scores_from_logits((base - 0.5) * 80)


class TestPlugin:
    @hookimpl
    def register_branches(self, register):
        for cls in (NaNBranch, HalfBranch, TieBranch, LogitBranch):
            register(cls)


@pytest.fixture
def plugin():
    with registered_plugin(TestPlugin(), "trust-test-plugin") as p:
        yield p


# ---------------------------------------------------------------------- 1. coverage is a first-class result


def test_a_branch_failing_on_every_image_exits_3_and_reports_coverage(ds, tmp_path, plugin):
    out = tmp_path / "r"
    res = alignctl("run", "--branches", "fake,nanny", "--data", ds, "--out", out, "-q")
    assert res.exit_code == 3, res.output
    assert "branch nanny failed on 12 of 12 images" in res.stderr and "Traceback" not in res.output
    m = _metrics(out)
    assert m["coverage"] == {"fake": {"scored": 12, "failed": 0, "total": 12},
                             "nanny": {"scored": 0, "failed": 12, "total": 12}}
    # fused metrics only over images every branch scored: none here, so nothing is claimed
    assert m["fused_over"]["images"] == 0 and m["overall"]["n"] == 0 and m["overall"]["auc"] is None
    assert "fused metrics over the 0 of 12 images every branch scored" in res.stdout
    # per-branch metrics count only that branch's scored images (never an unscored image as "real")
    assert m["per_branch"]["fake"]["n"] == 12 and m["per_branch"]["nanny"]["n"] == 0
    assert m["per_branch"]["nanny"]["accuracy"] is None
    rows = _preds(out)
    assert len(rows) == 12 and all(r["verdict"] == "" and r["fused_score"] == "" for r in rows)
    assert all((out / f).is_file() for f in ("predictions.csv", "metrics.json", "config.yaml", "run.json"))
    # a partial run records no leaderboard row unless it is accepted
    board = alignctl("leaderboard", "--all", "--format", "json")
    assert json.loads(board.stdout)["rows"] == []
    ok = alignctl("run", "--branches", "fake,nanny", "--data", ds, "--out", tmp_path / "r2", "-q", "--allow-partial")
    assert ok.exit_code == 0, ok.output
    assert "partial run accepted" in ok.stderr
    assert len(json.loads(alignctl("leaderboard", "--all", "--format", "json").stdout)["rows"]) == 1


def test_fused_metrics_cover_only_images_every_branch_scored(tmp_path, plugin):
    data = make_image_folder(tmp_path / "ds", n_real=6, n_fake=6, size=(46, 40))  # widths 46..54: some < 52
    res = run(make_run_config(branches="fake,half", data=str(data), out=str(tmp_path / "r")), progress=False)
    m, rows = res.metrics, _preds(res.out_dir)
    complete = [r for r in rows if r["score_half"] != ""]
    assert 0 < len(complete) < 12 and m["coverage"]["half"]["failed"] == 12 - len(complete)
    assert m["overall"]["n"] == len(complete) == m["fused_over"]["images"]
    assert all(r["verdict"] == "" for r in rows if r["score_half"] == "")
    assert m["per_branch"]["fake"]["n"] == 12 and m["per_branch"]["half"]["n"] == len(complete)
    assert not res.complete and "branch half failed on" in res.incomplete_summary()


@pytest.mark.parametrize("allow", [False, True])
def test_a_run_where_every_image_fails_exits_non_zero(ds, tmp_path, plugin, allow):
    args = ["run", "--branches", "nanny", "--data", ds, "--out", tmp_path / "r", "-q"] + (["--allow-partial"] if allow else [])
    res = alignctl(*args)
    assert res.exit_code == 3, res.output
    assert "branch nanny failed on 12 of 12 images" in res.stderr and "--allow-partial accepts it" not in res.stderr


def test_a_folder_of_unreadable_files_exits_non_zero(tmp_path):
    (tmp_path / "d" / "0_real").mkdir(parents=True)
    (tmp_path / "d" / "1_fake").mkdir(parents=True)
    (tmp_path / "d" / "0_real" / "a.png").write_bytes(b"")
    (tmp_path / "d" / "1_fake" / "b.png").write_text("not an image")
    res = alignctl("run", "--branches", "fake", "--data", tmp_path / "d", "--out", tmp_path / "r", "-q", "--allow-partial")
    assert res.exit_code == 3 and "no image could be read" in res.stderr


def test_unscored_images_count_in_no_metric():
    from aligncore.metrics import binary_metrics

    y = [0, 0, 1, 1, 0]
    s = [0.1, 0.2, 0.8, 0.9, float("nan")]
    m = binary_metrics(y, s, [False, False, True, True, False])
    assert (m["n"], m["unscored"], m["accuracy"], m["real_accuracy"], m["auc"]) == (4, 1, 1.0, 1.0, 1.0)


# ---------------------------------------------------------------------- 2. leaderboard identity


def test_leaderboard_rows_are_keyed_by_what_computed_the_scores(ds, tmp_path):
    for k, extra in enumerate(([], ["-o", "fake.center=0.5"])):
        res = alignctl("run", "--branches", "fake", "--data", ds, "--out", tmp_path / f"r{k}", "-q", *extra)
        assert res.exit_code == 0, res.output
    res = alignctl("run", "--branches", "npr", "--preset", "tiny", "--data", ds, "--out", tmp_path / "tiny", "-q",
                   "--device", "cpu")
    assert res.exit_code == 0, res.output
    board = alignctl("leaderboard", "--format", "json")
    rows = json.loads(board.stdout)["rows"]
    assert json.loads(board.stdout)["metric"] == "auc"
    assert len(rows) == 2 and len({r["branches"] for r in rows}) == 2  # same name, two fingerprints
    assert all(r["branches"].startswith("fake#") and r["weights"].startswith("builtin@") for r in rows)
    assert "1 row(s) with random-weight branches hidden" in board.stderr
    every = json.loads(alignctl("leaderboard", "--all", "--format", "json").stdout)["rows"]
    assert len(every) == 3 and [r["weights"] for r in every if r["branches"].startswith("npr#")] == ["random"]
    table = alignctl("leaderboard", "--all").stdout
    assert "weights" in table and "random" in table
    eer = alignctl("leaderboard", "--metric", "eer", "--format", "json")
    assert eer.exit_code == 0 and all(r["average"] is not None for r in json.loads(eer.stdout)["rows"])
    assert _metrics(tmp_path / "r0")["overall"]["eer"] is not None


# ---------------------------------------------------------------------- 3. fingerprints: code, libraries, weights


PLUGIN_SOURCE = '''
from aligncore import hookimpl
from aligncore.testing import FakeBranch


class EditedBranch(FakeBranch):
    name = "edited"
    help = "a third-party branch whose source the test edits"


@hookimpl
def register_branches(register):
    register(EditedBranch)
'''


def test_editing_a_plugin_branch_source_rescores_every_image(ds, tmp_path):
    src = tmp_path / "pluginsrc" / "trust_edited_plugin.py"
    src.parent.mkdir()
    src.write_text(PLUGIN_SOURCE)
    spec = importlib.util.spec_from_file_location("trust_edited_plugin", src)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["trust_edited_plugin"] = mod
    spec.loader.exec_module(mod)
    try:
        with registered_plugin(mod, "trust-edited"):
            cfg = lambda out: make_run_config(branches="edited", data=str(ds), out=str(tmp_path / out))  # noqa: E731
            first = run(cfg("a"), progress=False).branches["edited"]
            again = run(cfg("b"), progress=False).branches["edited"]
            src.write_text(PLUGIN_SOURCE + "\n# a change to the scoring code\n")
            edited = run(cfg("c"), progress=False).branches["edited"]
    finally:
        sys.modules.pop("trust_edited_plugin", None)
    assert (first.scored, again.reused, again.scored) == (12, 12, 0)
    assert (edited.reused, edited.scored) == (0, 12) and edited.fingerprint != first.fingerprint


def test_fingerprint_follows_a_plugin_packages_imports_transitively(tmp_path, monkeypatch):
    """The scoring code of a plugin often sits two imports away from its branch class
    (branch.py -> model.py -> layers.py); editing it must rescore too."""
    from aligncore.identity import component_modules, source_digest

    pkg = tmp_path / "trust_deep_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "branch.py").write_text(
        "from aligncore.testing import FakeBranch\nfrom .model import predict\n\n\n"
        "class DeepBranch(FakeBranch):\n    name = 'deep'\n    help = 'test'\n")
    (pkg / "model.py").write_text("from trust_deep_pkg.layers import squash\n\n\ndef predict(v):\n    return squash(v)\n")
    layers = pkg / "layers.py"
    layers.write_text("def squash(v):\n    return v\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        from trust_deep_pkg.branch import DeepBranch

        assert "trust_deep_pkg.layers" in component_modules(DeepBranch)
        before = source_digest(DeepBranch)
        layers.write_text("def squash(v):\n    return min(1.0, 2 * v)\n")
        assert source_digest(DeepBranch) != before
    finally:
        for name in [m for m in sys.modules if m.startswith("trust_deep_pkg")]:
            del sys.modules[name]


def test_fingerprint_covers_library_versions_and_base_weights(tmp_path, monkeypatch):
    import aligncore.identity as identity

    fp = create_branch("npr", preset="tiny").fingerprint()
    real = identity.library_versions
    monkeypatch.setattr(identity, "library_versions", lambda names: {**real(names), "torch": "0.1"})
    assert create_branch("npr", preset="tiny").fingerprint() != fp
    monkeypatch.setattr(identity, "library_versions", real)
    assert "torch" in create_branch("npr").score_libraries and {"timm", "peft"} <= set(create_branch("dinov2").score_libraries)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"one set of pretrained weights")
    before = create_branch("dinov2", weights=str(weights)).fingerprint()
    weights.write_bytes(b"another model at the same path")
    assert create_branch("dinov2", weights=str(weights)).fingerprint() != before


def test_fusion_fingerprint_covers_code_config_and_state():
    a = create_fusion("or").fingerprint()
    assert a == create_fusion("or").fingerprint() != create_fusion("or", default_threshold=0.4).fingerprint()
    assert create_fusion("or").code_digest() != create_fusion("learned").code_digest()


# ---------------------------------------------------------------------- 4. exact calibration


def _table_run(out: Path, scores: dict[str, np.ndarray], y: np.ndarray, name: str = "sat") -> Path:
    """A finished run folder (written by the runner's write_run) holding these scores; no image is decoded."""
    import hashlib

    from aligncore.rundir import ScoreTable
    from aligncore.runner import write_run
    from aligncore.store import ScoreStore

    n = len(y)
    table = ScoreTable(branches=list(scores), paths=[f"/d/{i}.png" for i in range(n)],
                       sha256=[hashlib.sha256(f"{name}{i}".encode()).hexdigest() for i in range(n)], labels=y,
                       generators=np.where(y == 1, "gen", "").astype(object), subsets=np.full(n, "", dtype=object),
                       scores=scores, errors=[""] * n)
    with ScoreStore() as st:
        resolved = {"branches": list(scores), "fusion": "or", "fingerprints": {b: f"{b}-1" for b in scores},
                    "dataset": {"root": "/d"}, "dataset_name": name, "checkpoints": {}}
        write_run(out, f"{name}-run", "run", table, create_fusion("or"), resolved, st)
    return out


def _saturated_run(out: Path, n: int = 400) -> Path:
    """A run whose branch saturates: many reals and fakes score exactly 1.0."""
    rng = np.random.default_rng(0)
    y = (np.arange(n) % 2).astype(int)
    s = np.where(y == 1, rng.beta(5, 2, n), rng.beta(2, 5, n))
    s[(y == 0) & (rng.random(n) < 0.12)] = 1.0  # 12% of the reals saturate: a 5% target cannot keep them
    s[(y == 1) & (rng.random(n) < 0.5)] = 1.0
    return _table_run(out, {"sat": s, "other": rng.random(n)}, y)


def test_calibration_never_exceeds_the_target_even_with_saturated_ties(tmp_path):
    from aligncore.fusion import ABOVE_ONE, threshold_for_fpr

    reals = np.array([1.0] * 3 + list(np.linspace(0, 0.9, 17)))
    t = threshold_for_fpr(reals, 0.05)
    assert t == ABOVE_ONE and (reals >= t).mean() == 0.0  # three reals tie at 1.0: nothing may be called fake
    run_dir = _saturated_run(tmp_path / "run")
    res = alignctl("ablate", run_dir, "--fusions", "or,and,max,weighted,learned", "--target-fpr", "0.05")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(run_dir / "ablation" / "ablation.csv")))
    assert {"calib_fpr", "eval_fpr", "note"} <= set(rows[0])
    for r in rows:
        assert r["calib_fpr"] != "" and r["eval_fpr"] != "", r
        assert float(r["calib_fpr"]) <= 0.05 + 1e-12 or "unreachable" in r["note"], r
    sat = next(r for r in rows if r["method"] == "branch:sat" and r["group"] == "all")
    assert float(sat["calib_fpr"]) == 0.0 and "unreachable" in sat["note"]
    md = (run_dir / "ablation" / "ablation.md").read_text()
    assert "calib FPR" in md and "eval FPR" in md and "unreachable" in md


def test_a_fusion_whose_own_calibration_overshoots_says_so(tmp_path):
    """A third-party fusion's calibrate() is not trusted: a row above the target carries a note."""
    from aligncore import Fusion
    from aligncore.fusion import FusionOutput, calibration_note

    assert calibration_note(1, 20, 0.05) == "" and "unreachable" in calibration_note(0, 20, 0.05)
    assert "target missed" in calibration_note(3, 20, 0.05)

    class Sloppy(Fusion):
        name = "sloppy"
        help = "test: calibrates to a threshold that calls every image fake"

        def predict(self, scores):
            s = np.mean([np.asarray(v, dtype=float) for v in scores.values()], axis=0)
            return FusionOutput(score=s, verdict=s >= self.config.threshold)

        def calibrate(self, scores, labels, target_fpr):
            self.config.threshold = 0.0
            return self

    class SloppyPlugin:
        @hookimpl
        def register_fusions(self, register):
            register(Sloppy)

    run_dir = _saturated_run(tmp_path / "run", n=60)
    with registered_plugin(SloppyPlugin(), "trust-sloppy"):
        res = alignctl("ablate", run_dir, "--fusions", "sloppy,or", "--target-fpr", "0.05")
    assert res.exit_code == 0, res.output
    rows = [r for r in csv.DictReader(open(run_dir / "ablation" / "ablation.csv")) if r["method"] == "fusion:sloppy"]
    assert rows and all(float(r["calib_fpr"]) == 1.0 and "target missed" in r["note"] for r in rows)
    assert "target missed" in (run_dir / "ablation" / "ablation.md").read_text()


def test_or_thresholds_are_exact_at_the_edges():
    from aligncore.fusion import ABOVE_ONE, rescale_at_threshold

    s = np.array([0.0, 0.3, math.nextafter(0.3, 0), 0.3000001, 1.0, np.nan])
    for t in (0.0, 0.3, 1.0, ABOVE_ONE):
        r = rescale_at_threshold(s, t)
        np.testing.assert_array_equal(r[:5] >= 0.5, s[:5] >= t)
        assert np.isnan(r[5])


# ---------------------------------------------------------------------- 5. fitted states and evaluation


def test_fitted_states_record_their_images_and_are_left_out_of_metrics(tmp_path):
    from study_utils import make_scored_run

    run_dir, _ = make_scored_run(tmp_path / "run", n=300)
    res = alignctl("ablate", run_dir, "--fusions", "or,and,max,weighted,learned", "--target-fpr", "0.05", "--seed", "7")
    assert res.exit_code == 0, res.output
    split = json.loads((run_dir / "ablation" / "split.json").read_text())["splits"]["synthetic"]
    for name in ("or", "and", "max", "weighted", "learned"):
        state = json.loads((run_dir / "ablation" / f"{name}-synthetic.state.json").read_text())
        assert state["name"] == name and state["fitted_on"] == sorted(split["calibration"]) and state["target_fpr"] == 0.05
    or_state = json.loads((run_dir / "ablation" / "or-synthetic.state.json").read_text())
    assert set(or_state["config"]["thresholds"]) == {"pix", "sem"}  # the calibrated thresholds travel with it
    learned = json.loads((run_dir / "ablation" / "learned-synthetic.state.json").read_text())
    assert learned["config"]["seed"] == 7  # --seed reached the learned fusion's cross-validation
    assert "on this run its calibration images are left out" in res.output
    fused = alignctl("fuse", run_dir, "--fusion", "or", "--fusion-state", run_dir / "ablation" / "or-synthetic.state.json")
    assert fused.exit_code == 0, fused.output
    n_cal = len(split["calibration"])
    assert f"less {n_cal} image(s) the fusion state was fitted on (left out)" in fused.stdout
    assert f"fusion state fitted on {n_cal} image(s) of run synthetic-synthetic-0; {n_cal} of them are in this run" in fused.stdout
    m = _metrics(run_dir / "fusions" / "or")
    assert m["fused_over"]["left_out_fitted"] == n_cal and m["fusion"]["config"]["thresholds"] == or_state["config"]["thresholds"]
    assert m["overall"]["n"] == m["fused_over"]["images"] - n_cal
    assert "fitted_on" not in m["fusion"]["state"]


@pytest.mark.parametrize("state, needle", [
    ({"name": "learned", "state": {"branches": ["pix", "sem"], "coef": [float("nan"), 1.0], "intercept": 0.0}}, "finite"),
    ({"name": "learned", "state": {"branches": ["pix", "sem"], "coef": [1.0], "intercept": 0.0}}, "2 branches"),
    ({"name": "learned", "state": {"branches": ["pix", "other"], "coef": [1.0, 1.0], "intercept": 0.0}}, "fitted on branches"),
    ({"name": "learned", "state": {"branches": ["pix", "sem"], "coef": ["x", 1.0], "intercept": 0.0}}, "coef"),
    ({"name": "or", "config": {"thresholds": {"pix": float("inf")}}, "state": {}}, "finite"),
    ({"name": "or", "config": {"thresholds": {"nope": 0.5}}, "state": {}}, "nope"),
    ({"name": "or", "state": {}, "fitted_on": ["not-a-hash"]}, "fitted_on"),
    ({"name": "max", "state": {"branches": ["pix"], "coef": [1.0], "intercept": 0}}, "keeps no fitted state"),
    ({"name": "learned", "state": {"branches": ["pix", "sem"], "coef": [1e-5, 1e-5], "intercept": 0.0,
                                   "logit_spread": 1e-5}}, "degenerate fit"),
])
def test_fusion_states_are_validated_like_configs(tmp_path, state, needle):
    from study_utils import make_scored_run

    run_dir, _ = make_scored_run(tmp_path / "run", n=60)
    f = tmp_path / "state.json"
    f.write_text(json.dumps(state))  # NaN and inf are written as the JSON extensions Python reads back
    fusion = state["name"] if state["name"] != "max" else "max"
    res = alignctl("fuse", run_dir, "--fusion", fusion, "--fusion-state", f)
    assert res.exit_code == 1 and needle in res.stderr and "Traceback" not in res.output, res.output


def test_a_nan_coefficient_fails_the_run_instead_of_calling_everything_real(ds, tmp_path):
    f = tmp_path / "state.json"
    f.write_text('{"name": "learned", "state": {"branches": ["fake"], "coef": [NaN], "intercept": 0.0}}')
    res = alignctl("run", "--branches", "fake", "--fusion", "learned", "--fusion-state", f, "--data", ds,
                   "--out", tmp_path / "r", "-q")
    assert res.exit_code == 1 and "coef" in res.stderr and "finite" in res.stderr, res.output


def test_a_degenerate_learned_fit_is_reported_not_shown(tmp_path):
    y = (np.arange(40) % 2).astype(int)
    run_dir = _table_run(tmp_path / "run", {"a": np.full(40, 0.5), "b": np.full(40, 0.5)}, y, name="flat")
    res = alignctl("ablate", run_dir, "--fusions", "learned,or", "--target-fpr", "0.1")
    assert res.exit_code == 0, res.output
    rows = [r for r in csv.DictReader(open(run_dir / "ablation" / "ablation.csv")) if r["method"] == "fusion:learned"]
    assert rows and all("degenerate fit" in r["note"] and r["auc"] == "" and r["accuracy"] == "" for r in rows)
    assert all(r["calib_fpr"] == "" and r["eval_fpr"] == "" for r in rows)  # no figure from the constant either
    assert not (run_dir / "ablation" / "learned-flat.state.json").exists() and (run_dir / "ablation" / "or-flat.state.json").exists()
    assert "degenerate fit" in res.output


# ---------------------------------------------------------------------- 6. report reads the ablation


def test_report_reads_and_never_rewrites_an_existing_ablation(tmp_path):
    from study_utils import make_scored_run

    run_dir, _ = make_scored_run(tmp_path / "run", n=200)
    assert alignctl("ablate", run_dir, "--fusions", "learned,and", "--target-fpr", "0.05").exit_code == 0
    assert alignctl("ablate", run_dir, "--fusions", "or,max", "--target-fpr", "0.05").exit_code == 0  # replaces it
    before = {p.name: p.read_bytes() for p in (run_dir / "ablation").iterdir()}
    res = alignctl("report", run_dir)
    assert res.exit_code == 0, res.output
    assert {p.name: p.read_bytes() for p in (run_dir / "ablation").iterdir()} == before
    page = (run_dir / "report.html").read_text()
    assert "fusion:max" in page and "fusion:learned" not in page and "5.00% FPR" in page
    assert "read from ablation/" in page
    assert sorted(p.name for p in (run_dir / "ablation").glob("*.state.json")) == ["max-synthetic.state.json",
                                                                                  "or-synthetic.state.json"]
    res = alignctl("report", run_dir, "--fusions", "learned")
    assert "ignores --fusions" in res.stderr and (run_dir / "ablation" / "ablation.csv").read_bytes() == before["ablation.csv"]


# ---------------------------------------------------------------------- 7. the score contract in the Python API


def test_detector_gives_no_verdict_unless_every_branch_scored(plugin):
    from aligncore import Detector

    det = Detector(branches=["fake", "half"], fusion="or")
    narrow, wide = det.predict([Image.new("RGB", (40, 40), (9, 9, 9)), Image.new("RGB", (60, 40), (9, 9, 9))])
    assert narrow.verdict is None and math.isnan(narrow.score) and "too narrow" in narrow.error
    assert wide.verdict in ("real", "fake") and wide.error is None


# ---------------------------------------------------------------------- 8. the smaller items


def test_run_on_a_builder_folder_scores_only_what_its_manifest_lists(tmp_path):
    out = tmp_path / "set"
    for sub in ("0_real", "1_fake", "clean/0_real", "clean/1_fake"):
        (out / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for sub in ("0_real", "1_fake", "clean/0_real", "clean/1_fake"):
        for k in range(2):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(out / sub / f"{k}.png")
    (out / "manifest.csv").write_text("path,label\n0_real/0.png,0\n0_real/1.png,0\n1_fake/0.png,1\n1_fake/1.png,1\n")
    res = run(make_run_config(branches="fake", data=str(out), out=str(tmp_path / "r")), progress=False)
    assert sorted(Path(r["path"]).relative_to(out.resolve()).as_posix() for r in _preds(res.out_dir)) == [
        "0_real/0.png", "0_real/1.png", "1_fake/0.png", "1_fake/1.png"]


@pytest.mark.parametrize("h, w, n", [(256, 256, 3), (256, 256, 5), (128, 400, 7), (136, 128, 16), (200, 200, 16)])
def test_multi_crop_windows_are_distinct_or_counted_equally(h, w, n):
    from collections import Counter

    from aligncore.data.crops import grid_positions
    from aligncore.pixel import window_positions

    grid = grid_positions(h, w, 128, n, 8)
    assert len(set(grid)) == len(grid) <= n
    pos = window_positions(h, w, 128, n, 8)
    counts = Counter(pos)
    assert len(pos) == n and len(set(counts.values())) == 1, counts  # every window used equally often
    if len(grid) == n:
        assert len(counts) == n
    assert len(set(window_positions(256, 256, 128, 3, 8))) == 3  # the case: a square image, 3 crops


def test_semantic_set_limit_keeps_both_classes():
    from aligncore.registry import create_builder
    from aligncore.supervision import WorkItem

    b = create_builder("semantic-set")
    items = [WorkItem(f"fake/gen/f{i}", Path(f"f{i}")) for i in range(10)] + \
        [WorkItem(f"real/real/r{i}", Path(f"r{i}")) for i in range(10)]
    kept = b.limited(sorted(items, key=lambda it: it.key), 6)
    assert sum(it.key.startswith("real/") for it in kept) == 3 == sum(it.key.startswith("fake/") for it in kept)
    help_text = type(b.config).model_fields["limit"].description
    assert "both classes" in help_text and "sorted order" not in help_text  # `builders -v` says what limit does


def test_readme_states_what_the_dpo_figure_was_measured_on():
    text = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    at = text.index("0.0111 → 0.4288")
    bullet = text[text.rindex("- Tiny DPO", 0, at):at + 200]
    assert "same 12 training images it was trained on" in bullet and "no held-out split" in bullet, bullet


def test_dependency_floors_admit_only_versions_the_code_supports():
    import tomllib
    from importlib.metadata import version

    deps = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = {}
    for d in deps:
        name, _, rest = d.partition(">=")
        floors[name.strip()] = tuple(int(x) for x in rest.split(",")[0].split(".")[:2]) if rest else None
    # checked by running tests/test_qwen.py on them: transformers 5.0 reloads a DPO adapter with other scores, 4.x lacks
    # rope_parameters; trl 1.0 passes
    assert floors["transformers"] >= (5, 5) and floors["trl"] >= (1, 0)
    for name, floor in floors.items():  # every floor is satisfied by what the suite runs on
        if floor:
            assert tuple(int(x) for x in version(name).split(".")[:2]) >= floor, name


# ---------------------------------------------------------------------- 9. predictions recompute the metrics


def _sk_metrics(rows: list[dict], col: str) -> dict:
    from scipy.interpolate import interp1d
    from scipy.optimize import brentq
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    keep = [r for r in rows if r[col] != "" and r["label"] != ""]
    y = np.array([int(r["label"]) for r in keep])
    s = np.array([float(r[col]) for r in keep])
    fpr, tpr, _ = roc_curve(y, s)
    eer = brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0)
    return {"auc": roc_auc_score(y, s), "ap": average_precision_score(y, s), "eer": eer}


@pytest.mark.parametrize("branch", ["fake", "ties", "confident"])
def test_metrics_recompute_from_predictions_with_scikit_learn(ds, tmp_path, plugin, branch):
    res = run(make_run_config(branches=branch, data=str(ds), out=str(tmp_path / "r")), progress=False)
    rows = _preds(res.out_dir)
    got = _sk_metrics(rows, "fused_score")
    m = res.metrics["overall"]
    for k in ("auc", "ap", "eer"):
        assert abs(got[k] - m[k]) <= 1e-6, (k, got[k], m[k])
    if branch == "ties":
        assert len({round(float(r["score_ties"]), 6) for r in rows}) == 1  # all tie to 6 decimals
        assert len({r["score_ties"] for r in rows}) > 2
    if branch == "confident":
        z = np.array([float(r["logit_confident"]) for r in rows])
        p = np.array([float(r["score_confident"]) for r in rows])
        assert np.abs(z).max() > 20 and len(set(p.tolist())) == len(p)  # nothing saturates to 1.0 / 0.0
        np.testing.assert_allclose(p, 1 / (1 + np.exp(-z)), rtol=1e-12)


def test_pixel_branch_predictions_carry_logits(ds, tmp_path):
    res = run(make_run_config(branches="npr", preset="tiny", device="cpu", data=str(ds), out=str(tmp_path / "r")),
              progress=False)
    rows = _preds(res.out_dir)
    z = np.array([float(r["logit_npr"]) for r in rows])
    np.testing.assert_allclose([float(r["score_npr"]) for r in rows], 1 / (1 + np.exp(-z)), rtol=1e-12)


@pytest.mark.parametrize("args, needle", [
    (["--branches", "dinov2", "-o", "dinov2.from_scratch=true"], "no trained weights"),
    # npr and spectrum score with their built-in weights without a checkpoint (tests/test_builtin.py)
])
def test_a_branch_without_weights_refuses_to_score(ds, tmp_path, args, needle):
    res = alignctl("run", *args, "--data", ds, "--out", tmp_path / "r", "-q", "--device", "cpu")
    assert res.exit_code == 1 and needle in res.stderr and "Traceback" not in res.output, res.output


# ---------------------------------------------------------------------- issue 15, section 4: the store


def _fp_rows(store: Path) -> list[tuple]:
    return sqlite3.connect(store).execute("SELECT sha256, fingerprint FROM scores").fetchall()


@pytest.mark.parametrize("bad", ["5", "-1", "9e999", "-9e999", "NULL", "'abc'", "x'00'"])
def test_invalid_stored_scores_are_rescored(ds, tmp_path, bad):
    import os

    store = Path(os.environ["ALIGNCORE_STORE"])
    first = run(make_run_config(branches="fake", data=str(ds), out=str(tmp_path / "a")), progress=False)
    good = {r["sha256"]: r["score_fake"] for r in _preds(first.out_dir)}
    victim = sorted(good)[0]
    db = sqlite3.connect(store)
    db.execute(f"UPDATE scores SET score = {bad} WHERE sha256 = ?", (victim,))
    db.commit()
    db.close()
    again = run(make_run_config(branches="fake", data=str(ds), out=str(tmp_path / "b")), progress=False)
    assert (again.branches["fake"].scored, again.branches["fake"].reused) == (1, 11)
    assert {r["sha256"]: r["score_fake"] for r in _preds(again.out_dir)} == good
    assert sqlite3.connect(store).execute("SELECT score FROM scores WHERE sha256 = ?", (victim,)).fetchone()[0] == \
        float(good[victim])


@pytest.mark.parametrize("planted, needle", [
    ("CREATE TRIGGER t AFTER INSERT ON scores BEGIN UPDATE scores SET score = 0.0; END", "trigger 't'"),
    ("CREATE VIEW v AS SELECT * FROM scores", "view 'v'"),
])
def test_a_store_with_planted_triggers_or_views_is_refused(ds, tmp_path, planted, needle):
    import os

    store = Path(os.environ["ALIGNCORE_STORE"])
    assert alignctl("run", "--branches", "fake", "--data", ds, "--out", tmp_path / "a", "-q").exit_code == 0
    db = sqlite3.connect(store)
    db.execute(planted)
    db.commit()
    db.close()
    res = alignctl("run", "--branches", "fake", "--data", ds, "--out", tmp_path / "b", "-q")
    assert res.exit_code == 1 and needle in res.stderr and "refused" in res.stderr and "Traceback" not in res.output


def test_scores_and_logits_come_back_for_more_hashes_than_one_query_holds(tmp_path):
    from aligncore.store import ScoreStore

    with ScoreStore(tmp_path / "s.sqlite") as st:
        rows = [(f"{i:064x}", i / 2000, None, None, float(i)) for i in range(2000)]
        assert st.put_scores("fp", "b", rows) == 2000
        got = st.get_scores("fp", [r[0] for r in rows])  # read in chunks of 900
        assert len(got) == 2000 and all(got[h] == (s, None, None, z) for h, s, _, _, z in rows)


def test_a_store_whose_scores_table_is_defined_otherwise_is_refused(tmp_path):
    from aligncore.errors import AlignCoreError
    from aligncore.store import ScoreStore

    path = tmp_path / "odd.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE scores (sha256 TEXT NOT NULL, fingerprint TEXT NOT NULL, branch TEXT NOT NULL, "
               "score REAL DEFAULT 0.9, explanation TEXT, error TEXT, created REAL NOT NULL, logit REAL, "
               "PRIMARY KEY (sha256, fingerprint))")
    db.commit()
    db.close()
    with pytest.raises(AlignCoreError, match="not the table aligncore creates"):
        ScoreStore(path)


# ---------------------------------------------------------------------- 10. training says what it did and on what


def _tiny_pair_set(root: Path, n: int = 6) -> Path:
    return make_image_folder(root, n_real=n, n_fake=n, size=(40, 40))


def test_train_stops_on_its_time_budget_and_prints_one_summary_line(tmp_path):
    data = _tiny_pair_set(tmp_path / "set")
    out = tmp_path / "ck"
    res = alignctl("train", "npr", "--preset", "tiny", "--set", data, "--out", out, "-q", "--device", "cpu",
                   "-o", "max_minutes=0.03", "-o", "batch_size=4", "-o", "val_fraction=0.34")
    assert res.exit_code == 0, res.output
    line = res.stdout.strip().splitlines()[-1]
    assert line.startswith("trained npr: steps ") and "stopped: max_minutes" in line and "validation AUC" in line
    from aligncore.train.base import read_metrics
    from aligncore.train.pixel_config import UNLIMITED_EPOCHS, PixelTrainConfig

    assert float(read_metrics(out)[-1]["elapsed_s"]) >= 0.03 * 60 - 0.1  # it ran until its budget was spent
    # a budget given alone is the stopping rule; without one the default is 3 epochs; an explicit epochs wins
    assert PixelTrainConfig(max_minutes=2).planned_epochs() == UNLIMITED_EPOCHS == PixelTrainConfig(max_steps=9).planned_epochs()
    assert PixelTrainConfig().planned_epochs() == 3 and PixelTrainConfig(max_minutes=2, epochs=5).planned_epochs() == 5
    record = json.loads((out / "best" / "training.json").read_text())
    assert record["data"]["n_images"] == 12 and len(record["data"]["digest"]) == 64
    assert record["train_config"]["max_minutes"] == 0.03 and record["branch_config"]["preset"] == "tiny"
    # the same folder with one image changed gives another digest
    from aligncore.train.base import describe_training_data
    from aligncore.data import load_dataset

    recs = load_dataset(data).records
    before = describe_training_data(recs)["digest"]
    assert before == record["data"]["digest"]
    Image.new("RGB", (40, 40), (1, 2, 3)).save(recs[0].path)
    assert describe_training_data(recs)["digest"] != before


def test_train_allows_outside_paths_only_when_asked(tmp_path):
    data = _tiny_pair_set(tmp_path / "set")
    rows = [(str(Path("..") / "set" / Path(r).relative_to(data)), lab) for r, lab in
            [(str(p), 0) for p in sorted((data / "genA" / "0_real").iterdir())] +
            [(str(p), 1) for p in sorted((data / "genA" / "1_fake").iterdir())]]
    manifest = tmp_path / "m" / "set.csv"
    manifest.parent.mkdir()
    manifest.write_text("path,label\n" + "".join(f"{p},{lab}\n" for p, lab in rows))
    args = ["train", "spectrum", "--set", manifest, "--out", tmp_path / "ck", "-q", "-o", "val_fraction=0.34"]
    refused = alignctl(*args)
    assert refused.exit_code == 1 and "--allow-outside-paths" in refused.stderr
    ok = alignctl(*args, "--allow-outside-paths")
    assert ok.exit_code == 0 and ok.stdout.strip().splitlines()[-1].startswith("trained spectrum: "), ok.output


def test_per_generator_metrics_for_a_real_fake_generator_layout(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "ds"
    for sub, n, noise in (("real/photos", 6, 30), ("fake/genA", 3, 3), ("fake/genB", 3, 3)):
        (root / sub).mkdir(parents=True)
        for k in range(n):
            arr = np.clip(rng.uniform(0, 255) + rng.normal(0, noise, (40, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / sub / f"{k}.png")
    res = run(make_run_config(branches="fake", data=str(root), out=str(tmp_path / "r")), progress=False)
    m = res.metrics
    assert set(m["per_generator"]) == {"genA", "genB"} and set(m["per_source"]) == {"photos"}
    for g in ("genA", "genB"):
        assert m["per_generator"][g]["auc"] is not None and m["per_generator"][g]["n_real"] == 6


def test_audit_format_writes_its_table_with_out(ds, tmp_path):
    res = alignctl("audit-format", ds, "--branches", "fake", "--out", tmp_path / "audit", "-q")
    assert res.exit_code == 0, res.output
    table = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert {r["condition"] for r in table["rows"]} == {"as-is", "jpeg:95"}
    assert (tmp_path / "audit" / "audit.csv").read_text().startswith("detector,condition,")
    assert (tmp_path / "audit" / "as-is" / "metrics.json").is_file()
