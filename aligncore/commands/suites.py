"""``alignctl suites``: the benchmark suites (shipped with the package, plus $ALIGNCORE_SUITES_DIR)."""

from __future__ import annotations

import click

from ..cli_options import echo


@click.command("suites")
@click.option("--paths", is_flag=True, help="Also print the file each suite is read from.")
def suites_cmd(paths: bool) -> None:
    """List the benchmark suites and their datasets.

    Suites ship with aligncore; folders in $ALIGNCORE_SUITES_DIR
    (several joined with the path separator) add suites and override shipped ones of the same name.
    """
    from ..suites import list_suites, load_suite

    for p in list_suites():
        s = load_suite(p)
        echo(f"{s.name:<14} {s.title}" + (f"  ({p})" if paths else ""))
        for d in s.datasets:
            echo(f"    {d.name:<24} {d.path}")
