"""A real third-party plugin, installed with pip, found through the ``aligncore`` entry point."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def _pip_target(tmp_path_factory, name: str) -> Path:
    target = tmp_path_factory.mktemp(f"site-{name}")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(FIXTURES / name)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.fail(f"pip could not install the fixture plugin {name}:\n{out.stderr[-2000:]}")
    return target


@pytest.fixture(scope="module")
def example_site(tmp_path_factory):
    return _pip_target(tmp_path_factory, "aligncore-example")


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory):
    return _pip_target(tmp_path_factory, "aligncore-broken")


def _alignctl(args, *paths, env_extra=None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in paths), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "aligncore", *args], capture_output=True, text=True, env=env)


def test_installed_plugin_is_listed(example_site):
    out = _alignctl(["plugins", "--json"], example_site)
    assert out.returncode == 0, out.stderr
    info = {p["name"]: p for p in json.loads(out.stdout)}
    ex = info["example"]
    assert ex["distribution"] == "aligncore-example" and ex["version"] == "0.2.0" and not ex["builtin"]
    assert ex["registers"] == {"branch": ["example"]} and ex["hooks"] == ["register_branches"]
    assert "example" in _alignctl(["branches"], example_site).stdout


def test_run_uses_the_plugin_branch(example_site, image_folder, tmp_path):
    out = _alignctl(["run", "--branches", "fake,example", "--fusion", "or", "--data", str(image_folder),
                     "--out", str(tmp_path / "r"), "-q"], example_site)
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(open(tmp_path / "r" / "predictions.csv")))
    assert len(rows) == 12 and all(r["score_example"] and r["score_fake"] for r in rows)
    assert "branch example: scored 12" in out.stdout


def test_broken_plugin_is_named_and_skipped(example_site, broken_site, image_folder, tmp_path):
    out = _alignctl(["plugins"], example_site, broken_site)
    assert out.returncode == 0, out.stderr
    assert "broken" in out.stdout and "BROKEN" in out.stdout and "broken on purpose" in out.stdout
    assert "example" in out.stdout
    run = _alignctl(["run", "--branches", "example", "--data", str(image_folder), "--out", str(tmp_path / "r"), "-q"],
                    example_site, broken_site)
    assert run.returncode == 0, run.stderr
    # asking for a component of the broken plugin names it
    miss = _alignctl(["run", "--branches", "brokn", "--data", str(image_folder)], example_site, broken_site)
    assert miss.returncode != 0 and "Traceback" not in miss.stderr
    assert "broken on purpose" in miss.stderr and "Unknown branch 'brokn'" in miss.stderr


def test_disable_env_blocks_a_plugin(example_site):
    out = _alignctl(["plugins", "--json"], example_site, env_extra={"ALIGNCORE_DISABLE_PLUGINS": "example"})
    info = {p["name"]: p for p in json.loads(out.stdout)}
    assert info["example"]["blocked"] and "example" not in _alignctl(
        ["branches"], example_site, env_extra={"ALIGNCORE_DISABLE_PLUGINS": "example"}).stdout
