"""``alignctl plugins``: installed plugins, their versions, hooks and what each registers; ``plugins new``."""

from __future__ import annotations

import json

import click

from ..cli_options import echo, echo_err


@click.group("plugins", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--all", "show_all", is_flag=True, help="Include the built-in plugins.")
@click.pass_context
def plugins_cmd(ctx: click.Context, as_json: bool, show_all: bool) -> None:
    """List plugins: name, version, how it was found, hooks and what each registers.

    Exits with status 1 when a plugin is broken (failed to import, register or run a hook).
    `alignctl plugins new NAME` writes a plugin distribution to start from.
    """
    if ctx.invoked_subcommand is not None:
        return
    from ..plugins import get_plugin_state
    from ..registry import get_registry

    state = get_plugin_state()
    reg = get_registry()
    broken = reg.broken()
    rows = []
    for name, info in state.infos.items():
        if info.builtin and not show_all and name not in broken:
            continue
        registers = {kind: sorted(n for n, r in comps.items() if r.plugin == name) for kind, comps in reg.components.items()}
        rows.append({
            "name": name, "distribution": info.distribution, "version": info.version, "builtin": info.builtin,
            "module": info.module, "source": info.source, "hooks": info.hooks,
            "registers": {k: v for k, v in registers.items() if v}, "blocked": info.blocked, "error": broken.get(name),
        })
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif not rows:
        echo("No third-party plugins installed (alignctl plugins --all shows the built-ins).")
    else:
        for r in rows:
            status = "BLOCKED" if r["blocked"] else ("BROKEN" if r["error"] else "ok")
            regs = "; ".join(f"{k}: {', '.join(v)}" for k, v in r["registers"].items()) or "-"
            origin = r["distribution"] or f"(module, {r['source']})"
            echo(f"{r['name']:<14} {origin} {r['version'] or ''}  [{status}]  {regs}")
            if r["error"]:
                echo(f"    error: {r['error']}")
    if broken:
        echo_err(f"error: {len(broken)} plugin(s) failed to load: {', '.join(broken)}. Fix or uninstall them, "
                 "or block them with ALIGNCORE_DISABLE_PLUGINS=" + ",".join(broken) + ".")
        ctx.exit(1)


@plugins_cmd.command("new")
@click.argument("name")
@click.option("--out", type=click.Path(file_okay=False), help="Folder to write (default ./aligncore-NAME).")
def plugins_new_cmd(name: str, out: str | None) -> None:
    """Write a plugin distribution NAME: pyproject with the entry point, a branch, tests using aligncore.testing.

    \b
    alignctl plugins new my-detector
    pip install -e aligncore-my-detector && pytest aligncore-my-detector
    """
    from ..scaffold import write_plugin_skeleton

    root, files = write_plugin_skeleton(name, out)
    for f in files:
        echo(f"  {f.relative_to(root.parent) if root.parent != root else f}")
    echo(f"wrote {root}: `pip install -e {root}` then `pytest {root}` (its tests use aligncore.testing)")
