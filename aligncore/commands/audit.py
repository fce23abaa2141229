"""``alignctl audit-format``: does a detector read the file format instead of the image?"""

from __future__ import annotations

import click

from ..cli_options import Scoring, csv_list, echo, echo_err, scoring_options


def _cell(value, delta) -> str:
    return f"{'n/a' if value is None else f'{value:.3f}':>6} ({'' if delta is None else f'{delta:+.3f}':>6})"


@click.command("audit-format")
@click.argument("data")
@click.option("--reencode", default="jpeg:95", show_default=True,
              help="Comma-separated re-encodings applied identically to both classes, e.g. jpeg:95,webp:90.")
@click.option("--out", type=click.Path(file_okay=False),
              help="Folder for the runs (one per condition) and the table (audit.json, audit.csv); default: runs/<run id> "
              "per condition and the table on the terminal only.")
@scoring_options
def audit_format_cmd(data, reencode, out, scoring: Scoring) -> None:
    """Format-bias audit: formats per class, and how much each branch's accuracy moves when both
    classes are re-encoded identically."""
    from ..audit import AUDIT_METRICS, audit_format

    res = audit_format(data, scoring.run_options(), csv_list(reencode) or [], progress=scoring.progress,
                       log=None if scoring.quiet else echo_err, out=out)
    for cls, counts in res.census.items():
        total = sum(counts.values()) or 1
        echo(f"{cls:<5} formats: " + ", ".join(f"{k} {v} ({v / total:.0%})" for k, v in counts.items()))
    echo(f"{'detector':<22} {'condition':<12} " + " ".join(f"{k:>14}" for k in AUDIT_METRICS))
    for r in res.rows:
        cells = [_cell(r[k], r[f"delta_{k}"]) for k in AUDIT_METRICS]
        echo(f"{r['detector']:<22} {r['condition']:<12} " + " ".join(f"{c:>14}" for c in cells))
    echo("(change against as-is in brackets; a large drop means the detector leaned on the file format)")
    echo("runs: " + ", ".join(f"{c}={rid}" for c, rid in res.runs.items()))
    if out:
        echo(f"table written to {out}/audit.json and {out}/audit.csv")
