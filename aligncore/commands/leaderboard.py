"""``alignctl leaderboard``: one row per detector configuration, datasets as columns."""

from __future__ import annotations

import click


@click.command("leaderboard")
@click.option("--suite", help="Only rows recorded for this suite.")
@click.option("--format", "fmt", type=click.Choice(["table", "md", "csv", "json", "html"]), default="table", show_default=True)
@click.option("--metric", default="auc", show_default=True,
              help="accuracy, real_accuracy, fake_accuracy, balanced_accuracy, ap, auc, eer, tpr_at_1fpr, tpr_at_5fpr.")
@click.option("--sort", help="Column to sort by (default: average).")
@click.option("--ascending/--descending", default=None,
              help="Sort order (default: best first, i.e. descending, ascending for eer).")
@click.option("--all", "show_all", is_flag=True, help="Also show rows whose branches have random weights (presets such as tiny).")
@click.option("--store", type=click.Path(dir_okay=False), help="Score store (default $ALIGNCORE_STORE).")
@click.option("--out", type=click.Path(dir_okay=False), help="Write to a file instead of the terminal.")
def leaderboard_cmd(suite, fmt, metric, sort, ascending, show_all, store, out) -> None:
    """One row per detector (branch fingerprints, fusion, perturbation); datasets as columns, their average,
    run ids. Rows with random-weight branches are hidden unless --all."""
    from ..leaderboard import leaderboard, render
    from ..store import ScoreStore

    with ScoreStore(store) as st:
        ds, rows = leaderboard(st, suite, metric, sort, descending=None if ascending is None else not ascending,
                               include_random=show_all)
        hidden = 0 if show_all else len(leaderboard(st, suite, metric, include_random=True)[1]) - len(rows)
    text = render(ds, rows, fmt, metric, suite)
    if not rows:
        click.echo("The leaderboard is empty" + (f" for suite {suite!r}" if suite else "") +
                   ": alignctl run or alignctl bench adds rows.", err=True)
    if hidden:
        click.echo(f"{hidden} row(s) with random-weight branches hidden (--all shows them).", err=True)
    if out:
        from pathlib import Path

        if Path(out).exists() and st.path.exists() and Path(out).resolve() == st.path.resolve():
            raise click.ClickException(f"--out {out} is the score store; choose another file for the leaderboard.")
        try:
            with open(out, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            raise click.ClickException(f"cannot write the leaderboard to {out}: {exc.strerror or exc}.") from None
        click.echo(f"written to {out}")
    else:
        click.echo(text, nl=False)
