"""``alignctl branches | fusions | builders``: the registered components of one kind."""

from __future__ import annotations

import json

import click

from ..cli_options import echo, echo_err


def warn_broken_plugins() -> int:
    """One warning line (stderr) per plugin that failed to load; returns how many there are."""
    from ..registry import get_registry

    broken = get_registry().broken()
    for name, err in broken.items():
        echo_err(f"warning: plugin {name!r} is broken and was skipped: {err}")
    return len(broken)


def _component_lister(command_name: str, kind: str, title: str) -> click.Command:
    @click.command(command_name, help=f"List registered {title} (optionally matching a wildcard PATTERN).")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.option("-v", "--verbose", is_flag=True, help="Show every config option with its default and help.")
    @click.argument("pattern", default="*")
    def command(as_json: bool, verbose: bool, pattern: str) -> None:
        from ..registry import list_components

        items = list_components(kind, pattern)
        if as_json:
            click.echo(json.dumps([
                {"name": r.name, "plugin": r.plugin, "help": r.help,
                 "options": [{"name": n, "default": d, "help": h} for n, d, h in r.cls.options_help()]}
                for r in items], indent=2))
            return
        for r in items:
            echo(f"{r.name:<14} {r.help}  ({r.plugin})")
            if verbose:
                for n, d, h in r.cls.options_help():
                    echo(f"    {n} = {d}  {h}")
        warn_broken_plugins()

    return command


branches_cmd = _component_lister("branches", "branch", "branches")
fusions_cmd = _component_lister("fusions", "fusion", "fusions")
builders_cmd = _component_lister("builders", "builder", "supervision-set builders")
