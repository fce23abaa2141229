"""Names are data, not markup (issue 15, section 5): whatever bytes a file or folder name holds, every output
keeps it inert (CSV: no formula, Markdown: no HTML or columns, terminal: no escape sequences, figures: no
mathtext) and every reader gets it back exactly."""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from aligncore.cli import build_cli
from aligncore.rundir import RunDir
from aligncore.text import (
    csv_cell, decode_path, encode_path, escape_text, md_cell, read_csv_cell, terminal_text, unescape_text,
)

#: generator (folder) names and file names a hostile data set can hold (no "/" and no NUL: a file system refuses those)
HOSTILE = [
    "=HYPERLINK(\"http:x\",\"click\")", "+1+1", "-2+3", "@SUM(A1)", "\tTAB", "\rCR", "'quoted", "a|b|c",
    "<script>alert(1)<", "[x](javascript:alert(1))", "$\\foo$", "back\\slash", "new\nline", "\x1b[31mred\x1b[0m",
    "\u202eevil", "**bold**", "`code`",
]
NON_UTF8 = os.fsdecode(b"bad\xff\xfename")  # a name that is not UTF-8 (held as surrogates)


def alignctl(*args: str):
    return CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)


def _image(path: Path, seed: int, smooth: bool) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    a = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
    if smooth:
        a = np.full_like(a, a.mean(dtype=int))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """ROOT/<hostile generator>/{0_real,1_fake}/<hostile file name>.png: two reals and two fakes per name."""
    root = tmp_path_factory.mktemp("names") / "ds"
    k = 0
    for g in HOSTILE + [NON_UTF8]:
        for label, sub in ((0, "0_real"), (1, "1_fake")):
            for j, stem in enumerate((g, "plain")):
                k += 1
                _image(root / g / sub / f"{stem}{j}.png", k, smooth=bool(label))
    return root


@pytest.fixture(scope="module")
def run_dir(hostile, tmp_path_factory):
    d = tmp_path_factory.mktemp("names-run")
    res = alignctl("run", "--branches", "fake", "--data", str(hostile), "--out", str(d / "run"),
                   "--store", str(d / "s.sqlite"), "-q")
    assert res.exit_code == 0, res.output
    return d / "run", res.output


def test_escaping_is_reversible_for_every_code_point():
    samples = HOSTILE + [NON_UTF8, "", "\\x41", "\\\\", "''", "'", "é中文🙂", "".join(chr(c) for c in range(0, 0x250))]
    for s in samples:
        assert unescape_text(escape_text(s)) == s
        assert read_csv_cell(csv_cell(s)) == s
        assert decode_path(encode_path(s)) == s
        assert not csv_cell(s).startswith(("=", "+", "-", "@", "\t", "\r"))
        for out in (escape_text(s), md_cell(s), terminal_text(s)):
            assert not re.search(r"[\x00-\x1f\x7f-\x9f\u202e]", out), repr(out)
        assert "<" not in md_cell(s) and "|" not in md_cell(s).replace("\\|", "")
    assert not encode_path("-x").startswith("-") and encode_path("/d/a b.png") == "/d/a%20b.png"



def test_the_fast_paths_of_escaping_agree_with_the_character_scan():
    """escape_text and encode_path return a plain name without scanning it character by character; on every
    ASCII character, alone and inside a name, they give what the per-character rules give."""
    import unicodedata

    def scan_escape(s):
        return "".join(f"\\x{ord(c):02x}" if unicodedata.category(c) == "Cc" else "\\\\" if c == "\\" else c for c in s)

    def scan_encode(s):
        safe = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/._~")
        return "".join(chr(b) if b in safe else f"%{b:02X}" for b in os.fsencode(s))

    for c in map(chr, range(128)):
        for s in (c, f"/data/1_fake/a{c}b.png"):
            assert escape_text(s) == scan_escape(s), repr(s)
            assert encode_path(s) == scan_encode(s), repr(s)
    assert escape_text("/data/0_real/img 001.png") == "/data/0_real/img 001.png"
    assert encode_path("/data/0_real/img_001.png") == "/data/0_real/img_001.png"

def _cells(path: Path) -> list[list[str]]:
    raw = path.read_bytes()
    text = raw.decode("utf-8")  # strict: every output is valid UTF-8
    assert "\r" not in text, f"{path} holds a raw carriage return"
    return list(csv.reader(io.StringIO(text, newline=""), strict=True))


