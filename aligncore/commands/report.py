"""``alignctl report``: one self-contained HTML page for a run."""

from __future__ import annotations

import click

from ..cli_options import csv_list, echo


@click.command("report")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), help="HTML file (default RUN/report.html).")
@click.option("--fusions", default="or,and,max,weighted,learned", show_default=True, help="Fusions in the ablation table.")
@click.option("--target-fpr", type=float, help="Calibrate the ablation's thresholds to this FPR.")
def report_cmd(run_dir, out, fusions, target_fpr) -> None:
    """Write one self-contained HTML page for a run: ROC, per-generator accuracy, histograms, confusion, ablation."""
    from ..report import write_report

    path = write_report(run_dir, out, tuple(csv_list(fusions) or ()), target_fpr)
    echo(f"report written to {path}")
