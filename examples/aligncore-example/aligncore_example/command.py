"""A command: added to `alignctl` by the register_commands hook."""

from __future__ import annotations

import click

from aligncore.cli_options import scoring_options


def add_commands(cli: click.Group) -> None:
    @cli.command("example-summary")
    @click.argument("data")
    @click.option("--out", type=click.Path(file_okay=False), help="Run folder (default runs/<run id>).")
    @scoring_options(branches_required=False)
    def example_summary(data, out, scoring):
        """Score DATA and print each branch's mean P(fake) for real and for fake images."""
        import numpy as np

        from aligncore import run
        from aligncore.config import make_run_config

        options = {"branches": ["example"], **scoring.run_options()}
        result = run(make_run_config(None, data=data, out=out, **options), progress=scoring.progress)
        t = result.table
        for b in t.branches:
            means = [np.nanmean(t.scores[b][t.labels == y]) if (t.labels == y).any() else float("nan") for y in (0, 1)]
            click.echo(f"{b}: mean P(fake) real {means[0]:.3f}  fake {means[1]:.3f}  ({len(t)} images)")
