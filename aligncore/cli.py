"""``alignctl``: the command line. Commands call the library; the library never calls back.

Only click, pluggy and pydantic are imported to build the command list, so
``alignctl --help`` answers without importing torch.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any

import click

from . import __version__
from .errors import AlignCoreError

DEBUG_ENV = "ALIGNCORE_DEBUG"


def echo_err(msg: str) -> None:
    click.echo(msg, err=True)


def parse_kv(pairs: tuple[str, ...] | list[str], what: str) -> dict[str, Any]:
    """``key=value`` pairs → dict; values are read as YAML scalars (numbers, true/false, lists)."""
    import yaml

    out: dict[str, Any] = {}
    for p in pairs:
        if "=" not in p:
            raise click.BadParameter(f"{p!r} is not KEY=VALUE", param_hint=what)
        k, v = p.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v) if v.strip() != "" else ""
        except yaml.YAMLError:
            out[k.strip()] = v
    return out


def parse_branch_options(pairs: tuple[str, ...], branches: list[str] | None) -> dict[str, dict[str, Any]]:
    """``branch.key=value`` (or ``key=value`` when one branch) → {branch: {key: value}}."""
    flat = parse_kv(pairs, "--option")
    out: dict[str, dict[str, Any]] = {}
    for k, v in flat.items():
        if "." in k:
            b, key = k.split(".", 1)
        elif branches and len(branches) == 1:
            b, key = branches[0], k
        else:
            raise click.BadParameter(f"{k!r}: say which branch, as BRANCH.{k}=VALUE", param_hint="--option")
        out.setdefault(b, {})[key] = v
    return out


def branch_options_with_checkpoints(options: tuple[str, ...], checkpoints: tuple[str, ...],
                                    branches: list[str] | None) -> dict[str, dict[str, Any]]:
    """``-o BRANCH.KEY=VALUE`` options plus ``--checkpoint DIR`` (one branch) or ``BRANCH=DIR``."""
    bopts = parse_branch_options(options, branches)
    for c in checkpoints:
        if "=" in c:
            b, d = c.split("=", 1)
        elif branches and len(branches) == 1:
            b, d = branches[0], c
        else:
            raise click.BadParameter("with several branches write BRANCH=DIR", param_hint="--checkpoint")
        bopts.setdefault(b, {})["checkpoint"] = d
    return bopts


class AlignGroup(click.Group):
    """Turns library errors into one-paragraph messages; ``--debug`` shows the traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, KeyboardInterrupt):
            raise
        except AlignCoreError as exc:
            if _debug(ctx):
                traceback.print_exc()
            raise click.ClickException(str(exc)) from None
        except Exception as exc:  # an unexpected failure: name it, keep the traceback behind --debug
            if _debug(ctx):
                raise
            raise click.ClickException(
                f"{type(exc).__name__}: {exc}\n(run again with --debug for the full traceback)"
            ) from None


def _debug(ctx: click.Context) -> bool:
    return bool((ctx.obj or {}).get("debug")) or os.environ.get(DEBUG_ENV) == "1"


