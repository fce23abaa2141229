"""``alignctl ablate``: compare fusion rules and each branch alone on finished runs' stored scores."""

from __future__ import annotations

import click

from ..cli_options import csv_list, echo


@click.command("ablate")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--fusions", default="or,and,max,weighted,learned", show_default=True, help="Comma-separated fusions to compare.")
@click.option("--target-fpr", type=float, help="Calibrate every threshold on the calibration reals to this false-positive rate (e.g. 0.05).")
@click.option("--cal-fraction", type=float, default=0.3, show_default=True, help="Share of images (by content hash) used for fitting and calibration.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the calibration split.")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder (default RUN/ablation).")
@click.option("--generators/--no-generators", default=True, help="Also print the per-generator rows.")
def ablate_cmd(runs, fusions, target_fpr, cal_fraction, seed, out, generators) -> None:
    """Compare fusion rules (and each branch alone) on finished RUNS' stored scores; loads no model.

    Each RUN is one dataset. Learned fusions are fitted, and thresholds calibrated, on a calibration
    split disjoint from the evaluation images every number is measured on.
    """
    from ..ablation import ablate, describe, to_text

    res = ablate(runs, csv_list(fusions) or [], target_fpr, cal_fraction, seed, out_dir=out)
    rows = res.rows if generators else [r for r in res.rows if r["scope"] == "dataset"]
    echo(describe(target_fpr, cal_fraction))
    left = {ds: len(sp["left_out"]) for ds, sp in res.splits.items() if sp.get("left_out")}
    for ds, n in left.items():
        echo(f"{ds}: {n} labelled image(s) some branch did not score are left out of both splits")
    click.echo(to_text(rows))  # names already escaped by to_text
    for k in ("csv", "md", "fusions"):
        echo(f"{k}: {res.files[k]}")
    states = [(k[6:], p) for k, p in res.files.items() if k.startswith("state:")]
    for name, p in states:
        echo(f"fitted state ({name}): {p}")
    if states:
        echo("reuse a state with `alignctl run|fuse ... --fusion NAME --fusion-state FILE`, best on other data: "
             "on this run its calibration images are left out of the metrics (the file lists them).")
