"""``alignctl study``: run a study file (or a shipped recipe) as resumable, content-addressed cells; report its tables."""

from __future__ import annotations

from pathlib import Path

import click

from ..cli_options import DEVICE, echo_err, parse_kv


@click.group("study")
def study_group() -> None:
    """Studies as code: sets x models x evaluation x fusions x seeds, from one file.

    \b
      alignctl study list                                   the shipped recipes
      alignctl study run alignment-matrix --scale tiny      offline, a few minutes on a CPU
      alignctl study run my-study.yaml --data-root DATA     full scale (see the README for the layout)
      alignctl study report studies/alignment-matrix-tiny   tables (Markdown, CSV, JSON, HTML) + leaderboard
    """


@study_group.command("list")
@click.option("--paths", is_flag=True, help="Also print the file each recipe is read from.")
def list_cmd(paths: bool) -> None:
    """List the recipes (shipped with aligncore, plus $ALIGNCORE_STUDIES_DIR)."""
    import yaml

    from ..study import list_recipes

    for name, p in list_recipes().items():
        try:
            title = (yaml.safe_load(p.read_text(encoding="utf-8")) or {}).get("title", "")
        except (OSError, yaml.YAMLError) as exc:
            title = f"(cannot be read: {exc})"
        click.echo(f"{name:<20} {title}" + (f"  ({p})" if paths else ""))


@study_group.command("show")
@click.argument("recipe")
def show_cmd(recipe: str) -> None:
    """Print a recipe's file (copy it to make a study of your own)."""
    from ..study import find_recipe

    click.echo(find_recipe(recipe).read_text(encoding="utf-8"), nl=False)


@study_group.command("run")
@click.argument("study")
@click.option("--out", type=click.Path(file_okay=False), help="Study folder (default studies/NAME, studies/NAME-tiny "
              "at --scale tiny). Running again into the same folder reuses every finished cell.")
@click.option("--scale", type=click.Choice(["full", "tiny"]), default="full", show_default=True,
              help="tiny: every model its tiny preset, every set a small sample (offline photos when no --data-root).")
@click.option("--data-root", type=click.Path(file_okay=False, exists=True), help="Data for ${data}: DIR/train and "
              "DIR/test (real/<source>/, fake/<generator>/ folders, or train.csv / test.csv manifests).")
@click.option("--dry-run", is_flag=True, help="Print the plan (every cell, and whether it is cached) and stop.")
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE",
              help="Override a field of the study file, e.g. models.npr-pixel.train.lr=0.002 (repeatable).")
@click.option("--var", "variables", multiple=True, metavar="NAME=VALUE", help="A ${NAME} the study declares under vars.")
@click.option("--device", type=DEVICE, default="auto", show_default=True, help="Device for building, training, scoring.")
@click.option("--store", type=click.Path(dir_okay=False), help="Score store (default OUT/store.sqlite).")
@click.option("--cache", type=click.Path(file_okay=False), help="Cell folder, e.g. one shared by several studies "
              "(default OUT/cells).")
@click.option("--threads", type=click.IntRange(1, 256), help="torch CPU threads (default: 1 at --scale tiny, where "
              "tiny models run fastest on one thread and more only contend for shared cores; torch's own otherwise).")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines or bars.")
def run_cmd(study, out, scale, data_root, dry_run, overrides, variables, device, store, cache, threads, quiet) -> None:
    """Run STUDY (a study file, or a recipe name from `alignctl study list`).

    Every cell (data, set, train, score, fuse, audit) is keyed by its inputs and its own options: a
    killed study resumes, an unchanged cell is never recomputed, and a changed option recomputes only
    the cells that depend on it. The study file is checked completely before any work.
    """
    import time

    from ..study import load_study, plan_status, plan_study, run_study
    from ..study.execute import resolve_paths

    sf, spec = load_study(study, overrides)
    var_values = {k: str(v) for k, v in parse_kv(variables, "--var").items()}
    plan = plan_study(sf, spec, scale, data_root, var_values, device)
    folder = Path(out) if out else Path("studies") / (spec.name + ("-tiny" if scale == "tiny" else ""))
    if dry_run:
        cells_root, _ = resolve_paths(folder, cache, store)
        status = plan_status(plan, cells_root)
        cached = sum(status.values())
        click.echo(f"study {spec.name} at {scale} scale into {folder}: {len(plan.cells)} cells, {cached} cached, "
                   f"{len(plan.cells) - cached} to compute")
        width = max(len(c.kind) for c in plan.cells)
        for c in plan.cells:
            click.echo(f"  {'cached ' if status[c.key] else 'compute'}  {c.kind:<{width}}  {c.short}  {c.label}")
        return
    if threads or scale == "tiny":
        import torch

        torch.set_num_threads(threads or 1)
    t0 = time.monotonic()
    res = run_study(plan, folder, cache=cache, store=store, progress=not quiet, log=None if quiet else echo_err,
                    overrides=overrides, variables=var_values)
    kinds: dict[str, int] = {}
    for c in res.computed:
        kinds[c.kind] = kinds.get(c.kind, 0) + 1
    detail = f" ({', '.join(f'{k} {n}' for k, n in kinds.items())})" if kinds else ""
    click.echo(f"study {spec.name} ({scale} scale) finished in {time.monotonic() - t0:.0f}s: {len(plan.cells)} cells, "
               f"{len(res.reused)} reused, {len(res.computed)} computed{detail}")
    click.echo(f"folder: {folder}")
    click.echo(f"tables: alignctl study report {folder}")


@study_group.command("report")
@click.argument("study_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["text", "md", "csv", "json", "html"]), default="text",
              show_default=True, help="What to print; every format is also written to the report folder.")
@click.option("--out", type=click.Path(file_okay=False), help="Report folder (default STUDY_DIR/report).")
@click.option("--store", type=click.Path(dir_okay=False), help="Leaderboard store for the rows (default the study's).")
def report_cmd(study_dir, fmt, out, store) -> None:
    """Print a study's tables and write them (tables.md, tables.csv, tables.json, report.html); every row also goes
    to the leaderboard with suite = the study's name."""
    from ..study import make_report, publish_leaderboard, write_report
    from ..study.report import to_csv, to_html, to_json, to_markdown, to_text

    rep = make_report(study_dir)
    files = write_report(rep, out)
    added = publish_leaderboard(rep, store)
    render = {"text": to_text, "md": to_markdown, "csv": to_csv, "json": to_json, "html": to_html}[fmt]
    click.echo(render(rep), nl=False)
    echo_err(f"written: {', '.join(str(p) for p in files.values())}")
    where = store or rep.study.store
    echo_err(f"leaderboard: {added} row(s) added; alignctl leaderboard --store {where} --suite {rep.study.name}")
