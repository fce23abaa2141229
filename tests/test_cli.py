"""The command line: help, version, listings, errors as one paragraph."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from aligncore import __version__, hookimpl
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


def _alignctl(*args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "aligncore", *args], capture_output=True, text=True, env=env)


def test_core_commands_survive_disabling_every_plugin(tmp_path):
    """Studies are the core's: with every built-in plugin blocked, leaderboard and friends still answer."""
    from aligncore.cli import CORE_COMMANDS
    from aligncore.plugins import BUILTIN_PLUGINS

    env = {"ALIGNCORE_DISABLE_PLUGINS": ",".join(BUILTIN_PLUGINS), "ALIGNCORE_STORE": str(tmp_path / "s.sqlite")}
    board = _alignctl("leaderboard", env_extra=env)
    assert board.returncode == 0, board.stderr
    assert "The leaderboard is empty" in board.stderr and "warning" not in board.stderr
    helped = _alignctl("--help", env_extra=env)
    listed = {line.split()[0] for line in helped.stdout.split("Commands:")[1].splitlines() if line.strip()}
    core = {getattr(importlib.import_module(f"aligncore.commands.{m}"), a, None) for m, a in CORE_COMMANDS
            if importlib.util.find_spec(f"aligncore.commands.{m}")}
    assert {c.name for c in core if c is not None} <= listed
    assert "in-the-wild" in _alignctl("suites", env_extra=env).stdout
    blocked = json.loads(_alignctl("plugins", "--all", "--json", env_extra=env).stdout)
    assert blocked and all(p["blocked"] for p in blocked)


def test_a_plugin_cannot_replace_a_core_command(capsys):
    import click

    from aligncore import cli as cli_module
    from aligncore.plugins import get_plugin_manager, reset_plugins

    class Hijacker:
        @hookimpl
        def register_commands(self, cli):
            @cli.command("leaderboard")
            def fake_board():
                click.echo("hijacked")

    core_board = cli_module.cli.commands["leaderboard"]
    pm = get_plugin_manager()
    pm.register(Hijacker(), name="hijacker")
    try:
        cli_module._commands_added = False
        group = build_cli()
        assert "replaced the core command 'leaderboard'" in capsys.readouterr().err
        assert "hijacked" not in CliRunner().invoke(group, ["leaderboard"]).output
        assert cli_module.cli.commands["leaderboard"] is core_board
    finally:
        pm.unregister(name="hijacker")
        reset_plugins()


def test_scoring_options_give_a_plugin_command_one_scoring_object():
    import click

    from aligncore.cli_options import Scoring, scoring_options

    seen = {}

    @click.command()
    @click.argument("data")
    @scoring_options
    @click.option("--extra", default=1)
    def study(data, extra, scoring):
        seen.update(data=data, extra=extra, scoring=scoring)

    r = CliRunner().invoke(study, ["D", "--branches", "a,b", "-o", "a.k=2", "--checkpoint", "b=ck", "--extra", "3",
                                   "--fusion-option", "threshold=0.4", "-q"])
    assert r.exit_code == 0, r.output
    sc = seen["scoring"]
    assert isinstance(sc, Scoring) and seen["data"] == "D" and seen["extra"] == 3
    assert sc.run_options() == {"branches": ["a", "b"], "fusion": "or", "branch_options": {"a": {"k": 2}, "b": {"checkpoint": "ck"}},
                                "fusion_options": {"threshold": 0.4}}
    assert sc.quiet and not sc.progress
    r = CliRunner().invoke(study, ["D", "--branches", "a,b", "-o", "k=2"])
    assert r.exit_code == 2 and "say which branch" in r.output
    r = CliRunner().invoke(study, ["D", "--branches", "a,b", "--checkpoint", "ck"])
    assert r.exit_code == 2 and "BRANCH=DIR" in r.output
    assert CliRunner().invoke(study, ["D"]).exit_code == 2  # --branches is required unless the command says otherwise


def test_configs_lists_and_locates_the_shipped_accelerate_configs():
    out = invoke("configs").output
    assert "cpu_2proc" in out and "zero3_2node_16gpu" in out
    path = invoke("configs", "ddp_8gpu").output.strip()
    assert path.endswith("ddp_8gpu.yaml") and "distributed_type" in open(path).read()
    r = CliRunner().invoke(build_cli(), ["configs", "ddp8gpu"])
    assert r.exit_code == 1 and "Did you mean 'ddp_8gpu'" in r.output


def _readme_overview_commands() -> list[list[str]]:
    """Command paths in the README's command-line overview (``alignctl A ... | B ...`` lines give A and B)."""
    import click

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Command line", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    group, paths = build_cli(), []
    for line in block.splitlines():
        if not line.startswith("alignctl "):
            continue
        for k, alternative in enumerate(line[len("alignctl "):].split(" | ")):
            tokens, cmd, path = alternative.split(), group, []
            if tokens[0].startswith("-"):  # an option of the group or of the previous command
                continue
            for tok in tokens:
                if isinstance(cmd, click.Group) and tok in cmd.commands:
                    cmd, path = cmd.commands[tok], [*path, tok]
                else:
                    break
            assert path or k > 0, f"README names an unknown command: alignctl {alternative}"
            if path:
                paths.append(path)
    return paths


def test_every_readme_overview_command_answers_help():
    paths = _readme_overview_commands()
    assert ["leaderboard"] in paths and ["audit", "leakage"] in paths and ["configs"] in paths
    for path in paths:
        r = invoke(*path, "--help")
        assert r.exit_code == 0 and f"Usage: cli {' '.join(path)} " in r.output, (path, r.output)
