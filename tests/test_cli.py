"""The command line: help, version, listings, errors as one paragraph."""

from __future__ import annotations

import json

from click.testing import CliRunner

from aligncore import __version__
from aligncore.cli import build_cli


def invoke(*args):
    return CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)


def test_version_and_help():
    assert __version__ in invoke("--version").output
    out = invoke("--help").output
    for cmd in ("run", "fuse", "plugins", "branches", "fusions", "builders", "train", "build"):
        assert cmd in out


def test_listings():
    assert "fake" in invoke("branches").output
    fus = json.loads(invoke("fusions", "--json").output)
    assert {"or", "weighted"} <= {f["name"] for f in fus}
    assert all(f["options"] for f in fus)
    builtins = json.loads(invoke("plugins", "--all", "--json").output)
    assert any(p["name"] == "fusions" and p["registers"]["fusion"] for p in builtins)


def test_user_errors_are_one_paragraph(image_folder, tmp_path):
    r = invoke("run", "--branches", "fake", "--fusion", "ore", "--data", str(image_folder))
    assert r.exit_code == 1 and "Unknown fusion 'ore'" in r.output and "Did you mean 'or'" in r.output
    assert "Traceback" not in r.output
    bad = tmp_path / "run.yaml"
    bad.write_text("branches: [fake]\ndata: x\nbatchsize: 3\n")
    r = invoke("run", "--config", str(bad))
    assert r.exit_code == 1 and "batchsize" in r.output and "Extra inputs" in r.output
    r = invoke("run", "--branches", "fake", "--data", str(tmp_path / "nowhere"))
    assert r.exit_code == 1 and "no such file or folder" in r.output
    r = invoke("run", "--branches", "fake", "--data", str(image_folder), "-o", "fake.wobble=1")
    assert r.exit_code == 1 and "wobble" in r.output


def test_config_file_and_flags_merge(image_folder, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"branches: [fake]\nfusion: weighted\ndata: {image_folder}\nbranch_options:\n  fake: {{scale: 2.0}}\n")
    r = invoke("run", "--config", str(cfg), "--out", str(tmp_path / "r"), "-q", "--fusion", "or")
    assert r.exit_code == 0, r.output
    import yaml

    resolved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert resolved["fusion"] == "or" and resolved["branch_configs"]["fake"]["scale"] == 2.0
