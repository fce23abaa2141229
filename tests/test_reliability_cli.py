"""Configs and inputs, failure isolation, reproducibility — through the CLI (click's CliRunner) and the library."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from aligncore import hookimpl
from aligncore.cli import build_cli
from aligncore.config import make_run_config
from aligncore.registry import get_registry
from aligncore.runner import run
from aligncore.testing import FakeBranch, make_image_folder, registered_plugin


def alignctl(*args: str):
    return CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)


def assert_one_paragraph_error(res, *needles: str):
    assert res.exit_code != 0, res.output
    err = res.stderr
    assert "Traceback" not in res.output, err
    assert err.startswith("Error: ") and err.strip().count("\n") == 0, f"not one paragraph:\n{err}"
    for n in needles:
        assert n in err, f"{n!r} not in {err!r}"


@pytest.fixture
def ds(tmp_path):
    return make_image_folder(tmp_path / "ds", n_real=3, n_fake=3)


def _manifest(path: Path, rows: list[tuple[str, str]], header: str = "path,label") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "".join(f"{p},{lab}\n" for p, lab in rows))
    return path


# ---------------------------------------------------------------------- configs and names


def test_unknown_names_list_the_known_ones(ds):
    assert_one_paragraph_error(alignctl("run", "--branches", "fak", "--data", str(ds)),
                               "Unknown branch 'fak'", "Did you mean 'fake'", "Known branches: ", "fake")
    assert_one_paragraph_error(alignctl("run", "--branches", "fake", "--fusion", "nah", "--data", str(ds)),
                               "Unknown fusion 'nah'", "Known fusions:")
    assert_one_paragraph_error(alignctl("build", "nobuilder", str(ds), "--out", str(ds.parent / "o")), "Unknown builder 'nobuilder'")
    assert_one_paragraph_error(alignctl("train", "nope", "--set", str(ds), "--out", str(ds.parent / "t")), "Unknown branch 'nope'")


@pytest.mark.parametrize("text, needles", [
    ("branches: [fake]\ndata: DS\nbogus: 1\n", ["c.yaml", "bogus", "Extra inputs"]),
    ("branches: [fake]\ndata: DS\nbatch_size: -2\n", ["batch_size", "greater than or equal to 1"]),
    ("branches: [fake, fake]\ndata: DS\n", ["branches", "listed twice"]),
    ("data: DS\n", ["branches", "Field required"]),
    ("branches: [fake\n", ["c.yaml cannot be parsed at line 2", "expected ',' or ']'"]),
    ("- a\n- b\n", ["must hold a mapping", "not list"]),
    ("branches: [fake]\ndata: DS\nbranch_options: {fake: {statistic: nope}}\n", ["branch 'fake'", "statistic"]),
    ("branches: [fake]\ndata: DS\nbranch_options: {fake: {nonexist: 1}}\n", ["branch 'fake'", "nonexist"]),
])
def test_invalid_run_configs_name_the_field(tmp_path, ds, text, needles):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text.replace("DS", str(ds)))
    assert_one_paragraph_error(alignctl("run", "--config", str(cfg), "-q"), *needles)


def test_invalid_options_on_the_command_line(ds, tmp_path):
    assert_one_paragraph_error(alignctl("run", "--branches", "fake", "--data", str(ds), "-o", "scale=-1"), "scale")
    assert_one_paragraph_error(alignctl("build", "fake-pairs", str(ds), "--out", str(tmp_path / "o"), "-o", "seed=abc"), "seed")
    assert_one_paragraph_error(alignctl("run", "--config", str(tmp_path / "none.yaml")), "does not exist")
    assert_one_paragraph_error(alignctl("run", "--branches", "fake", "--data", str(tmp_path / "nothing")), "no such file or folder")


def test_debug_shows_the_traceback(ds):
    res = alignctl("--debug", "run", "--branches", "nope", "--data", str(ds))
    assert res.exit_code == 1 and "Traceback" in res.stderr and "UnknownComponentError" in res.stderr


# ---------------------------------------------------------------------- manifests


def test_malformed_manifest_rows_name_the_line(ds, tmp_path):
    good = "ds/genA/0_real/r0000.png"
    cases = [
        (_manifest(tmp_path / "missing.csv", [(good, "0"), ("ds/nope.png", "1")]), ["missing.csv line 3", "'ds/nope.png'", "do not exist"]),
        (_manifest(tmp_path / "label.csv", [(good, "maybe")]), ["label.csv line 2", "label 'maybe'"]),
        (_manifest(tmp_path / "dup.csv", [(good, "0"), ("./" + good, "1")]), ["dup.csv line 3", "duplicate path", "first at dup.csv line 2"]),
        (_manifest(tmp_path / "nocol.csv", [(good, "0")], header="file_name,label"), ["nocol.csv line 2", "no 'path'"]),
        (_manifest(tmp_path / "empty.csv", [("", "0")]), ["empty.csv line 2", "empty path"]),
    ]
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text(json.dumps({"path": good, "label": 0}) + "\n{bad json\n")
    cases.append((bad_json, ["bad.jsonl line 2", "not valid JSON"]))
    for manifest, needles in cases:
        assert_one_paragraph_error(alignctl("run", "--branches", "fake", "--data", str(manifest), "-q"), *needles)


def test_manifest_paths_resolve_against_its_folder_and_escapes_need_the_flag(ds, tmp_path, monkeypatch):
    inside = _manifest(tmp_path / "m.csv", [("ds/genA/0_real/r0000.png", "0"), ("ds/genA/1_fake/f0000.png", "1")])
    other = tmp_path / "elsewhere"
    other.mkdir()
    # relative paths are read from the manifest's folder, whatever the working directory
    monkeypatch.chdir(other)
    res = alignctl("run", "--branches", "fake", "--data", str(inside), "--out", str(tmp_path / "r1"), "-q")
    assert res.exit_code == 0, res.output
    escaping = _manifest(tmp_path / "sub" / "m.csv", [("../ds/genA/0_real/r0000.png", "0"), (str(ds / "genA/1_fake/f0000.png"), "1")])
    assert_one_paragraph_error(alignctl("run", "--branches", "fake", "--data", str(escaping), "-q"),
                               "m.csv line 2", "outside the manifest's folder", "--allow-outside-paths")
    res = alignctl("run", "--branches", "fake", "--data", str(escaping), "--allow-outside-paths", "--out", str(tmp_path / "r2"), "-q")
    assert res.exit_code == 0, res.output
    preds = list(csv.DictReader(open(tmp_path / "r2" / "predictions.csv")))
    assert sorted(Path(r["path"]).name for r in preds) == ["f0000.png", "r0000.png"]


# ---------------------------------------------------------------------- failure isolation


class FlakyBranch(FakeBranch):
    """The fake branch, except that a batch holding a 13-pixel-wide image raises and 14-pixel-wide images score NaN."""

    name = "flaky"
    help = "Test branch that fails on 13-pixel-wide images."

    def preprocess(self, image):
        return np.append(super().preprocess(image), float(image.width))

    def score_batch(self, batch):
        widths = np.atleast_2d(np.asarray(batch))[:, -1]
        if (widths == 13).any():
            raise ValueError("cannot score a 13-pixel-wide image")
        scores = super().score_batch(np.atleast_2d(np.asarray(batch))[:, :-1])
        return [float("nan") if w == 14 else s for w, s in zip(widths, scores)]  # a silent numerical failure


class FlakyPlugin:
    @hookimpl
    def register_branches(self, register):
        register(FlakyBranch)


class BrokenPlugin:
    @hookimpl
    def register_branches(self, register):
        raise RuntimeError("boom in branches")

    @hookimpl
    def register_commands(self, cli):
        raise RuntimeError("boom in commands")


def test_a_failing_batch_falls_back_to_per_image_scoring(ds, tmp_path):
    Image.new("RGB", (13, 20), (120, 30, 200)).save(ds / "genA" / "1_fake" / "poison.png")
    Image.new("RGB", (14, 20), (20, 130, 200)).save(ds / "genA" / "0_real" / "nan.png")
    with registered_plugin(FlakyPlugin(), "flaky-plugin"):
        res = run(make_run_config(branches=["flaky", "fake"], data=str(ds), out=str(tmp_path / "run"), batch_size=4),
                  progress=False)
    assert "flaky" not in get_registry().names("branch"), "the test plugin is unregistered afterwards"
    st = res.branches["flaky"]
    assert (st.scored, st.failed) == (6, 2)
    rows = {Path(r["path"]).name: r for r in csv.DictReader(open(tmp_path / "run" / "predictions.csv"))}
    assert len(rows) == 8  # the fake branch scored both bad images, so they stay in the run
    assert rows["poison.png"]["score_flaky"] == "" and "cannot score a 13-pixel-wide image" in rows["poison.png"]["error"]
    assert rows["nan.png"]["score_flaky"] == "" and "invalid score nan" in rows["nan.png"]["error"]
    for name, r in rows.items():
        if name not in ("poison.png", "nan.png"):  # the batch-mates of the poison image got the scores they get alone
            assert r["score_flaky"] == r["score_fake"] and r["error"] == ""


def test_a_plugin_raising_in_a_hook_is_named_and_the_cli_still_works(ds, tmp_path):
    with registered_plugin(BrokenPlugin(), "broken-plugin"):
        res = alignctl("branches")
        assert res.exit_code == 0 and "fake" in res.stdout
        assert "plugin 'broken-plugin' raised in register_branches: RuntimeError: boom in branches" in res.stderr
        res = alignctl("plugins", "--all")  # exits 1 while a plugin is broken (issue 14)
        assert res.exit_code == 1 and "broken-plugin" in res.stdout and "BROKEN" in res.stdout and "boom" in res.stdout
        res = alignctl("run", "--branches", "fake", "--data", str(ds), "--out", str(tmp_path / "r"), "-q")
        assert res.exit_code == 0, res.output
        assert_one_paragraph_error(alignctl("run", "--branches", "missing", "--data", str(ds)),
                                   "Unknown branch 'missing'", "Plugins that failed to load", "broken-plugin")
        messages: list[str] = []
        get_registry().add_commands(click.Group(), on_error=messages.append)
        assert messages == ["plugin 'broken-plugin' raised in register_commands: RuntimeError: boom in commands"]


# ---------------------------------------------------------------------- reproducibility


def test_same_seed_same_builder_manifest_and_metrics(tmp_path):
    from aligncore.registry import create_builder

    src = make_image_folder(tmp_path / "src", n_real=6, n_fake=0)
    outs = {}
    for tag, seed in (("a", 3), ("b", 3), ("c", 4)):
        create_builder("fake-pairs", seed=seed).build([src], tmp_path / tag, progress=False)
        outs[tag] = tmp_path / tag
    files = lambda d: {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}
    assert files(outs["a"]) == files(outs["b"]), "same seed: byte-identical set (manifest, provenance, images)"
    assert (outs["a"] / "manifest.csv").read_bytes() != (outs["c"] / "manifest.csv").read_bytes()
    assert files(outs["a"])["fake/" + next(p.name for p in (outs["a"] / "fake").iterdir())] != \
        files(outs["c"]).get("fake/" + next(p.name for p in (outs["a"] / "fake").iterdir()))
    metrics = []
    for k in range(2):  # separate stores: nothing is reused, everything is recomputed
        run(make_run_config(branches=["fake"], data=str(outs["a"] / "manifest.csv"), out=str(tmp_path / f"run{k}"),
                            store=str(tmp_path / f"s{k}.sqlite")), progress=False)
        metrics.append((tmp_path / f"run{k}" / "metrics.json").read_bytes())
    assert metrics[0] == metrics[1]
    assert json.loads(metrics[0])["overall"]["n"] == 12
