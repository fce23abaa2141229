"""``alignctl plugins``: installed plugins, their versions, hooks and what each registers."""

from __future__ import annotations

import json

import click

from ..cli_options import echo


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--all", "show_all", is_flag=True, help="Include the built-in plugins.")
def plugins_cmd(as_json: bool, show_all: bool) -> None:
    """List installed plugins: name, version, hooks and what each registers."""
    from ..plugins import get_plugin_state
    from ..registry import get_registry

    state = get_plugin_state()
    reg = get_registry()
    rows = []
    for name, info in state.infos.items():
        if info.builtin and not show_all:
            continue
        registers = {kind: sorted(n for n, r in comps.items() if r.plugin == name) for kind, comps in reg.components.items()}
        rows.append({
            "name": name, "distribution": info.distribution, "version": info.version, "builtin": info.builtin,
            "module": info.module, "hooks": info.hooks, "registers": {k: v for k, v in registers.items() if v},
            "blocked": info.blocked, "error": info.error or reg.errors.get(name),
        })
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        echo("No third-party plugins installed (alignctl plugins --all shows the built-ins).")
        return
    for r in rows:
        status = "BLOCKED" if r["blocked"] else ("BROKEN" if r["error"] else "ok")
        regs = "; ".join(f"{k}: {', '.join(v)}" for k, v in r["registers"].items()) or "-"
        echo(f"{r['name']:<14} {r['distribution'] or '-'} {r['version'] or ''}  [{status}]  {regs}")
        if r["error"]:
            echo(f"    error: {r['error']}")