@click.group(cls=AlignGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="alignctl")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """aligncore: detect AI-generated images with semantic and pixel experts, fused.

    \b
    Quick start (offline, tiny models):
      alignctl run --branches fake --fusion or --data DIR
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


# ------------------------------------------------------------------------- plugins and components


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--all", "show_all", is_flag=True, help="Include the built-in plugins.")
def plugins_cmd(as_json: bool, show_all: bool) -> None:
    """List installed plugins: name, version, hooks and what each registers."""
    from .plugins import get_plugin_state
    from .registry import get_registry

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
        click.echo("No third-party plugins installed (alignctl plugins --all shows the built-ins).")
        return
    for r in rows:
        status = "BLOCKED" if r["blocked"] else ("BROKEN" if r["error"] else "ok")
        regs = "; ".join(f"{k}: {', '.join(v)}" for k, v in r["registers"].items()) or "-"
        click.echo(f"{r['name']:<14} {r['distribution'] or '-'} {r['version'] or ''}  [{status}]  {regs}")
        if r["error"]:
            click.echo(f"    error: {r['error']}")


def _component_lister(kind: str, title: str):
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.option("-v", "--verbose", is_flag=True, help="Show every config option with its default and help.")
    @click.argument("pattern", default="*")
    def command(as_json: bool, verbose: bool, pattern: str) -> None:
        from .registry import get_registry, list_components

        items = list_components(kind, pattern)
        if as_json:
            click.echo(json.dumps([
                {"name": r.name, "plugin": r.plugin, "help": r.help,
                 "options": [{"name": n, "default": d, "help": h} for n, d, h in r.cls.options_help()]}
                for r in items], indent=2))
            return
        for r in items:
            click.echo(f"{r.name:<14} {r.help}  ({r.plugin})")
            if verbose:
                for n, d, h in r.cls.options_help():
                    click.echo(f"    {n} = {d}  {h}")
        for plugin, err in get_registry().errors.items():
            echo_err(f"warning: {err}")

    command.__doc__ = f"List registered {title} (optionally matching a wildcard PATTERN)."
    return command


cli.command("branches")(_component_lister("branch", "branches"))
cli.command("fusions")(_component_lister("fusion", "fusions"))
cli.command("builders")(_component_lister("builder", "supervision-set builders"))


# ------------------------------------------------------------------------- run and fuse


def _print_metrics(metrics: dict) -> None:
    o = metrics["overall"]

    def f(v):
        return "n/a" if v is None else f"{v:.4f}"

    click.echo(
        f"images {o['n']} (real {o['n_real']}, fake {o['n_fake']})  acc {f(o['accuracy'])}  "
        f"real {f(o['real_accuracy'])}  fake {f(o['fake_accuracy'])}  bacc {f(o['balanced_accuracy'])}  "
        f"AP {f(o['ap'])}  AUC {f(o['auc'])}  TPR@5%FPR {f(o['tpr_at_5fpr'])}"
    )
    for k, why in (o.get("undefined") or {}).items():
        click.echo(f"  {k}: undefined ({why})")


@cli.command("run")
@click.option("--branches", help="Comma-separated branch names, e.g. qwen,dinov2.")
@click.option("--fusion", help="Fusion rule (default: or).")
@click.option("--data", help="Dataset folder (0_real/1_fake, real/fake) or CSV/JSONL manifest.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML/TOML/JSON run config.")
@click.option("--preset", help="Preset for every branch, e.g. tiny (offline, random weights).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]) , default=None, help="Device (default auto).")
@click.option("--batch-size", type=int, help="Override every branch's batch size.")
@click.option("--workers", type=int, help="Data loader workers (default 0).")
@click.option("--out", type=click.Path(file_okay=False), help="Run directory (default runs/<run id>).")
@click.option("--store", type=click.Path(dir_okay=False), help="Score store (default $ALIGNCORE_STORE or ~/.aligncore/store.sqlite).")
@click.option("--checkpoint", "checkpoints", multiple=True, help="Trained weights: DIR (one branch) or BRANCH=DIR.")
@click.option("-o", "--option", "options", multiple=True, help="Branch option BRANCH.KEY=VALUE (KEY=VALUE for one branch).")
@click.option("--fusion-option", "fusion_options", multiple=True, help="Fusion option KEY=VALUE.")
@click.option("--explain", is_flag=True, default=None, help="Store a short rationale from branches that can explain.")
@click.option("--allow-outside-paths", is_flag=True, default=None, help="Allow manifest paths outside its folder.")
@click.option("--suite", help="Benchmark suite name recorded with the leaderboard row.")
@click.option("--perturb", help="Perturb every image before scoring: jpeg:75, webp:80, blur:1.0, resize:0.5, crop:0.8 (chain with +).")
@click.option("--fusion-state", "fusion_state", type=click.Path(exists=True, dir_okay=False),
              help="JSON state of a fitted fusion (written by alignctl ablate), e.g. for --fusion learned.")
@click.option("--num-processes", type=int, default=1, show_default=True,
              help="Shard scoring across N processes (GPUs, or CPU ranks) with accelerate launch.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def run_cmd(branches, fusion, data, config_file, preset, device, batch_size, workers, out, store, checkpoints,
            options, fusion_options, explain, allow_outside_paths, suite, perturb, fusion_state, num_processes,
            quiet) -> None:
    """Score a dataset with one or more branches, fuse, and write predictions and metrics."""
    from .config import make_run_config
    from .runner import make_run_id, run

    if num_processes > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        from .distributed import launch

        argv = _strip_option(sys.argv[1:], "--num-processes")
        if not out:
            out = os.path.join("runs", make_run_id(make_run_config(config_file, branches=branches, data=data or "-")))
            argv += ["--out", out]
        rc = launch(argv, num_processes, device)
        if rc != 0:
            raise click.ClickException(f"distributed run failed (exit code {rc}); re-run the same command to resume.")
        return

    names = [b.strip() for b in branches.split(",")] if branches else None
    bopts = branch_options_with_checkpoints(options, checkpoints, names)
    cfg = make_run_config(
        config_file, branches=names, fusion=fusion, data=data, preset=preset, device=device,
        batch_size=batch_size, workers=workers, out=out, store=store, branch_options=bopts or None,
        fusion_options=parse_kv(fusion_options, "--fusion-option") or None, explain=explain,
        allow_outside_paths=allow_outside_paths, suite=suite, perturb=perturb,
        fusion_state=_read_fusion_state(fusion_state),
    )
    result = run(cfg, progress=not quiet, log=None if quiet else echo_err)
    if not result.metrics:  # a non-zero rank of a distributed run: rank 0 reports
        return
    for name, st in result.branches.items():
        click.echo(f"branch {name}: scored {st.scored}, reused from store {st.reused}, failed {st.failed}  [{st.fingerprint}]")
    if result.skipped:
        click.echo(f"skipped {len(result.skipped)} file(s):")
        for path, why in result.skipped:
            click.echo(f"  {path}: {why}")
    _print_metrics(result.metrics)
    click.echo(f"run {result.run_id} written to {result.out_dir}")


def _strip_option(argv: list[str], name: str) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == name:
            skip = True
            continue
        if a.startswith(name + "="):
            continue
        out.append(a)
    return out


def _read_fusion_state(path: str | None) -> dict | None:
    """A fusion state file: either the bare state or ablate's {"name", "config", "state"} entry."""
    if not path:
        return None
    with open(path, encoding="utf-8") as f:
        obj = json.load(f)
    return obj.get("state", obj) if isinstance(obj, dict) else None


