"""``alignctl build``: build a supervision set with a registered builder."""

from __future__ import annotations

import click

from ..cli_options import echo, parse_kv


@click.command("build")
@click.argument("builder")
@click.argument("sources", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (resumes if it holds a partial set).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML/TOML/JSON builder config.")
@click.option("-o", "--option", "options", multiple=True, help="Builder option KEY=VALUE.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--overwrite", is_flag=True, help="Replace a set of another build in --out (or write among other files "
              "or the sources).")
def build_cmd(builder, sources, out, config_file, options, quiet, overwrite) -> None:
    """Build a supervision set from SOURCES (folders or manifests of images) with BUILDER."""
    from ..config import read_config_file
    from ..registry import create_builder

    cfg = read_config_file(config_file) if config_file else {}
    cfg.update(parse_kv(options, "--option"))
    b = create_builder(builder, cfg)
    manifest = b.build(sources, out, progress=not quiet, overwrite=overwrite)
    line = b.summary()
    if line:
        echo(line)
    echo(f"manifest written to {manifest}")
