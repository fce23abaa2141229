"""``alignctl``: the command line. Commands call the library; the library never calls back.

This module holds the group, its error handling and the registration of commands: the
core's own (one module each under ``aligncore/commands/``, listed in ``CORE_COMMANDS``),
then whatever plugins add through ``register_commands``. Plugins cannot remove or replace a
core command. Only click, pluggy and pydantic are imported to build the command list, so
``alignctl --help`` answers without importing torch.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

import click

from . import __version__
from .cli_options import echo_err
from .errors import AlignCoreError
from .text import terminal_text

DEBUG_ENV = "ALIGNCORE_DEBUG"


class AlignGroup(click.Group):
    """Turns library errors into one-paragraph messages; ``--debug`` shows the traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except click.ClickException as exc:  # its message may quote a name from the data: never raw on the terminal
            exc.message = terminal_text(exc.message, keep_newlines=True)
            raise
        except AlignCoreError as exc:
            if _debug(ctx):
                traceback.print_exc()
            raise click.ClickException(terminal_text(str(exc), keep_newlines=True)) from None
        except Exception as exc:  # an unexpected failure: name it, keep the traceback behind --debug
            if _debug(ctx):
                raise
            raise click.ClickException(terminal_text(
                f"{type(exc).__name__}: {exc}\n(run again with --debug for the full traceback)", keep_newlines=True)
            ) from None


def _debug(ctx: click.Context) -> bool:
    return bool((ctx.obj or {}).get("debug")) or os.environ.get(DEBUG_ENV) == "1"


def _load_modules(ctx: click.Context, param: click.Parameter, modules: tuple[str, ...]) -> None:
    """``-p MODULE``: load plugin modules from the import path before the command is looked up."""
    if not modules or ctx.resilient_parsing:
        return
    from .plugins import load_plugin_modules

    failed = load_plugin_modules(list(modules))
    if failed:
        raise click.BadParameter("; ".join(failed.values()), param_hint="-p")
    _add_plugin_commands()


@click.group(cls=AlignGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="alignctl")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors (and third-party warnings).")
@click.option("-v", "--verbose", is_flag=True, help="Show third-party libraries' warnings and log messages.")
@click.option("-p", "--plugin", "plugin_modules", multiple=True, metavar="MODULE", is_eager=True, expose_value=False,
              callback=_load_modules, help="Load a plugin module from the import path without installing it "
              "(repeatable; like ALIGNCORE_PLUGINS=mod1,mod2).")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: bool) -> None:
    """aligncore: detect AI-generated images with semantic and pixel experts, fused.

    \b
    Quick start (offline, tiny models):
      alignctl run --branches fake --fusion or --data DIR
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    if not (debug or verbose or os.environ.get(DEBUG_ENV) == "1"):
        from .quiet import quiet_third_party

        quiet_third_party()


# ------------------------------------------------------------------------- the core's commands

#: (module under ``aligncore.commands``, its module-level click command), in no particular order
#: (``--help`` sorts them). Each module imports heavy libraries only inside its command.
CORE_COMMANDS: tuple[tuple[str, str], ...] = (
    ("plugins", "plugins_cmd"),
    ("components", "branches_cmd"),
    ("components", "fusions_cmd"),
    ("components", "builders_cmd"),
    ("run", "run_cmd"),
    ("fuse", "fuse_cmd"),
    ("build", "build_cmd"),
    ("train", "train_cmd"),
    ("ablate", "ablate_cmd"),
    ("bench", "bench_cmd"),
    ("suites", "suites_cmd"),
    ("leaderboard", "leaderboard_cmd"),
    ("report", "report_cmd"),
    ("audit", "audit_format_cmd"),
    ("demo", "demo_cmd"),
    ("configs", "configs_cmd"),
    ("push", "push_cmd"),
    ("study", "study_group"),
    ("detect", "detect_cmd"),
)


def _core_command(module: str, attr: str) -> click.Command:
    return getattr(importlib.import_module(f"{__package__}.commands.{module}"), attr)


for _module, _attr in CORE_COMMANDS:
    cli.add_command(_core_command(_module, _attr))


# ------------------------------------------------------------------------- plugins' commands and entry point


_commands_added = False
_CORE = dict(cli.commands)


def _add_plugin_commands() -> None:
    """Let every plugin add its commands (again after ``-p`` loads more). Core commands stay the core's."""
    from .registry import get_registry

    try:
        reg = get_registry()
    except Exception as exc:  # never let plugin loading take the CLI down
        echo_err(f"warning: plugins could not be loaded: {type(exc).__name__}: {exc}")
    else:
        reg.add_commands(cli, on_error=lambda m: echo_err(f"warning: {m}"))
    for name, command in _CORE.items():
        if cli.commands.get(name) is not command:
            echo_err(f"warning: a plugin replaced the core command {name!r}; the core's is kept")
            cli.add_command(command)


def build_cli() -> click.Group:
    """The group with every plugin's commands added (once)."""
    global _commands_added
    if not _commands_added:
        _commands_added = True
        _add_plugin_commands()
    return cli


def _wants_noise(args: list[str]) -> bool:
    """``--debug``, ``-v`` or ``--verbose`` among the group's options (before the command name)."""
    if os.environ.get(DEBUG_ENV) == "1":
        return True
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a in ("-p", "--plugin"):
            skip = True
            continue
        if not a.startswith("-"):
            return False  # the command: its own -v means something else
        if a in ("--debug", "-v", "--verbose"):
            return True
    return False


def main(argv: list[str] | None = None) -> None:
    from .process import rank_guard

    rank_guard()  # a rank started by `run --num-processes` dies with its launcher
    args = sys.argv[1:] if argv is None else argv
    if not _wants_noise(args):  # before plugins are imported, so their imports are quiet too
        from .quiet import quiet_third_party

        quiet_third_party()
    build_cli()
    cli.main(args=args, prog_name="alignctl")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