def _assert_spreadsheet_safe(path: Path) -> None:
    rows = _cells(path)
    width = len(rows[0])
    for row in rows:
        assert len(row) == width, f"{path}: a row with {len(row)} cells, not {width}: {row}"
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), f"{path}: formula cell {cell!r}"


def test_every_name_round_trips_through_the_run_folder(hostile, run_dir):
    run, _ = run_dir
    for name in ("predictions.csv", "skipped.csv"):
        _assert_spreadsheet_safe(run / name)
    rs = RunDir.open(run).scores()
    on_disk = sorted(str(p) for p in hostile.rglob("*.png"))
    assert sorted(rs.paths) == on_disk, "every path, whatever its bytes, reads back exactly"
    assert set(rs.generators) == set(HOSTILE + [NON_UTF8])
    with open(run / "predictions.csv", newline="", encoding="utf-8") as f:
        lossless = [decode_path(r["path_encoded"]) for r in csv.DictReader(f)]
    assert sorted(lossless) == on_disk  # the column for programs: plain percent-encoding, no aligncore needed


def test_fuse_ablate_and_report_read_the_names_back(run_dir, tmp_path):
    run, _ = run_dir
    res = alignctl("fuse", str(run), "--fusion", "max")
    assert res.exit_code == 0, res.output
    assert RunDir.open(run / "fusions" / "max").scores().paths == RunDir.open(run).scores().paths
    res = alignctl("ablate", str(run), "--fusions", "or,max")
    assert res.exit_code == 0, res.output
    res = alignctl("report", str(run))  # a generator called $\foo$ is drawn as text, not mathtext
    assert res.exit_code == 0, res.output
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "<script>alert" not in html
    _assert_spreadsheet_safe(run / "ablation" / "ablation.csv")
    md = (run / "ablation" / "ablation.md").read_text(encoding="utf-8")
    _assert_markdown_inert(md)
    groups = {read_csv_cell(r[2]) for r in _cells(run / "ablation" / "ablation.csv")[1:]}
    assert set(HOSTILE + [NON_UTF8]) <= groups, "ablation.csv gives every generator name back exactly"
    from aligncore.ablation import read_ablation

    rows, _ = read_ablation(run / "ablation")  # what report shows: the names, not their spreadsheet spelling
    assert {r["group"] for r in rows} == groups and {r["dataset"] for r in rows} == {"ds"}


def _assert_markdown_inert(md: str) -> None:
    assert "<script" not in md.lower() and "<" not in md.split("\n", 1)[-1]
    assert "](" not in md.replace("\\](", "")  # no link
    table = [line for line in md.splitlines() if line.startswith("|")]
    widths = {len(re.split(r"(?<!\\)\|", line)) for line in table}
    assert len(widths) == 1, f"a name shifted the table's columns: {sorted(widths)}"


def test_markdown_and_csv_leaderboards_are_inert(run_dir, tmp_path):
    run, _ = run_dir
    store = run.parent / "s.sqlite"
    res = alignctl("fuse", str(run), "--fusion", "max", "--fusion-option", "threshold=0.25")
    assert res.exit_code == 0, res.output
    for fmt in ("md", "csv"):
        out = tmp_path / f"board.{fmt}"
        res = alignctl("leaderboard", "--store", str(store), "--format", fmt, "--out", str(out))
        assert res.exit_code == 0, res.output
        if fmt == "md":
            _assert_markdown_inert(out.read_text(encoding="utf-8"))
        else:
            _assert_spreadsheet_safe(out)


def test_a_hostile_dataset_name_reaches_no_output_raw(hostile, tmp_path):
    """The dataset's own folder name lands in leaderboard cells, the report's setup table and messages."""
    ds = tmp_path / "=HYPERLINK(1)<script>|x|\x1b[2J"
    shutil.copytree(hostile / HOSTILE[0], ds)
    store = tmp_path / "s.sqlite"
    res = alignctl("run", "--branches", "fake", "--data", str(ds), "--out", str(tmp_path / "r"), "--store", str(store),
                   "--suite", "@suite<script>|", "-q")  # -q: no progress bar (its \r is ours, not a name's)
    assert res.exit_code == 0, res.output
    assert "\x1b" not in res.output and "\r" not in res.output
    for fmt in ("md", "csv", "table"):
        res = alignctl("leaderboard", "--store", str(store), "--format", fmt)
        assert res.exit_code == 0 and "\x1b" not in res.output, res.output
        if fmt == "md":
            _assert_markdown_inert(res.output)
        if fmt == "csv":
            cells = [c for row in csv.reader(io.StringIO(res.output)) for c in row]
            assert not any(c.startswith(("=", "+", "-", "@")) for c in cells), cells
    res = alignctl("report", str(tmp_path / "r"))
    assert res.exit_code == 0, res.output
    assert "<script>" not in (tmp_path / "r" / "report.html").read_text(encoding="utf-8")


