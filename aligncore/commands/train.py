"""``alignctl train BRANCH``: train a branch with the method it names and write a checkpoint.

Only click is imported at module level, so registering the command keeps ``alignctl --help`` fast.
"""

from __future__ import annotations

import os

import click

from ..cli_options import echo, echo_err, parse_kv


def command_line() -> str:
    """This process's command line as ``alignctl ...``, absolute paths cut to their names (no machine paths)."""
    import shlex
    import sys

    def portable(arg: str) -> str:
        key, eq, value = arg.partition("=")
        if eq and os.path.isabs(value):
            return f"{key}={os.path.basename(value.rstrip(os.sep)) or value}"
        return os.path.basename(arg.rstrip(os.sep)) or arg if os.path.isabs(arg) else arg

    return shlex.join(["alignctl", *(portable(a) for a in sys.argv[1:])])


def _print_options(branch_class) -> None:
    tcls = branch_class.train_config_class
    echo(f"Training options of {branch_class.name} ({branch_class.trainer_class.__name__}, "
         f"{tcls.__name__}); pass them as -o KEY=VALUE or in --config FILE:")
    for name, default, help_text in tcls.options_help():
        echo(f"    {name} = {default}  {help_text}")
    echo(f"Branch options of {branch_class.name}; pass them as -b KEY=VALUE:")
    for name, default, help_text in branch_class.options_help():
        echo(f"    {name} = {default}  {help_text}")
    for preset, values in sorted(branch_class.presets.items()):
        shown = ", ".join(f"{k}={v!r}" for k, v in values.items()) or "no changes"
        echo(f"Preset {preset!r} (--preset {preset}): {shown}")


@click.command("train")
@click.argument("branch")
@click.option("--set", "train_set", help="Training set: a builder's output folder, a 0_real/1_fake folder or a manifest.")
@click.option("--out", type=click.Path(file_okay=False), help="Checkpoint directory (the same --out resumes).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="YAML/TOML/JSON file of training options (and a `branch:` mapping of branch options), e.g. "
                   "configs/train-npr.yaml.")
@click.option("--preset", help="Branch preset, e.g. tiny.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None)
@click.option("-o", "--option", "options", multiple=True, help="Training option KEY=VALUE (overrides --config); see --options.")
@click.option("-b", "--branch-option", "branch_options", multiple=True, help="Branch option KEY=VALUE; see --options.")
@click.option("--options", "list_options", is_flag=True, help="List BRANCH's training and branch options with defaults and help.")
@click.option("--allow-outside-paths", is_flag=True, help="Allow manifest paths outside the manifest's folder.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def train_cmd(branch, train_set, out, config_file, preset, device, options, branch_options, list_options,
              allow_outside_paths, quiet) -> None:
    """Train BRANCH on a labelled set and write a checkpoint that `run --checkpoint` reloads.

    Every option is checked before any work: an unknown -o or -b key fails at once, naming the
    closest known ones.
    """
    from ..config import read_config_file
    from ..train import train_branch_class, trainable_branch

    branch_class = trainable_branch(branch)
    if list_options:
        _print_options(branch_class)
        return
    if not train_set or not out:
        raise click.UsageError("--set and --out are required (or --options to list the training options).")
    topts = read_config_file(config_file) if config_file else {}
    bopts = topts.pop("branch", None) or {}  # a config file's `branch:` mapping holds branch options
    if not isinstance(bopts, dict):
        raise click.BadParameter(f"{config_file}: `branch` must be a mapping of branch options", param_hint="--config")
    topts.update(parse_kv(options, "--option"))
    bopts = {**bopts, **parse_kv(branch_options, "--branch-option")}
    if preset is not None:
        bopts["preset"] = preset
    if device is not None:
        bopts["device"] = device
    # train_branch_class validates both option sets before it reads the set or writes anything
    main = int(os.environ.get("RANK", "0")) == 0
    result = train_branch_class(branch_class, train_set, out, branch_options=bopts, train_options=topts,
                                progress=not quiet, log=echo_err if main else None, command=command_line(),
                                allow_outside_paths=allow_outside_paths)
    if main:  # under accelerate launch, rank 0 reports
        from ..train.base import format_summary

        echo(f"trained {branch}: {format_summary(result.summary)}; checkpoint written to {result.checkpoint}")
