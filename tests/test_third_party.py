"""The plugin kit: the example distribution installed with pip, plugin modules loaded from the import path,
broken plugins, the documentation's examples, and ``alignctl plugins new``."""

from __future__ import annotations

import ast
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
EXAMPLE = REPO / "examples" / "aligncore-example"
DOCS = REPO / "docs" / "plugins.md"


def _pip_target(tmp_path_factory, source: Path) -> Path:
    """Install a copy of ``source`` (so the build leaves nothing in the checkout) into a --target folder."""
    work = tmp_path_factory.mktemp(f"site-{source.name}")
    src = work / "src"
    shutil.copytree(source, src, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    target = work / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(src)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.fail(f"pip could not install {source.name}:\n{out.stderr[-2000:]}")
    return target


@pytest.fixture(scope="module")
def example_site(tmp_path_factory):
    return _pip_target(tmp_path_factory, EXAMPLE)


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory):
    return _pip_target(tmp_path_factory, FIXTURES / "aligncore-broken")


def _alignctl(args, *paths, env_extra=None, cwd=None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in paths), **(env_extra or {})}
    env.pop("ALIGNCORE_PLUGINS", None) if "ALIGNCORE_PLUGINS" not in (env_extra or {}) else None
    return subprocess.run([sys.executable, "-m", "aligncore", *args], capture_output=True, text=True, env=env, cwd=cwd)


# ---------------------------------------------------------------------- the example distribution


def test_installed_plugin_is_listed_with_all_five_hooks(example_site):
    out = _alignctl(["plugins", "--json"], example_site)
    assert out.returncode == 0, out.stderr
    info = {p["name"]: p for p in json.loads(out.stdout)}
    ex = info["example"]
    assert ex["distribution"] == "aligncore-example" and ex["version"] == "0.3.0" and not ex["builtin"]
    assert ex["source"] == "entry point"
    assert ex["registers"] == {"branch": ["example"], "builder": ["posterize-pairs"], "fusion": ["median"],
                               "audit": ["class-balance"]}
    assert ex["hooks"] == ["register_audits", "register_branches", "register_commands", "register_fusions",
                           "register_supervision_builders"]
    assert "example " in _alignctl(["branches"], example_site).stdout
    assert "median " in _alignctl(["fusions"], example_site).stdout
    assert "posterize-pairs " in _alignctl(["builders"], example_site).stdout
    assert "Score DATA and print" in _alignctl(["example-summary", "--help"], example_site).stdout


def test_run_uses_the_plugin_branch_and_fusion(example_site, image_folder, tmp_path):
    out = _alignctl(["run", "--branches", "fake,example", "--fusion", "median", "--data", str(image_folder),
                     "--out", str(tmp_path / "r"), "-q"], example_site)
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(open(tmp_path / "r" / "predictions.csv")))
    assert len(rows) == 12 and all(r["score_example"] and r["score_fake"] for r in rows)
    for r in rows:  # the median of two scores is their mean
        assert float(r["fused_score"]) == pytest.approx((float(r["score_example"]) + float(r["score_fake"])) / 2)
    assert "branch example: scored 12" in out.stdout


@pytest.mark.slow
def test_the_example_distribution_passes_its_own_tests(example_site, tmp_path):
    tests = tmp_path / "tests"
    shutil.copytree(EXAMPLE / "tests", tests)
    env = {**os.environ, "PYTHONPATH": str(example_site), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)], cwd=tmp_path,
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "7 passed" in out.stdout


def test_the_docs_show_the_example_files_verbatim_and_every_hook():
    text = DOCS.read_text(encoding="utf-8")
    blocks = re.findall(r"```(?:python|toml)\n# examples/aligncore-example/(\S+)\n(.*?)```\n", text, flags=re.S)
    shown = {rel: body for rel, body in blocks}
    files = sorted(p.relative_to(EXAMPLE).as_posix() for p in EXAMPLE.rglob("*")
                   if p.is_file() and p.suffix in (".py", ".toml") and "egg-info" not in p.as_posix()
                   and "__pycache__" not in p.parts)
    assert sorted(shown) == files, "docs/plugins.md must show every file of the example distribution"
    for rel, body in shown.items():
        assert body == (EXAMPLE / rel).read_text(encoding="utf-8"), f"docs/plugins.md is out of date for {rel}"
    specs = [n.name for n in ast.parse((REPO / "aligncore" / "hookspecs.py").read_text()).body
             if isinstance(n, ast.FunctionDef)]
    assert len(specs) == 5
    example_init = (EXAMPLE / "aligncore_example" / "__init__.py").read_text()
    for hook in specs:  # every hook is documented and implemented by the tested example
        assert f"### {hook}" in text and f"def {hook}(" in example_init, hook


# ---------------------------------------------------------------------- broken and blocked plugins


def test_a_broken_plugin_is_named_everywhere_and_plugins_exits_non_zero(example_site, broken_site, image_folder, tmp_path):
    out = _alignctl(["plugins"], example_site, broken_site)
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "broken" in out.stdout and "BROKEN" in out.stdout and "broken on purpose" in out.stdout
    assert "example" in out.stdout and "1 plugin(s) failed to load: broken" in out.stderr
    assert "Traceback" not in out.stderr
    for listing in ("branches", "fusions", "builders"):
        got = _alignctl([listing], example_site, broken_site)
        assert got.returncode == 0 and "warning: plugin 'broken' is broken" in got.stderr, (listing, got.stderr)
    assert _alignctl(["plugins", "--json"], example_site, broken_site).returncode == 1
    assert _alignctl(["plugins"], example_site).returncode == 0
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


