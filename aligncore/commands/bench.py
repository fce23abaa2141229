"""``alignctl bench``: run a detector on every present dataset of a benchmark suite."""

from __future__ import annotations

import click

from ..cli_options import Scoring, echo, scoring_options


def _print_outcome(o) -> None:
    if o.status == "skipped":
        echo(f"skip {o.name}: {o.detail}")
    else:
        m = o.metrics["overall"]
        echo(f"ran  {o.name}: run {o.run_id}, {m['n']} images, acc {m['accuracy']}, AUC {m['auc']}  ({o.detail})")


@click.command("bench")
@click.argument("suite")
@click.option("--root", type=click.Path(file_okay=False), help="Folder the suite's dataset paths are relative to "
              "(default: the suite's root_env variable, then $ALIGNCORE_BENCH_ROOT).")
@click.option("--perturb", help="Perturb every image before scoring, e.g. jpeg:75 (see alignctl run --help).")
@click.option("--metric", default="accuracy", show_default=True, help="Leaderboard metric printed at the end.")
@scoring_options
def bench_cmd(suite, root, perturb, metric, scoring: Scoring) -> None:
    """Run a detector on every dataset of SUITE that is present; skip the others with one line each."""
    from ..leaderboard import leaderboard, render
    from ..store import ScoreStore
    from ..suites import load_suite, resolve_root, run_suite

    s = load_suite(suite)
    root_path, origin = resolve_root(s, root)
    echo(f"suite {s.name}: {len(s.datasets)} dataset(s), root {root_path or '-'} ({origin})")
    opts = {**scoring.run_options(), **({"perturb": perturb} if perturb else {})}
    outcomes = run_suite(s, root_path, opts, progress=scoring.progress, on_event=_print_outcome)
    if any(o.status == "ran" for o in outcomes):
        with ScoreStore(scoring.store) as st:
            ds, rows = leaderboard(st, s.name, metric)
        click.echo(render(ds, rows, "table", metric, s.name))  # names already escaped by render
