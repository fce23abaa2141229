"""``alignctl fuse``: re-fuse a finished run from its stored scores; no model is loaded."""

from __future__ import annotations

import click

from ..cli_options import echo, parse_kv
from .run import allow_partial_option, finish_incomplete, fusion_state_option, print_metrics, read_fusion_state


@click.command("fuse")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--fusion", required=True, help="Fusion rule to apply to the stored scores.")
@click.option("--fusion-option", "fusion_options", multiple=True, help="Fusion option KEY=VALUE.")
@fusion_state_option
@click.option("--store", type=click.Path(dir_okay=False), help="Score store (default: the run's).")
@allow_partial_option
def fuse_cmd(run_dir, fusion, fusion_options, fusion_state, store, allow_partial) -> None:
    """Re-fuse a finished run from its stored scores; no model is loaded.

    With --fusion-state, the images the state was fitted on are left out of the metrics (and counted).
    Exit status 3 as for `alignctl run` when a branch had failed on some image (unless the run, or this
    command, was given --allow-partial)."""
    from ..rundir import RunDir
    from ..publish import refuse

    out, metrics = refuse(run_dir, fusion, parse_kv(fusion_options, "--fusion-option"), store,
                          read_fusion_state(fusion_state), allow_partial,
                          state_source=f"fusion state {fusion_state}" if fusion_state else None)
    print_metrics(metrics)
    echo(f"fusion {fusion} written to {out}")
    accepted = allow_partial if allow_partial is not None else bool(RunDir.open(run_dir).config.get("allow_partial"))
    finish_incomplete(metrics, out, accepted)
