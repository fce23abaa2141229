"""Studies as code: study files checked before any work, content-addressed cells that resume after a kill and
recompute only what a change touches, every shipped recipe end to end at --scale tiny, tables and leaderboard."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from aligncore.cli import build_cli

RECIPES = ("alignment-matrix", "decomposition", "fusion-rules", "pixel-decoders", "postprocess-stress")

#: a small study that exercises every cell kind but audit in ~10 s: two pixel branches, two seeds, one fusion
MINI = """\
name: mini
sets:
  pixel-train:
    builder: tiny-ae
    sources: ["${data}/train"]
  pixel-test:
    builder: tiny-ae
    sources: ["${data}/test"]
  raw-test:
    path: "${data}/test"
models:
  npr-pixel:
    branch: npr
    train_on: pixel-train
    train: {epochs: 2, batch_size: 8, crop_size: 32, lr: 0.002}
    tags: {family: cnn}
  spectrum-pixel:
    branch: spectrum
    train_on: pixel-train
    tags: {family: linear}
evaluate:
  datasets: [pixel-test, raw-test]
fusions:
  pair:
    models: [npr-pixel, spectrum-pixel]
    rules: [or, max, learned]
    datasets: [raw-test]
seeds: [0, 1]
report:
  tables:
    - {title: "Model x dataset: AUC", rows: model, cols: dataset, metric: auc}
    - {title: "Fusions: AUC", source: fusions, rows: method, cols: dataset, metric: auc}
