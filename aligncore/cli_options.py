"""The command-line toolkit: option parsing shared by the core's commands and by plugins that add commands.

A plugin's ``register_commands(cli)`` imports from here, never from ``aligncore.cli`` (whose
insides may change). ``scoring_options`` gives a command the options that say how to score
(``--branches``, ``--fusion``, ``--preset``, ``--device``, ``--batch-size``, ``--checkpoint``,
``-o BRANCH.KEY=VALUE``, ``--fusion-option``, ``--store``, ``-q``) and hands the command one
:class:`Scoring` object instead of ten parameters::

    @cli.command("my-study")
    @click.argument("data")
    @scoring_options
    def my_study(data, scoring):
        cfg = make_run_config(None, data=data, **scoring.run_options())

Only click is imported here, so ``alignctl --help`` stays fast.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

import click

#: the ``--device`` choices every command accepts
DEVICE = click.Choice(["auto", "cpu", "cuda"])


def echo_err(msg: str) -> None:
    """Print a progress or warning line on stderr (stdout stays for results); names in it are data, so
    control characters (terminal escape sequences) are shown escaped, never sent raw."""
    from .text import terminal_text

    click.echo(terminal_text(msg, keep_newlines=True), err=True)


def echo(msg: str = "") -> None:
    """Print a result line on stdout with control characters (terminal escape sequences) escaped."""
    from .text import terminal_text

    click.echo(terminal_text(msg, keep_newlines=True))


def csv_list(value: str | None) -> list[str] | None:
    """``"a, b,,c"`` → ``["a", "b", "c"]``; None or empty → None."""
    items = [v.strip() for v in value.split(",") if v.strip()] if value else []
    return items or None


def parse_kv(pairs: tuple[str, ...] | list[str], what: str) -> dict[str, Any]:
    """``key=value`` pairs → dict; values are read as YAML scalars (numbers, true/false, lists).

    ``what`` names the option in the error for a pair without ``=`` (e.g. ``"--option"``).
    """
    import yaml

    from .errors import ConfigError
    from .parsing import check_size

    out: dict[str, Any] = {}
    for p in pairs:
        if "=" not in p:
            raise click.BadParameter(f"{p!r} is not KEY=VALUE", param_hint=what)
        k, v = p.split("=", 1)
        try:
            value = yaml.safe_load(v) if v.strip() != "" else ""
        except yaml.YAMLError:
            value = v
        except RecursionError:
            raise click.BadParameter(f"the value of {k.strip()!r} is nested too deeply", param_hint=what) from None
        try:  # YAML aliases in a value expand like in a config file
            out[k.strip()] = check_size(value, f"the value of {k.strip()!r}")
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint=what) from None
    return out


def _one_branch(branches: list[str] | None) -> str | None:
    return branches[0] if branches and len(branches) == 1 else None


def branch_options(options: tuple[str, ...] | list[str], checkpoints: tuple[str, ...] | list[str] = (),
                   branches: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """``-o BRANCH.KEY=VALUE`` and ``--checkpoint DIR|BRANCH=DIR`` → ``{branch: {key: value, "checkpoint": dir}}``.

    With exactly one branch in ``branches``, ``-o KEY=VALUE`` and ``--checkpoint DIR`` need no branch name.
    """
    single = _one_branch(branches)
    out: dict[str, dict[str, Any]] = {}
    for k, v in parse_kv(options, "--option").items():
        if "." in k:
            b, key = k.split(".", 1)
        elif single:
            b, key = single, k
        else:
            raise click.BadParameter(f"{k!r}: say which branch, as BRANCH.{k}=VALUE", param_hint="--option")
        out.setdefault(b, {})[key] = v
    for c in checkpoints:
        if "=" in c:
            b, d = c.split("=", 1)
        elif single:
            b, d = single, c
        else:
            raise click.BadParameter("with several branches write BRANCH=DIR", param_hint="--checkpoint")
        out.setdefault(b, {})["checkpoint"] = d
    return out


@dataclass(frozen=True)
class Scoring:
    """What ``scoring_options`` parsed: which branches and fusion, and how to run them."""

    branches: list[str] | None = None
    fusion: str | None = None
    preset: str | None = None
    device: str | None = None
    batch_size: int | None = None
    branch_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    fusion_options: dict[str, Any] = field(default_factory=dict)
    store: str | None = None
    quiet: bool = False

    @property
    def progress(self) -> bool:
        return not self.quiet

    def run_options(self) -> dict[str, Any]:
        """The given values as ``make_run_config`` overrides (unset ones left out, so a config file keeps them)."""
        opts = {"branches": self.branches, "fusion": self.fusion, "preset": self.preset, "device": self.device,
                "batch_size": self.batch_size, "branch_options": self.branch_options or None,
                "fusion_options": self.fusion_options or None, "store": self.store}
        return {k: v for k, v in opts.items() if v is not None}


_SCORING_PARAMS = ("branches", "fusion", "preset", "device", "batch_size", "checkpoints", "options",
                   "fusion_options", "store", "quiet")


def _scoring_params(branches_required: bool, default_fusion: str | None) -> list[Callable]:
    fusion_help = "Fusion rule." if default_fusion else "Fusion rule (default: or, or the config file's)."
    return [
        click.option("--branches", required=branches_required, help="Comma-separated branch names, e.g. A,B."),
        click.option("--fusion", default=default_fusion, show_default=bool(default_fusion), help=fusion_help),
        click.option("--preset", help="Preset for every branch, e.g. tiny (offline, random weights)."),
        click.option("--device", type=DEVICE, default=None, help="Device (default auto)."),
        click.option("--batch-size", type=int, help="Override every branch's batch size."),
        click.option("--checkpoint", "checkpoints", multiple=True, help="Trained weights: DIR (one branch) or BRANCH=DIR."),
        click.option("-o", "--option", "options", multiple=True,
                     help="Branch option BRANCH.KEY=VALUE (KEY=VALUE for one branch)."),
        click.option("--fusion-option", "fusion_options", multiple=True, help="Fusion option KEY=VALUE."),
        click.option("--store", type=click.Path(dir_okay=False),
                     help="Score store (default $ALIGNCORE_STORE or ~/.aligncore/store.sqlite)."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bars."),
    ]


def scoring_options(f: Callable | None = None, *, branches_required: bool = True,
                    default_fusion: str | None = "or") -> Callable:
    """Click decorator: add the scoring options and pass them to the command as ``scoring=Scoring(...)``.

    Use bare (``@scoring_options``: ``--branches`` required, fusion ``or`` by default) or with
    arguments (``@scoring_options(branches_required=False, default_fusion=None)`` when a config
    file may supply them).
    """

    def decorate(func: Callable) -> Callable:
        @functools.wraps(func)
        def command(*args: Any, **kwargs: Any) -> Any:
            values = {k: kwargs.pop(k) for k in _SCORING_PARAMS}
            names = csv_list(values["branches"])
            kwargs["scoring"] = Scoring(
                branches=names, fusion=values["fusion"], preset=values["preset"], device=values["device"],
                batch_size=values["batch_size"],
                branch_options=branch_options(values["options"], values["checkpoints"], names),
                fusion_options=parse_kv(values["fusion_options"], "--fusion-option"),
                store=values["store"], quiet=values["quiet"])
            return func(*args, **kwargs)

        # options declared on ``func`` before this decorator stay; ours are added to the wrapper only
        command.__click_params__ = list(getattr(func, "__click_params__", []))  # type: ignore[attr-defined]
        for add in reversed(_scoring_params(branches_required, default_fusion)):
            command = add(command)
        return command

    return decorate(f) if f is not None else decorate
