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

DEBUG_ENV = "ALIGNCORE_DEBUG"


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
    ("study", "study_group"),
)


def _core_command(module: str, attr: str) -> click.Command:
    return getattr(importlib.import_module(f"{__package__}.commands.{module}"), attr)


for _module, _attr in CORE_COMMANDS:
    cli.add_command(_core_command(_module, _attr))


# ------------------------------------------------------------------------- plugins' commands and entry point


_commands_added = False


def build_cli() -> click.Group:
    """The group with every plugin's commands added (once). Core commands stay the core's."""
    global _commands_added
    if not _commands_added:
        _commands_added = True
        from .registry import get_registry

        core = dict(cli.commands)
        try:
            reg = get_registry()
        except Exception as exc:  # never let plugin loading take the CLI down
            echo_err(f"warning: plugins could not be loaded: {type(exc).__name__}: {exc}")
        else:
            reg.add_commands(cli, on_error=lambda m: echo_err(f"warning: {m}"))
        for name, command in core.items():
            if cli.commands.get(name) is not command:
                echo_err(f"warning: a plugin replaced the core command {name!r}; the core's is kept")
                cli.add_command(command)
    return cli


def main(argv: list[str] | None = None) -> None:
    build_cli()
    cli.main(args=argv, prog_name="alignctl")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