"""
MINI_CELLS = 17  # data 1, set 2, train 4, score 8, fuse 2


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny models run fastest on one thread; two oversubscribe a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _invoke(args: list[str]):
    return CliRunner().invoke(build_cli(), args, catch_exceptions=False)


def _counts(output: str) -> tuple[int, int]:
    m = re.search(r"(\d+) reused, (\d+) computed", output)
    assert m, output
    return int(m.group(1)), int(m.group(2))


def _subprocess_env() -> dict[str, str]:
    """This process's torch thread count for the child, so both compute the same floats."""
    import torch

    return {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONWARNINGS": "ignore"}


def _study_cmd(study: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "aligncore", "study", "run", str(study), "--scale", "tiny", "--out", str(out), "-q"]


def _tables(folder: Path) -> dict:
    r = _invoke(["study", "report", str(folder), "--format", "json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _filled(table: dict) -> bool:
    return all(cell and cell["n"] > 0 for row in table["cells"].values() for cell in row.values())


# ---------------------------------------------------------------------- checks before any work


def test_study_list_shows_the_five_recipes():
    r = _invoke(["study", "list"])
    assert r.exit_code == 0, r.output
    assert [line.split()[0] for line in r.output.splitlines()] == sorted(RECIPES)
    shown = _invoke(["study", "show", "fusion-rules"])
    assert shown.exit_code == 0 and "name: fusion-rules" in shown.output


@pytest.mark.parametrize("text, line, field, words", [
    ("name: s\nsets:\n  a:\n    path: x\n    colour: red\n", 5, "sets.a.colour", "unknown field"),
    ("name: s\nsets:\n  a: {builder: tiny-aee, sources: [x]}\n", 3, "sets.a.builder", "Did you mean 'tiny-ae'"),
    ("name: s\nsets:\n  a:\n    builder: tiny-ae\n    sources: ['${data}/train']\nmodels:\n  m:\n    branch: npr\n"
     "    train_on: a\n    train:\n      lrr: 0.1\nevaluate: {datasets: [a]}\n", 11, "models.m.train.lrr", "did you mean 'lr'"),
    ("name: s\nsets:\n  a: {path: x}\nmodels:\n  m:\n    branch: npr\n    trian_on: a\n", 7, "models.m.trian_on",
     "did you mean 'train_on'"),
    ("name: s\nsets:\n  a:\n    builder: tiny-ae\n    sources: ['${data}/train']\n    options: {max_sid: 64}\n", 6,
     "sets.a.options.max_sid", "did you mean 'max_side'"),
    ("name: s\nsets:\n  a:\n    builder: tiny-ae\n    sources: ['${data}/train']\nmodels:\n  m: {branch: npr, train_on: b}\n"
     "evaluate: {datasets: [a]}\n", 7, "models.m.train_on", "unknown set 'b'"),
    ("name: s\nsets:\n  a: {path: '${data}/test'}\nevaluate:\n  datasets: [a]\n  perturbations: [jpeg:500]\n", 6,
     "evaluate.perturbations[0]", "jpeg"),
    ("name: s\nsets:\n  a: {path: x}\n  a: {path: y}\n", 4, "sets.a", "duplicate key"),
    ("name: s\nsets:\n  a: {path: [x\n", 4, None, "cannot be parsed"),
    ("name: s\nseeds: [0]\n", 1, "sets", "required field is missing"),
])
def test_a_malformed_study_fails_with_file_line_and_field_before_any_work(tmp_path, text, line, field, words):
    study = tmp_path / "study.yaml"
    study.write_text(text)
    out = tmp_path / "out"
    r = CliRunner().invoke(build_cli(), ["study", "run", str(study), "--scale", "tiny", "--out", str(out)])
    assert r.exit_code == 1, r.output
    msg = " ".join(r.output.split())
    assert str(study) in msg and f"line {line}" in msg and words in msg, msg
    if field:
        assert f"line {line}: {field}:" in msg, msg
    assert "nothing was run" in msg
    assert not out.exists()  # before any work: not even the study folder


def test_every_problem_is_reported_at_once_sorted_by_line(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text("name: s\nsets:\n  a:\n    builder: sd-vea\n    sources: ['${data}/train']\nmodels:\n"
                     "  m:\n    branch: spectrum\n    train_on: aa\n    train: {CC: 1}\nevaluate: {datasets: [a, zz]}\n")
    r = CliRunner().invoke(build_cli(), ["study", "run", str(study), "--scale", "tiny", "--out", str(tmp_path / "o")])
    lines = [ln for ln in r.output.splitlines() if ", line " in ln]
    assert [int(re.search(r"line (\d+)", ln).group(1)) for ln in lines] == [4, 9, 10, 11], r.output
    assert "4 problems" in r.output


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_plans_at_full_scale_on_a_data_root(tmp_path, recipe):
    """The full-scale recipes name real components and valid options (nothing heavy is loaded to check it)."""
    from aligncore.study import load_study, plan_study
    from aligncore.testing import make_image_folder

    root = tmp_path / "data"
    for split in ("train", "test"):
        make_image_folder(root / split, 3, 3, layout="real/fake", generators=("genA", "genB"))
    for f in ("enc.pth", "dec.pth"):
        (tmp_path / f).write_bytes(b"x")
    sf, study = load_study(recipe)
    variables = {"taesd_encoder": str(tmp_path / "enc.pth"), "taesd_decoder": str(tmp_path / "dec.pth")}
    plan = plan_study(sf, study, "full", root, {k: v for k, v in variables.items() if k in study.vars})
    counts = plan.counts()
    assert counts["data"] == 1 and counts["set"] >= 2 and counts.get("score", 0) >= 2
    assert all(c.spec.get("mode") != "sample" for c in plan.cells)  # full scale reads the data in place
    assert len(plan.seeds) == 3


def test_the_readme_example_study_is_valid(tmp_path):
    from aligncore.study import load_study, plan_study

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    example = readme.split("## Studies", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    study = tmp_path / "my-study.yaml"
    study.write_text(example)
    plan = plan_study(*load_study(study), "tiny")
    assert plan.counts() == {"data": 1, "set": 2, "train": 6, "score": 12, "fuse": 6, "audit": 1}


def test_a_required_variable_and_the_data_root_are_asked_for_by_name(tmp_path):
    from aligncore.study import load_study, plan_study
    from aligncore.study.spec import StudyError
    from aligncore.testing import make_image_folder

    sf, study = load_study("pixel-decoders")
    with pytest.raises(StudyError, match=r"line \d+: sets.tinyae-train.options.encoder_path: variable \$\{taesd_encoder\} "
                                         r"has no value: pass --var taesd_encoder=VALUE"):
        make_image_folder(tmp_path / "d" / "train", 2, 2, layout="real/fake")
        make_image_folder(tmp_path / "d" / "test", 2, 2, layout="real/fake")
        plan_study(sf, study, "full", tmp_path / "d")
    with pytest.raises(StudyError, match=r"\$\{data\} needs --data-root DIR"):
        plan_study(*load_study("decomposition"), "full")
    with pytest.raises(StudyError, match=r"--data-root .* has no test/ \(nor test.csv, test.jsonl\)"):
        plan_study(*load_study("decomposition"), "full", tmp_path / "d" / "train")


def test_an_override_that_tiny_scale_would_shadow_is_refused():
    r = _invoke(["study", "run", "alignment-matrix", "--scale", "tiny", "--dry-run",
                 "--set", "models.npr-pixel.train.lr=0.003"])
    assert r.exit_code == 1 and "--set models.npr-pixel.train.lr=0.003: models.npr-pixel.train.lr: has no effect at " \
        "--scale tiny, where models.npr-pixel.tiny.train.lr = 0.002 wins" in r.output, r.output
    ok = _invoke(["study", "run", "alignment-matrix", "--scale", "tiny", "--dry-run",
                  "--set", "models.npr-pixel.tiny.train.lr=0.003"])
    assert ok.exit_code == 0 and "29 cells" in ok.output


# ---------------------------------------------------------------------- the mini study: kill, resume, recompute


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The mini study run once, without interruption, in a fresh process: its folder and its tables."""
    root = tmp_path_factory.mktemp("mini")
    study = root / "mini.yaml"
    study.write_text(MINI)
    out = root / "A"
    r = _invoke(["study", "run", str(study), "--scale", "tiny", "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert _counts(r.output) == (0, MINI_CELLS)
    return study, out, _tables(out)


def test_a_killed_study_resumes_without_recomputing_a_finished_cell(uninterrupted, tmp_path):
    study, _, reference = uninterrupted
    out = tmp_path / "B"
    proc = subprocess.Popen(_study_cmd(study, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=_subprocess_env(), start_new_session=True)
    deadline = time.monotonic() + 240
    try:
        while len(list(out.glob("cells/*/cell.json"))) < 5:
            assert proc.poll() is None, "the study finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    published = list(out.glob("cells/*/cell.json"))
    assert 5 <= len(published) < MINI_CELLS
    for p in published:  # nothing half-written: every published record reads back
        assert json.loads(p.read_text())["key"] == p.parent.name
    partial = _invoke(["study", "report", str(out)])
    assert partial.exit_code == 0 and f"{MINI_CELLS - len(published)} of {MINI_CELLS} cells are not finished" in partial.output

    again = _invoke(["study", "run", str(study), "--scale", "tiny", "--out", str(out), "-q"])
    assert again.exit_code == 0, again.output
    assert _counts(again.output) == (len(published), MINI_CELLS - len(published))
    assert _tables(out)["tables"] == reference["tables"]


def test_changing_one_option_recomputes_only_the_cells_downstream_of_it(uninterrupted, tmp_path):
    import shutil

    from aligncore.study import load_study, plan_study, run_study

    study, src, reference = uninterrupted
    out = tmp_path / "A"
    shutil.copytree(src, out)

    def rerun(*overrides: str):
        sf, st = load_study(study, overrides)
        return run_study(plan_study(sf, st, "tiny"), out, overrides=overrides)

    res = rerun("models.npr-pixel.train.lr=0.003")
    assert sorted(c.label for c in res.computed) == sorted(
        [f"train npr-pixel on pixel-train (seed {s})" for s in (0, 1)]
        + [f"score npr-pixel on {d} (seed {s})" for d in ("pixel-test", "raw-test") for s in (0, 1)]
        + [f"fuse pair on raw-test (seed {s})" for s in (0, 1)])
    assert len(res.reused) == MINI_CELLS - 8
    assert {c.kind for c in res.reused} == {"data", "set", "train", "score"}
    # a fusion option touches the fusion cells only; a model's name touches nothing that is computed
    res = rerun("models.npr-pixel.train.lr=0.003", "fusions.pair.target_fpr=0.1")
    assert sorted(c.kind for c in res.computed) == ["fuse", "fuse"]
    renamed = MINI.replace("npr-pixel", "cnn-pixel")
    study2 = tmp_path / "renamed.yaml"
    study2.write_text(renamed)
    sf, st = load_study(study2)
    res = run_study(plan_study(sf, st, "tiny"), out)
    assert not res.computed  # the original options: every cell is still in the folder, under the same keys
    assert _tables(out)["tables"][0]["rows"] == ["cnn-pixel", "spectrum-pixel"]
    # the CLI says what it reused
    r = _invoke(["study", "run", str(study2), "--scale", "tiny", "--out", str(out), "-q"])
    assert r.exit_code == 0 and _counts(r.output) == (MINI_CELLS, 0), r.output
    dry = _invoke(["study", "run", str(study2), "--scale", "tiny", "--out", str(out), "--dry-run",
                   "--set", "evaluate.perturbations=[none, 'jpeg:75']"])
    # each model on each dataset and seed under jpeg:75 (8), and the fusion on its dataset per seed (2)
    assert dry.exit_code == 0 and f"{MINI_CELLS + 10} cells, {MINI_CELLS} cached, 10 to compute" in dry.output, dry.output
    assert sum(line.lstrip().startswith("compute") for line in dry.output.splitlines()) == 10


def test_a_failing_cell_is_not_published_and_is_computed_again(uninterrupted, tmp_path, monkeypatch):
    from aligncore.errors import AlignCoreError
    from aligncore.study import execute, load_study, plan_study, run_study

    study, done, _ = uninterrupted
    sf, st = load_study(study, ["seeds=[5]", "fusions={}"])  # a new seed: data and sets come from the finished study
    plan = plan_study(sf, st, "tiny")
    cache = tmp_path / "cells"
    import shutil

    shutil.copytree(done / "cells", cache)
    real = execute.EXECUTORS["train"]

    def broken(ctx, cell):
        raise AlignCoreError("simulated failure")

    monkeypatch.setitem(execute.EXECUTORS, "train", broken)
    with pytest.raises(AlignCoreError, match=r"cell 'train npr-pixel on pixel-train \(seed 5\)' failed: simulated failure"):
        run_study(plan, tmp_path / "S", cache=cache)
    trains = [c for c in plan.cells if c.kind == "train"]
    assert not [c for c in trains if (cache / c.key / "cell.json").exists()]
    monkeypatch.setitem(execute.EXECUTORS, "train", real)
    res = run_study(plan, tmp_path / "S", cache=cache)
    assert {c.kind for c in res.reused} == {"data", "set"} and len(res.computed) == 2 + 4


def test_one_study_and_one_scale_per_folder(uninterrupted, tmp_path):
    from aligncore.testing import make_image_folder

    study, out, _ = uninterrupted
    for split in ("train", "test"):
        make_image_folder(tmp_path / "d" / split, 2, 2, layout="real/fake")
    tiny_ae = ["--set", "sets.pixel-train.options.preset=tiny", "--set", "sets.pixel-test.options.preset=tiny"]
    r = CliRunner().invoke(build_cli(), ["study", "run", str(study), "--out", str(out), "--data-root", str(tmp_path / "d"),
                                         *tiny_ae])
    assert r.exit_code == 1 and "holds the study 'mini' at scale 'tiny'" in r.output, r.output
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    r = CliRunner().invoke(build_cli(), ["study", "run", str(study), "--scale", "tiny", "--out", str(tmp_path / "mine")])
    assert r.exit_code == 1 and "is not empty and holds no study" in r.output, r.output


def test_a_data_root_is_sampled_at_tiny_scale_and_read_in_place_at_full_scale(tmp_path):
    from aligncore.data import load_dataset
    from aligncore.study import load_study, plan_study, run_study
    from aligncore.testing import make_image_folder

    root = tmp_path / "data"
    make_image_folder(root / "train", 20, 20, layout="real/fake", generators=("genA", "genB"))
    make_image_folder(root / "test", 4, 4, layout="real/fake", generators=("genC",))
    study = tmp_path / "s.yaml"
    study.write_text("name: sets-only\nsets:\n  train:\n    path: '${data}/train'\n  test:\n    path: '${data}/test'\n")
    sf, st = load_study(study)
    res = run_study(plan_study(sf, st, "tiny", root), tmp_path / "tiny")
    (data,) = res.computed
    sample = tmp_path / "tiny" / "cells" / data.key / "data"
    assert data.spec["mode"] == "sample"
    counts = {}
    for r in load_dataset(sample / "train").records:
        counts[(r.label, r.generator)] = counts.get((r.label, r.generator), 0) + 1
    assert counts == {(0, "genA"): 10, (0, "genB"): 10, (1, "genA"): 10, (1, "genB"): 10}  # <= 16 per group
    assert len(load_dataset(sample / "test").records) == 8
    full = plan_study(sf, st, "full", root)
    assert full.cells[0].spec["mode"] == "as-is"
    (root / "test" / "fake" / "genC" / "f0000.png").unlink()  # a changed data root is a new data cell
    assert plan_study(sf, st, "full", root).cells[0].key != full.cells[0].key


def test_a_training_split_does_not_depend_on_where_the_set_lies(tmp_path):
    """Cells are content-addressed: the same set at another path must train the same model (same validation split)."""
    import shutil

    from aligncore.testing import make_image_folder
    from aligncore.train.pixel_data import load_training_set, split_by_group

    a = make_image_folder(tmp_path / "one" / "set", 10, 10, layout="real/fake")
    b = tmp_path / "elsewhere" / "deeper" / "set"
    shutil.copytree(a, b)

    def val(root):
        _, v = split_by_group(load_training_set(root), 0.3, 0)
        return sorted(Path(r.path).relative_to(root).as_posix() for r in v)

    assert val(a) == val(b) and val(a)
    # a semantic set's rows name their source photo by absolute path and by digest: the digest groups them
    for root, photos in ((a, "/data/photos"), (b, "/mnt/other/photos")):
        rows = ["path,label,source,source_sha256"]
        for i, r in enumerate(sorted(load_training_set(root), key=lambda r: r.path)):
            rows.append(f"{Path(r.path).relative_to(root).as_posix()},{r.label},{photos}/p{i % 7}.png,digest{i % 7}")
        (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    assert val(a) == val(b)


# ---------------------------------------------------------------------- every recipe at tiny scale


@pytest.fixture(scope="module")
def recipe_cache(tmp_path_factory):
    """One cell folder for the recipe tests: sets and trainings the recipes share are computed once."""
    return tmp_path_factory.mktemp("recipe-cells")


def _run_recipe(recipe: str, out: Path, cache: Path) -> dict:
    r = _invoke(["study", "run", recipe, "--scale", "tiny", "--out", str(out), "--cache", str(cache), "-q"])
    assert r.exit_code == 0, r.output
    reused, computed = _counts(r.output)
    again = _invoke(["study", "run", recipe, "--scale", "tiny", "--out", str(out), "--cache", str(cache), "-q"])
    assert _counts(again.output) == (reused + computed, 0)
    text = _invoke(["study", "report", str(out)])
    assert text.exit_code == 0 and "TINY SCALE" in text.output
    tables = _tables(out)
    assert tables["scale"] == "tiny" and not tables["missing_cells"]
    for f in ("tables.md", "tables.csv", "tables.json", "report.html"):
        assert (out / "report" / f).stat().st_size > 0
    html = (out / "report" / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and html.count("<table>") == len(tables["tables"])
    return tables


def _grid(table: dict) -> tuple[list[str], list[str]]:
    return table["rows"], table["cols"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_runs_end_to_end_at_tiny_scale(recipe, recipe_cache, tmp_path):
    from aligncore.leaderboard import stored_rows
    from aligncore.store import ScoreStore

    tables = _run_recipe(recipe, tmp_path / recipe, recipe_cache)["tables"]
    by_title: dict[str, list[dict]] = {}
    for t in tables:
        by_title.setdefault(t["title"], []).append(t)
    if recipe == "alignment-matrix":
        auc = by_title["Expert x supervision: AUC"]
        assert [t["split"]["dataset"] for t in auc] == ["pixel-test", "semantic-test", "raw-test"]
        for t in auc:
            assert _grid(t) == (["npr", "dinov2", "qwen"], ["pixel", "semantic"]) and _filled(t)
    elif recipe == "decomposition":
        (t,) = by_title["Supervision x test set: AUC"]
        assert _grid(t) == (["mixed", "semantic"], ["pixel-test", "semantic-test", "raw-test"]) and _filled(t)
    elif recipe == "fusion-rules":
        (t,) = by_title["Fusion rule x test set: AUC"]
        methods = [f"fusion:{r}" for r in ("or", "and", "max", "weighted", "learned")] + ["branch:dinov2", "branch:qwen"]
        assert _grid(t) == (methods, ["raw-test", "pixel-test"]) and _filled(t)
        cells = [c for row in t["cells"].values() for c in row.values()]
        assert all(c["n"] + c["n_undefined"] == 2 for c in cells)  # 2 seeds, each a result or undefined
        assert all(c["std"] is not None for c in cells if c["n"] == 2)
        # a learned fit on 8 calibration images can be degenerate (refused: n/a); the cell then says it averages less
        shown = (tmp_path / recipe / "report" / "tables.md").read_text()
        assert all(f"{c['mean']:.4f} (1 of 2; 1 n/a)" in shown for c in cells if c["n"] < 2)
        (gen,) = [v for k, v in by_title.items() if k.startswith("Detection rate per generator")]
        assert gen[0]["cols"] == ["all", "collage-standin", "resample-standin"] and _filled(gen[0])
    elif recipe == "pixel-decoders":
        (single,) = by_title["Train decoder x test decoder: AUC"]
        decoders = ["tiny-ae", "sd-vae", "flux-vae", "generators"]
        assert _grid(single) == (decoders, decoders) and _filled(single)
        (logo,) = by_title["Leave one decoder out: scored on the held-out one"]
        assert _grid(logo) == (decoders, ["auc", "ap", "balanced_accuracy"]) and _filled(logo)
    elif recipe == "postprocess-stress":
        (audit,) = by_title["Pixel leakage per chain strength (npr, cross-validated)"]
        assert _grid(audit) == (["light", "paper", "heavy"], ["control_auc", "processed_auc", "verdict"])
        assert _filled(audit)
        assert {row["verdict"]["value"] for row in audit["cells"].values()} <= {"pass", "leak", "inconclusive"}
        (vlm,) = by_title["VLM trained at each strength: AUC"]
        assert _grid(vlm) == (["light", "paper", "heavy"], ["raw-test", "semantic-test"]) and _filled(vlm)
    with ScoreStore(tmp_path / recipe / "store.sqlite") as st:
        rows = stored_rows(st, recipe)
    has_scores = any(t["source"] == "scores" for t in tables)
    assert rows and has_scores and {r["suite"] for r in rows} == {recipe}