def test_terminal_output_never_carries_escape_sequences(hostile, run_dir, tmp_path):
    _, output = run_dir
    broken = hostile.parent / "broken"
    name = "evil\x1b]0;pwned\x07\x1b[2J\r.png"
    (broken / "1_fake").mkdir(parents=True, exist_ok=True)
    (broken / "0_real").mkdir(parents=True, exist_ok=True)
    _image(broken / "0_real" / "ok.png", 1, False)
    _image(broken / "1_fake" / "ok.png", 2, True)
    (broken / "1_fake" / name).write_bytes(b"not an image")
    res = alignctl("run", "--branches", "fake", "--data", str(broken), "--out", str(tmp_path / "r"),
                   "--store", str(tmp_path / "s.sqlite"), "-q")
    assert res.exit_code == 0, res.output
    assert "evil\\x1b]0;pwned\\x07\\x1b[2J\\x0d.png" in res.output  # listed as skipped, escaped
    for out in (res.output, output):
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", out), repr(out)
    res = alignctl("run", "--branches", "fake", "--data", str(tmp_path / "no\x1b[2Jsuch"))
    assert res.exit_code != 0 and "\x1b" not in res.output and "no\\x1b[2Jsuch" in res.output


@pytest.mark.parametrize("builder", ["fake-pairs", "tiny-ae"])
def test_builds_from_hostile_source_names_give_readable_sets(tmp_path, builder):
    """Source names reach a set's output names and manifest columns: a non-UTF-8 or CR name must neither crash
    the build nor make its manifest unreadable; distinct sources keep distinct outputs."""
    src = tmp_path / "src"
    for k, name in enumerate([NON_UTF8, "a\rb", "new\nline", "ok", "back\\slash", "=cmd"]):
        _image(src / f"{name}.png", k, smooth=False)
    opts = ["-o", "preset=tiny"] if builder == "tiny-ae" else []
    res = alignctl("build", builder, str(src), "--out", str(tmp_path / "set"), "-q", *opts)
    assert res.exit_code == 0, res.output
    from aligncore.data import load_dataset

    records = load_dataset(tmp_path / "set").records
    assert len(records) == 12 and len({r.path for r in records}) == 12
    assert all(Path(r.path).is_file() for r in records)
    res = alignctl("run", "--branches", "fake", "--data", str(tmp_path / "set"), "--out", str(tmp_path / "r"),
                   "--store", str(tmp_path / "s.sqlite"), "-q")
    assert res.exit_code == 0, res.output


# ---------------------------------------------------------------------- outputs other branches added


def _numeric_or_safe(path: Path, numeric: tuple[str, ...]) -> list[dict]:
    """Cells of columns starting with one of ``numeric`` are numbers (a negative one starts with '-', and is a
    number to a spreadsheet too); every other cell is never read as a formula."""
    rows = _cells(path)
    head = rows[0]
    for row in rows[1:]:
        assert len(row) == len(head), f"{path}: a row with {len(row)} cells, not {len(head)}"
        for col, cell in zip(head, row):
            if col.startswith(numeric):
                assert cell == "" or float(cell) == float(cell), (col, cell)
            else:
                assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), f"{path}: formula cell {col}={cell!r}"
    return [dict(zip(head, r)) for r in rows[1:]]