# ---------------------------------------------------------------------- modules from the import path


MYMOD = '''
import click
from aligncore import Branch, hookimpl


class Mine(Branch):
    name = "mine"
    help = "A branch from a module that is not installed."

    def preprocess(self, image):
        return 0.25

    def score_batch(self, batch):
        return [0.25 for _ in batch]


@hookimpl
def register_branches(register):
    register(Mine)


@hookimpl
def register_commands(cli):
    @cli.command("mine-hello")
    def hello():
        click.echo("hello from mymod")
'''


def test_plugin_modules_load_from_the_import_path_without_installing(tmp_path, image_folder):
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "mymod.py").write_text(MYMOD)
    (tmp_path / "mods" / "badmod.py").write_text("raise ImportError('badmod cannot start')\n")
    mods = tmp_path / "mods"

    out = _alignctl(["branches"], mods, env_extra={"ALIGNCORE_PLUGINS": "mymod"})
    assert out.returncode == 0 and re.search(r"^mine +A branch from a module that is not installed\.  \(mymod\)$",
                                             out.stdout, re.M), out.stdout + out.stderr
    assert "mine" not in _alignctl(["branches"], mods).stdout  # not installed: only loaded when named
    listed = json.loads(_alignctl(["plugins", "--json"], mods, env_extra={"ALIGNCORE_PLUGINS": "mymod"}).stdout)
    assert [(p["name"], p["source"], p["registers"]) for p in listed] == [
        ("mymod", "ALIGNCORE_PLUGINS", {"branch": ["mine"]})]
    # -p loads it for one command, and its commands are there for that command
    out = _alignctl(["-p", "mymod", "mine-hello"], mods)
    assert out.returncode == 0 and "hello from mymod" in out.stdout, out.stderr
    run = _alignctl(["-p", "mymod", "run", "--branches", "mine", "--data", str(image_folder), "--out",
                     str(tmp_path / "r"), "-q"], mods)
    assert run.returncode == 0 and "branch mine: scored 12" in run.stdout, run.stderr
    # asked for by -p and missing or broken: the command stops with the reason
    missing = _alignctl(["-p", "nosuchmod", "branches"], mods)
    assert missing.returncode == 2 and "nosuchmod" in missing.stderr and "PYTHONPATH" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad = _alignctl(["-p", "badmod", "branches"], mods)
    assert bad.returncode == 2 and "badmod cannot start" in bad.stderr
    # named in the environment and broken: reported like a broken installed plugin
    env_bad = _alignctl(["plugins"], mods, env_extra={"ALIGNCORE_PLUGINS": "mymod,badmod"})
    assert env_bad.returncode == 1 and "badmod cannot start" in env_bad.stdout and "mymod" in env_bad.stdout
    assert "warning: plugin 'badmod' is broken" in _alignctl(["fusions"], mods,
                                                             env_extra={"ALIGNCORE_PLUGINS": "badmod"}).stderr


# ---------------------------------------------------------------------- alignctl plugins new


def _dev_venv(tmp_path: Path) -> Path:
    """A throwaway virtual environment that sees this environment's packages (aligncore included)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    py = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = [p for p in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}]
    lines = "".join(f"import site; site.addsitedir({p!r})\n" for p in ours)
    Path(site, "aligncore-dev.pth").write_text(lines)
    return py


@pytest.mark.slow
def test_plugins_new_writes_a_distribution_whose_tests_pass_after_pip_install_e(tmp_path):
    from click.testing import CliRunner

    from aligncore.cli import build_cli

    r = CliRunner().invoke(build_cli(), ["plugins", "new", "demo-plugin", "--out", str(tmp_path / "aligncore-demo-plugin")])
    assert r.exit_code == 0, r.output
    dist = tmp_path / "aligncore-demo-plugin"
    assert sorted(p.relative_to(dist).as_posix() for p in dist.rglob("*") if p.is_file()) == [
        "README.md", "aligncore_demo_plugin/__init__.py", "pyproject.toml", "tests/test_aligncore_demo_plugin.py"]
    assert 'demo-plugin = "aligncore_demo_plugin"' in (dist / "pyproject.toml").read_text()
    again = CliRunner().invoke(build_cli(), ["plugins", "new", "demo-plugin", "--out", str(dist)])
    assert again.exit_code != 0 and "not an empty folder" in again.output
    bad = CliRunner().invoke(build_cli(), ["plugins", "new", "Demo_Plugin", "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "lower-case letters" in bad.output

    py = _dev_venv(tmp_path)
    inst = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--quiet", "--no-deps", "-e",
                           str(dist)], capture_output=True, text=True)
    assert inst.returncode == 0, inst.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ALIGNCORE_PLUGINS")}
    env["OMP_NUM_THREADS"] = "1"
    tests = subprocess.run([str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=dist, capture_output=True,
                           text=True, env=env)
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert "3 passed" in tests.stdout
    listed = subprocess.run([str(py), "-m", "aligncore", "plugins"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert listed.returncode == 0 and "aligncore-demo-plugin 0.1.0  [ok]  branch: demo-plugin" in listed.stdout
