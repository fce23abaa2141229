"""``alignctl leaderboard``: one row per detector configuration, datasets as columns."""

from __future__ import annotations

import click


@click.command("leaderboard")
@click.option("--suite", help="Only rows recorded for this suite.")
@click.option("--format", "fmt", type=click.Choice(["table", "md", "csv", "json", "html"]), default="table", show_default=True)
@click.option("--metric", default="accuracy", show_default=True,
              help="accuracy, real_accuracy, fake_accuracy, balanced_accuracy, ap, auc, tpr_at_1fpr, tpr_at_5fpr.")
@click.option("--sort", help="Column to sort by (default: average).")
@click.option("--ascending", is_flag=True, help="Sort ascending instead of descending.")
@click.option("--store", type=click.Path(dir_okay=False), help="Score store (default $ALIGNCORE_STORE).")
@click.option("--out", type=click.Path(dir_okay=False), help="Write to a file instead of the terminal.")
def leaderboard_cmd(suite, fmt, metric, sort, ascending, store, out) -> None:
    """One row per (branches, checkpoints, fusion, perturbation); datasets as columns, their average, run ids."""
    from ..leaderboard import leaderboard, render
    from ..store import ScoreStore

    with ScoreStore(store) as st:
        ds, rows = leaderboard(st, suite, metric, sort, descending=not ascending)
    text = render(ds, rows, fmt, metric, suite)
    if not rows:
        click.echo("The leaderboard is empty" + (f" for suite {suite!r}" if suite else "") +
                   ": alignctl run or alignctl bench adds rows.", err=True)
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
