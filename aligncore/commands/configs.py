"""``alignctl configs``: the accelerate launch configs shipped with aligncore."""

from __future__ import annotations

import click

from ..cli_options import echo


@click.command("configs")
@click.argument("name", required=False)
def configs_cmd(name: str | None) -> None:
    """List the shipped accelerate configs, or print the path of config NAME.

    \b
    accelerate launch --config_file "$(alignctl configs ddp_8gpu)" -m aligncore run ...
    """
    from ..resources import accelerate_config, accelerate_configs, describe

    if name:
        echo(str(accelerate_config(name)))
        return
    for stem, path in accelerate_configs().items():
        echo(f"{stem:<18} {describe(path)}")
        echo(f"{'':<18} {path}")