@cli.command("fuse")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--fusion", required=True, help="Fusion rule to apply to the stored scores.")
@click.option("--fusion-option", "fusion_options", multiple=True, help="Fusion option KEY=VALUE.")
@click.option("--fusion-state", "fusion_state", type=click.Path(exists=True, dir_okay=False),
              help="JSON state of a fitted fusion (written by alignctl ablate).")
@click.option("--store", type=click.Path(dir_okay=False), help="Score store (default: the run's).")
def fuse_cmd(run_dir, fusion, fusion_options, fusion_state, store) -> None:
    """Re-fuse a finished run from its stored scores; no model is loaded."""
    from .runner import refuse

    out, metrics = refuse(run_dir, fusion, parse_kv(fusion_options, "--fusion-option"), store,
                          _read_fusion_state(fusion_state))
    _print_metrics(metrics)
    click.echo(f"fusion {fusion} written to {out}")


# ------------------------------------------------------------------------- train and build


from .commands.train import train_cmd  # noqa: E402  (click only; the command imports the library lazily)

cli.add_command(train_cmd)


@cli.command("build")
@click.argument("builder")
@click.argument("sources", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (resumes if it holds a partial set).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML/TOML/JSON builder config.")
@click.option("-o", "--option", "options", multiple=True, help="Builder option KEY=VALUE.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def build_cmd(builder, sources, out, config_file, options, quiet) -> None:
    """Build a supervision set from SOURCES (folders or manifests of images) with BUILDER."""
    from .config import read_config_file
    from .registry import create_builder

    cfg = read_config_file(config_file) if config_file else {}
    cfg.update(parse_kv(options, "--option"))
    b = create_builder(builder, cfg)
    manifest = b.build(sources, out, progress=not quiet)
    line = b.summary()
    if line:
        click.echo(line)
    click.echo(f"manifest written to {manifest}")


# ------------------------------------------------------------------------- entry point


_commands_added = False


def build_cli() -> click.Group:
    """The group with every plugin's commands added (once)."""
    global _commands_added
    if not _commands_added:
        _commands_added = True
        from .registry import get_registry

        try:
            reg = get_registry()
        except Exception as exc:  # never let plugin loading take the CLI down
            echo_err(f"warning: plugins could not be loaded: {type(exc).__name__}: {exc}")
        else:
            reg.add_commands(cli, on_error=lambda m: echo_err(f"warning: {m}"))
    return cli


def main(argv: list[str] | None = None) -> None:
    build_cli()
    cli.main(args=argv, prog_name="alignctl")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
