"""``alignctl fuse``: re-fuse a finished run from its stored scores; no model is loaded."""

from __future__ import annotations

import click

from ..cli_options import echo, parse_kv
from .run import fusion_state_option, print_metrics, read_fusion_state


@click.command("fuse")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--fusion", required=True, help="Fusion rule to apply to the stored scores.")
@click.option("--fusion-option", "fusion_options", multiple=True, help="Fusion option KEY=VALUE.")
@fusion_state_option
@click.option("--store", type=click.Path(dir_okay=False), help="Score store (default: the run's).")
def fuse_cmd(run_dir, fusion, fusion_options, fusion_state, store) -> None:
    """Re-fuse a finished run from its stored scores; no model is loaded."""
    from ..runner import refuse

    out, metrics = refuse(run_dir, fusion, parse_kv(fusion_options, "--fusion-option"), store,
                          read_fusion_state(fusion_state))
    print_metrics(metrics)
    echo(f"fusion {fusion} written to {out}")