def test_logit_columns_sit_beside_escaped_names(hostile, tmp_path):
    """trust's logit_<branch> columns are numbers (negative ones included); the names around them stay inert."""
    from aligncore.testing import registered_plugin
    from logit_branch import LogitPlugin

    ds = tmp_path / "ds"
    for g in (HOSTILE[0], "a|b|c", NON_UTF8):
        shutil.copytree(hostile / g, ds / g)
    with registered_plugin(LogitPlugin(), "names-logit-plugin"):
        res = alignctl("run", "--branches", "logit-fake,fake", "--data", str(ds), "--out", str(tmp_path / "r"),
                       "--store", str(tmp_path / "s.sqlite"), "-q")
        assert res.exit_code == 0, res.output
        rows = _numeric_or_safe(tmp_path / "r" / "predictions.csv", ("score_", "logit_", "fused_score"))
        assert "logit_logit-fake" in rows[0] and "logit_fake" not in rows[0]
        assert any(r["logit_logit-fake"].startswith("-") for r in rows), "the check above met a negative logit"
        assert sorted(decode_path(r["path_encoded"]) for r in rows) == sorted(str(p) for p in ds.rglob("*.png"))
        res = alignctl("fuse", str(tmp_path / "r"), "--fusion", "max")
        assert res.exit_code == 0, res.output
        _numeric_or_safe(tmp_path / "r" / "fusions" / "max" / "predictions.csv", ("score_", "logit_", "fused_score"))


def _note_rows(name: str) -> list[dict]:
    return [{"dataset": name, "scope": "dataset", "group": name, "method": "fusion:or", "n": 4, "n_real": 2,
             "n_fake": 2, "auc": 0.5, "note": "target unreachable: ties"}]


@pytest.mark.parametrize("name", ["<script>alert(1)</script>", "a|b|c", "\x1b[2J=cmd", "# heading", NON_UTF8])
def test_ablation_notes_keep_a_dataset_name_inert(name):
    """A note (a degenerate fit, an unreachable FPR target) names its dataset: a folder name of anyone's."""
    from aligncore.ablation import notes, to_markdown, to_text
    from aligncore.text import html_text

    md = to_markdown(_note_rows(name), 0.05, 0.3)
    _assert_markdown_inert(md)
    assert "<script" not in md and "\x1b" not in md
    (item,) = [line for line in md.splitlines() if line.startswith("- ")]
    assert item.startswith("- fusion:or on "), item  # the dataset never starts a list item (no heading, no list)
    text = to_text(_note_rows(name))
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", text), repr(text)
    (li,) = notes(_note_rows(name), escape=html_text)
    assert "<" not in li and "\x1b" not in li


def test_ablation_state_files_of_two_datasets_never_share_a_name():
    from aligncore.ablation import state_file_part

    names = ["a b", "a_b", "a/b", "a\x1bb", NON_UTF8, "x" * 300, "x" * 301, "plain-name_1.0"]
    parts = [state_file_part(n) for n in names]
    assert len(set(parts)) == len(parts), parts
    assert state_file_part("plain-name_1.0") == "plain-name_1.0"  # a plain name keeps its spelling
    assert all(re.fullmatch(r"[A-Za-z0-9._-]{1,80}", p) for p in parts), parts


def test_study_tables_keep_names_inert():
    """Study tables put generator and dataset names (data folders) and study-file text into tables.md/csv."""
    from types import SimpleNamespace

    from aligncore.study.report import StudyReport, build_table, to_csv, to_markdown
    from aligncore.study.spec import TableSpec

    names = HOSTILE + [NON_UTF8]
    rows = [{"group": g, "dataset": "<b>ds</b>|x", "method": "fusion:or", "auc": 0.5 + i / 100, "_id": f"c{i}",
             "seed": 0, "verdict": "=cmd"} for i, g in enumerate(names)]
    views = (build_table(TableSpec(title="<script>t</script>", source="fusions", rows="group", cols="dataset",
                                   metric="auc"), rows)
             + build_table(TableSpec(title="words", source="fusions", rows="group", cols="metric",
                                     metrics=["verdict"]), rows))
    plan = {"name": "s<script>", "title": "|t|", "scale": "full", "seeds": [0], "cells": [],
            "description": "<img src=x onerror=alert(1)>", "report": {"note": "[x](javascript:alert(1))"}}
    rep = StudyReport(SimpleNamespace(plan=plan), views, [])
    md = to_markdown(rep)
    assert "<" not in md and "\x1b" not in md and "](" not in md.replace("\\](", "")
    for table in md.split("\n## ")[1:]:
        widths = {len(re.split(r"(?<!\\)\|", line)) for line in table.splitlines() if line.startswith("|")}
        assert len(widths) == 1, f"a name shifted the table's columns: {sorted(widths)}"
    text = to_csv(rep)
    assert "\r" not in text
    cells = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    for row in cells[1:]:
        for cell in row[:5] + row[8:9]:  # table, split, row, col, metric, value: text
            assert not cell.startswith(("=", "+", "-", "@", "\t")), cell
    assert {read_csv_cell(r[2]) for r in cells[1:]} == set(names)  # lossless
