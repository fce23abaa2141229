"""The wheel: built by ``pip wheel --no-deps .``, it ships the suites, the accelerate configs and the study
recipes (and every subpackage, and no fuzzer), and ``alignctl suites`` / ``study list`` run from an install of it
list them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: what a clean clone gives the build (the wheel is built from a copy, so the checkout gets no build/ folder)
SOURCES = ("pyproject.toml", "README.md", "aligncore", "plugins")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in SOURCES:
        p = REPO / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(p, src / name)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", ".", "-w", str(work / "dist")],
                         cwd=src, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    (whl,) = (work / "dist").glob("aligncore-*.whl")
    return whl


def test_wheel_ships_suites_configs_and_every_subpackage(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = REPO / "aligncore" / "resources"
    for kind in ("suites", "accelerate", "studies"):
        files = sorted(p.name for p in (shipped / kind).glob("*.yaml"))
        assert files, kind
        assert {f"aligncore/resources/{kind}/{f}" for f in files} <= names
    packages = {str(p.parent.relative_to(REPO)).replace(os.sep, "/") for p in (REPO / "aligncore").rglob("__init__.py")}
    missing = {p for p in packages if f"{p}/__init__.py" not in names}
    assert not missing, f"subpackages left out of the wheel (add them to pyproject's packages): {sorted(missing)}"
    assert "aligncore_plugins/__init__.py" in names
    assert not any("fuzz" in n for n in names), "the package must not ship a fuzzer"
    builtin = {p.relative_to(REPO).as_posix() for p in (shipped / "builtin").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert any(n.endswith(".safetensors") for n in builtin) and "aligncore/resources/builtin/detector.json" in builtin
    assert builtin <= names, f"built-in files left out of the wheel: {sorted(builtin - names)}"


def test_alignctl_suites_from_the_installed_wheel(wheel, tmp_path):
    target = tmp_path / "site"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                          str(wheel)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(target)}
    env.pop("ALIGNCORE_SUITES_DIR", None)

    def alignctl(*args):  # run outside the checkout, so only the installed copy can be imported
        return subprocess.run([sys.executable, "-m", "aligncore", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True)

    where = subprocess.run([sys.executable, "-c", "import aligncore; print(aligncore.__file__)"], cwd=tmp_path,
                           env=env, capture_output=True, text=True)
    assert Path(where.stdout.strip()).is_relative_to(target), where
    suites = alignctl("suites", "--paths")
    assert suites.returncode == 0, suites.stderr
    for name in ("in-the-wild", "aigi-now", "cospy", "genimage", "univfd", "shared-smoke"):
        assert f"\n{name} " in "\n" + suites.stdout, suites.stdout
    assert str(target) in suites.stdout
    studies = alignctl("study", "list", "--paths")
    assert studies.returncode == 0 and "alignment-matrix" in studies.stdout and str(target) in studies.stdout, studies
    config = alignctl("configs", "cpu_2proc")
    assert config.returncode == 0 and Path(config.stdout.strip()).is_relative_to(target)
    # an extra folder adds suites beside the shipped ones
    extra = tmp_path / "more"
    extra.mkdir()
    (extra / "mine.yaml").write_text("name: mine\ntitle: My suite\ndatasets:\n  - {name: d, path: d, obtain: made by this test for itself}\n")
    env["ALIGNCORE_SUITES_DIR"] = str(extra)
    both = alignctl("suites").stdout
    assert "mine " in both and "in-the-wild" in both
    # the built-in detector works from the installed wheel alone (its weights are package data)
    from PIL import Image

    Image.new("RGB", (64, 48), (120, 80, 40)).save(tmp_path / "flat.png")
    det = alignctl("detect", "--json", str(tmp_path / "flat.png"))
    assert det.returncode == 0, det.stderr[-2000:]
    import json

    assert json.loads(det.stdout)["verdict"] in ("fake", "real")
