"""Benchmark suites (alignctl bench / suites) and the leaderboard."""

from __future__ import annotations

import csv
import io
import json

import pytest
import yaml
from click.testing import CliRunner

from aligncore.cli import build_cli
from aligncore.suites import list_suites, load_suite


def test_shipped_suites_parse_and_describe_how_to_obtain():
    names = {p.stem for p in list_suites()}
    assert {"in-the-wild", "aigi-now", "cospy", "genimage", "univfd", "shared-smoke"} <= names
    wild = load_suite("in-the-wild")
    assert {d.name for d in wild.datasets} >= {"Chameleon", "WildRF", "BFree-Online", "AIGIBench-SocialRF", "AIGIBench-CommunityAI"}
    aigi = load_suite("aigi-now")
    assert {d.name for d in aigi.datasets} == {"AIGI-Now-semantic", "AIGI-Now-pixel"}
    for p in list_suites():
        for d in load_suite(p).datasets:
            assert len(d.obtain) > 20, f"{p.stem}/{d.name} says too little about how to obtain it"


def test_bench_all_absent_exits_0_with_one_skip_line_each(tmp_path):
    r = CliRunner().invoke(build_cli(), ["bench", "in-the-wild", "--branches", "fake", "--root", str(tmp_path)])
    assert r.exit_code == 0, r.output
    skips = [l for l in r.output.splitlines() if l.startswith("skip ")]
    assert len(skips) == 5
    assert all("not found at" in l and "To obtain:" in l for l in skips)
    assert "ran " not in r.output


def test_bench_without_root_skips(monkeypatch):
    monkeypatch.delenv("ALIGNCORE_BENCH_ROOT", raising=False)
    r = CliRunner().invoke(build_cli(), ["bench", "genimage", "--branches", "fake"])
    assert r.exit_code == 0
    assert sum(l.startswith("skip ") for l in r.output.splitlines()) == 8
    assert "no root folder" in r.output


def _suite_file(tmp_path, datasets):
    p = tmp_path / "mini.yaml"
    p.write_text(yaml.safe_dump({"name": "mini", "title": "t", "datasets": [
        {"name": n, "path": path, "obtain": "made by the test with make_image_folder"} for n, path in datasets]}))
    return p


def test_bench_present_dataset_writes_leaderboard_row(tmp_path):
    from aligncore.testing import make_image_folder

    root = tmp_path / "root"
    make_image_folder(root / "setA", n_real=5, n_fake=5, generators=("g1", "g2"))
    make_image_folder(root / "setB", n_real=4, n_fake=4, seed=1)
    suite = _suite_file(tmp_path, [("setA", "setA"), ("setB", "setB"), ("missing", "nope")])
    cli = build_cli()
    r = CliRunner().invoke(cli, ["bench", str(suite), "--root", str(root), "--branches", "fake", "-q"])
    assert r.exit_code == 0, r.output
    assert sum(l.startswith("ran  ") for l in r.output.splitlines()) == 2
    assert sum(l.startswith("skip ") for l in r.output.splitlines()) == 1
    from aligncore.leaderboard import stored_rows
    from aligncore.store import ScoreStore

    with ScoreStore() as st:
        rows = stored_rows(st, "mini")
    assert {r_["dataset"] for r_ in rows} == {"setA", "setB"}
    # second configuration: max fusion, so the leaderboard has two rows
    r = CliRunner().invoke(cli, ["bench", str(suite), "--root", str(root), "--branches", "fake", "--fusion", "max",
                                 "--fusion-option", "threshold=0.99", "-q"])
    assert r.exit_code == 0, r.output
    out = CliRunner().invoke(cli, ["leaderboard", "--suite", "mini", "--format", "json"])
    data = json.loads(out.output)
    assert data["datasets"] == ["setA", "setB"]
    assert len(data["rows"]) == 2
    for row in data["rows"]:
        assert row["average"] == pytest.approx((row["setA"] + row["setB"]) / 2)
        assert len(row["run_ids"].split()) == 2
    avgs = [row["average"] for row in data["rows"]]
    assert avgs == sorted(avgs, reverse=True)
    asc = json.loads(CliRunner().invoke(cli, ["leaderboard", "--suite", "mini", "--format", "json", "--sort", "setA", "--ascending"]).output)
    assert [r_["setA"] for r_ in asc["rows"]] == sorted(r_["setA"] for r_ in asc["rows"])
    csv_out = CliRunner().invoke(cli, ["leaderboard", "--suite", "mini", "--format", "csv", "--metric", "auc"]).output
    header = next(csv.reader(io.StringIO(csv_out)))
    assert header == ["branches", "weights", "fusion", "perturb", "setA", "setB", "average", "run_ids"]
    md = CliRunner().invoke(cli, ["leaderboard", "--suite", "mini", "--format", "md"]).output
    assert md.count("| fake#") == 2 and "| max(threshold=0.99) |" in md and "| or |" in md
    html_out = CliRunner().invoke(cli, ["leaderboard", "--suite", "mini", "--format", "html"]).output
    assert html_out.startswith("<!DOCTYPE html>") and html_out.count("<tr>") == 3
    bad = CliRunner().invoke(cli, ["leaderboard", "--sort", "nonsense"])
    assert bad.exit_code != 0 and "--sort" in bad.output


def test_shared_smoke_suite_runs_on_the_shared_data(shared_data, monkeypatch, tmp_path):
    # only the dataset lookup here (a full run of 642 images belongs in benchmarks/)
    from aligncore.suites import locate, resolve_root

    monkeypatch.setenv("ALIGNCORE_SHARED", str(shared_data.parent))
    s = load_suite("shared-smoke")
    root, origin = resolve_root(s, None)
    assert origin == "$ALIGNCORE_SHARED"
    (loc,) = locate(s, root)
    assert loc.path is not None, loc.skip_reason
