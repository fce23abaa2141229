"""``alignctl report``: one self-contained HTML page for a run."""

from __future__ import annotations

import click

from ..cli_options import csv_list, echo


@click.command("report")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), help="HTML file (default RUN/report.html).")
@click.option("--fusions", help="Fusions of the ablation table when RUN has none yet "
              "(default or,and,max,weighted,learned); an existing RUN/ablation/ is shown as it is.")
@click.option("--target-fpr", type=float, help="Calibrate the ablation's thresholds to this FPR, when RUN has no ablation yet.")
def report_cmd(run_dir, out, fusions, target_fpr) -> None:
    """Write one self-contained HTML page for a run: ROC, per-generator accuracy, histograms, confusion, ablation.

    The ablation table is read from RUN/ablation/ (never rewritten); only a run without one gets an
    ablation computed here. To change it, run `alignctl ablate RUN ...` first."""
    from pathlib import Path

    from ..report import write_report

    if (Path(run_dir) / "ablation" / "ablation.csv").is_file() and (fusions or target_fpr is not None):
        click.echo(f"{run_dir}/ablation/ exists: the report shows it as it is and ignores --fusions/--target-fpr "
                   "(run `alignctl ablate` to change it).", err=True)
    path = write_report(run_dir, out, tuple(csv_list(fusions) or ()), target_fpr)
    echo(f"report written to {path}")
