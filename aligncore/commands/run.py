"""``alignctl run``: score a dataset with one or more branches, fuse, write predictions and metrics."""

from __future__ import annotations

import json
import os
import sys

import click

from ..cli_options import Scoring, echo_err, parse_kv, scoring_options


def print_metrics(metrics: dict) -> None:
    """One line of headline metrics (and why any of them is undefined)."""
    o = metrics["overall"]

    def f(v):
        return "n/a" if v is None else f"{v:.4f}"

    click.echo(
        f"images {o['n']} (real {o['n_real']}, fake {o['n_fake']})  acc {f(o['accuracy'])}  "
        f"real {f(o['real_accuracy'])}  fake {f(o['fake_accuracy'])}  bacc {f(o['balanced_accuracy'])}  "
        f"AP {f(o['ap'])}  AUC {f(o['auc'])}  TPR@5%FPR {f(o['tpr_at_5fpr'])}"
    )
    for k, why in (o.get("undefined") or {}).items():
        click.echo(f"  {k}: undefined ({why})")


def read_fusion_state(path: str | None) -> dict | None:
    """A fusion state file: either the bare state or ablate's {"name", "config", "state"} entry."""
    if not path:
        return None
    with open(path, encoding="utf-8") as f:
        obj = json.load(f)
    return obj.get("state", obj) if isinstance(obj, dict) else None


def fusion_state_option(f):
    return click.option("--fusion-state", "fusion_state", type=click.Path(exists=True, dir_okay=False),
                        help="JSON state of a fitted fusion (written by alignctl ablate), e.g. for --fusion learned.")(f)


def _strip_option(argv: list[str], name: str) -> list[str]:
    """``argv`` without ``name VALUE`` / ``name=VALUE``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == name:
            skip = True
            continue
        if a.startswith(name + "="):
            continue
        out.append(a)
    return out


def _relaunch(num_processes: int, scoring: Scoring, config_file: str | None, data: str | None, out: str | None) -> None:
    """Re-run this very command under ``accelerate launch`` on ``num_processes`` ranks."""
    from ..config import make_run_config
    from ..distributed import launch
    from ..runner import make_run_id

    argv = _strip_option(sys.argv[1:], "--num-processes")
    if not out:  # every rank must write to the same folder
        cfg = make_run_config(config_file, branches=scoring.branches, data=data or "-")
        argv += ["--out", os.path.join("runs", make_run_id(cfg))]
    rc = launch(argv, num_processes, scoring.device)
    if rc != 0:
        raise click.ClickException(f"distributed run failed (exit code {rc}); re-run the same command to resume.")


def _print_result(result) -> None:
    for name, st in result.branches.items():
        click.echo(f"branch {name}: scored {st.scored}, reused from store {st.reused}, failed {st.failed}  [{st.fingerprint}]")
    if result.skipped:
        click.echo(f"skipped {len(result.skipped)} file(s):")
        for path, why in result.skipped:
            click.echo(f"  {path}: {why}")
    print_metrics(result.metrics)
    click.echo(f"run {result.run_id} written to {result.out_dir}")


@click.command("run")
@click.option("--data", help="Dataset: a folder (0_real/1_fake, real/fake), a CSV/JSONL manifest, a parquet or Arrow "
              "table, a datasets.save_to_disk folder, or hf:OWNER/NAME[:SPLIT] (from the Hugging Face cache).")
@click.option("--data-option", "data_options", multiple=True,
              help="How to read a table: image_column=, label_column=, generator_column=, labels={ai: 1, human: 0}, "
                   "split=.")
@click.option("--allow-download", is_flag=True, default=None,
              help="Download an hf: dataset or checkpoint missing from the Hugging Face cache (never by default).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="YAML/TOML/JSON run config (e.g. configs/run.yaml), or a run's RUN/config.yaml to repeat it.")
@scoring_options(branches_required=False, default_fusion=None)
@click.option("--workers", type=int, help="Data loader workers (default 0).")
@click.option("--out", type=click.Path(file_okay=False), help="Run directory (default runs/<run id>).")
@click.option("--explain", is_flag=True, default=None, help="Store a short rationale from branches that can explain.")
@click.option("--allow-outside-paths", is_flag=True, default=None, help="Allow manifest paths outside its folder.")
@click.option("--suite", help="Benchmark suite name recorded with the leaderboard row.")
@click.option("--perturb", help="Perturb every image before scoring: jpeg:75, webp:80, blur:1.0, resize:0.5, crop:0.8 (chain with +).")
@fusion_state_option
@click.option("--num-processes", type=int, default=1, show_default=True,
              help="Shard scoring across N processes (GPUs, or CPU ranks) with accelerate launch.")
@click.option("--profile", is_flag=True, help="Measure each stage (wall and CPU time, loader workers included) and count "
              "files read, images decoded, windows, forward batches and store writes: printed and written to RUN/profile.json.")
def run_cmd(scoring: Scoring, data, data_options, allow_download, config_file, workers, out, explain,
            allow_outside_paths, suite, perturb, fusion_state, num_processes, profile) -> None:
    """Score a dataset with one or more branches, fuse, and write predictions and metrics."""
    from ..config import make_run_config
    from ..runner import run

    if num_processes > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        _relaunch(num_processes, scoring, config_file, data, out)
        return
    cfg = make_run_config(
        config_file, **scoring.run_options(), data=data, workers=workers, out=out, explain=explain,
        allow_outside_paths=allow_outside_paths, suite=suite, perturb=perturb,
        fusion_state=read_fusion_state(fusion_state), data_options=parse_kv(data_options, "--data-option") or None,
        allow_download=allow_download)
    result = run(cfg, progress=scoring.progress, log=None if scoring.quiet else echo_err, profile=profile)
    if not result.is_main:  # a non-zero rank of a distributed run: rank 0 reports
        return
    _print_result(result)
    if result.profile is not None:
        from ..profiling import format_report
        from ..rundir import PROFILE

        click.echo(format_report(result.profile))
        click.echo(f"profile written to {result.out_dir / PROFILE}")
    if config_file:
        _compare_with_recorded(config_file, result)


def _compare_with_recorded(config_file: str, result) -> None:
    """Repeating a run from its RUN/config.yaml: say which branch no longer has the recorded fingerprint."""
    from ..config import is_run_record, read_config_file

    recorded = read_config_file(config_file)
    if not is_run_record(recorded):
        return
    for name, st in result.branches.items():
        before = (recorded.get("fingerprints") or {}).get(name)
        if before and before != st.fingerprint:
            echo_err(f"warning: branch {name}'s fingerprint {st.fingerprint} differs from the recorded run's {before}: "
                     "the code, options or weights changed since, so its scores may differ.")
