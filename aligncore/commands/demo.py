"""``alignctl demo``: the offline end-to-end demonstration."""

from __future__ import annotations

import click

from ..cli_options import echo


@click.command("demo")
@click.option("--out", type=click.Path(file_okay=False), default="demo-out", show_default=True, help="Working folder.")
@click.option("--images", type=int, default=None, help="Number of source photo crops (default: the plan's).")
@click.option("--weights", "--ae-weights", "weights", type=click.Path(file_okay=False, exists=True), default=None,
              help="Folder with real weights for the demo's components (each plugin names the files it looks for; "
                   "default: $ALIGNCORE_SHARED/weights if set, else random-weight tiny models).")
def demo_cmd(out, images, weights) -> None:
    """Offline end-to-end demonstration on bundled photos: build sets, train tiny branches, score,
    ablate fusions, print the leaderboard and write the HTML report (a few minutes on a CPU)."""
    from ..demo import run_demo

    run_demo(out, n_images=images, echo=echo, weights=weights)
