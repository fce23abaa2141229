"""``alignctl bench``: run a detector on every present dataset of a benchmark suite."""

from __future__ import annotations

import sys

import click

from ..cli_options import Scoring, echo, echo_err, scoring_options
from .run import EXIT_INCOMPLETE, allow_partial_option


def _print_outcome(o) -> None:
    from ..publish import coverage_summary

    if o.status == "skipped":
        echo(f"skip {o.name}: {o.detail}")
    else:
        m = o.metrics["overall"]
        echo(f"ran  {o.name}: run {o.run_id}, {m['n']} images, acc {m['accuracy']}, AUC {m['auc']}  ({o.detail})")
        gap = coverage_summary(o.metrics.get("coverage", {}), o.metrics.get("fused_over"))
        if gap:
            echo(f"     {o.name} is incomplete: {gap}")


@click.command("bench")
@click.argument("suite")
@click.option("--root", type=click.Path(file_okay=False), help="Folder the suite's dataset paths are relative to "
              "(default: the suite's root_env variable, then $ALIGNCORE_BENCH_ROOT).")
@click.option("--perturb", help="Perturb every image before scoring, e.g. jpeg:75 (see alignctl run --help).")
@click.option("--metric", default="auc", show_default=True, help="Leaderboard metric printed at the end.")
@allow_partial_option
@scoring_options
def bench_cmd(suite, root, perturb, metric, allow_partial, scoring: Scoring) -> None:
    """Run a detector on every dataset of SUITE that is present; skip the others with one line each.

    Exit status 3 when a branch failed on some image of some dataset (that dataset gets no leaderboard
    row), unless --allow-partial."""
    from ..publish import coverage_summary
    from ..leaderboard import leaderboard, render
    from ..store import ScoreStore
    from ..suites import load_suite, resolve_root, run_suite

    s = load_suite(suite)
    root_path, origin = resolve_root(s, root)
    echo(f"suite {s.name}: {len(s.datasets)} dataset(s), root {root_path or '-'} ({origin})")
    opts = {**scoring.run_options(), **({"perturb": perturb} if perturb else {}),
            **({"allow_partial": True} if allow_partial else {})}
    outcomes = run_suite(s, root_path, opts, progress=scoring.progress, on_event=_print_outcome)
    if any(o.status == "ran" for o in outcomes):
        with ScoreStore(scoring.store) as st:
            ds, rows = leaderboard(st, s.name, metric, include_random=True)  # this suite's rows, marked random or not
        click.echo(render(ds, rows, "table", metric, s.name))  # names already escaped by render
    incomplete = [o.name for o in outcomes if o.status == "ran" and coverage_summary(o.metrics.get("coverage", {}))]
    if incomplete and not allow_partial:
        echo_err(f"incomplete: {', '.join(incomplete)} (a branch failed on some images; no leaderboard row for "
                 "them; --allow-partial accepts them)")
        sys.exit(EXIT_INCOMPLETE)
