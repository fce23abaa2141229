"""``alignctl run``: score a dataset with one or more branches, fuse, write predictions and metrics."""

from __future__ import annotations

import os
import sys

import click

from ..cli_options import Scoring, echo, echo_err, parse_kv, scoring_options
from ..text import terminal_text


#: exit status of a run (or re-fusion) in which some branch failed on some image, or nothing was scored
EXIT_INCOMPLETE = 3


def print_metrics(metrics: dict) -> None:
    """What the fused metrics cover, one line of headline metrics (and why any of them is undefined)."""
    o = metrics["overall"]

    def f(v):
        return "n/a" if v is None else f"{v:.4f}"

    fitted = (metrics.get("fusion") or {}).get("fitted_on")
    if fitted:
        echo(f"fusion state fitted on {fitted['images']} image(s)"
             + (f" of run {fitted['run_id']}" if fitted.get("run_id") else "")
             + f"; {fitted['left_out_here']} of them are in this run and left out of its metrics")
    over = metrics.get("fused_over")
    if over:
        line = f"fused metrics over the {over['images']} of {over['of']} images every branch scored"
        if over.get("left_out_fitted"):
            line += f", less {over['left_out_fitted']} image(s) the fusion state was fitted on (left out)"
        echo(line)
    echo(
        f"images {o['n']} (real {o['n_real']}, fake {o['n_fake']})  acc {f(o['accuracy'])}  "
        f"real {f(o['real_accuracy'])}  fake {f(o['fake_accuracy'])}  bacc {f(o['balanced_accuracy'])}  "
        f"AP {f(o['ap'])}  AUC {f(o['auc'])}  EER {f(o.get('eer'))}  TPR@5%FPR {f(o['tpr_at_5fpr'])}"
    )
    by_reason: dict[str, list[str]] = {}
    for k, why in (o.get("undefined") or {}).items():
        by_reason.setdefault(why, []).append(k)
    for why, keys in by_reason.items():
        echo(f"  undefined ({why}): {', '.join(keys)}")


def finish_incomplete(metrics: dict, out_dir, allow_partial: bool) -> None:
    """Exit 3 with one line naming each failed branch and its counts when a branch failed on some image
    (exit 0 with --allow-partial, as long as something was scored); nothing when every branch scored every image."""
    from ..publish import coverage_summary, scored_any

    summary = coverage_summary(metrics.get("coverage", {}), metrics.get("fused_over"))
    if not summary:
        return
    any_scored = scored_any(metrics.get("coverage", {}))
    if allow_partial and any_scored:
        echo_err(f"partial run accepted (--allow-partial): {summary}")
        return
    hint = "; --allow-partial accepts it" if any_scored else ""
    echo_err(f"incomplete run: {summary} (outputs written to {out_dir}{hint})")
    sys.exit(EXIT_INCOMPLETE)


def read_fusion_state(path: str | None) -> dict | None:
    """A fusion state file as written by ``alignctl ablate`` ({"name", "config", "state", "fitted_on", ...}; an
    older bare state is accepted too). Its content is validated when the fusion takes it."""
    if not path:
        return None
    from ..parsing import read_structured

    obj = read_structured(path, "fusion state file", fmt="json")
    if not isinstance(obj, dict):
        from ..errors import ConfigError

        raise ConfigError(f"fusion state file {path} must hold a JSON object (as alignctl ablate writes it), "
                          f"not {type(obj).__name__}.")
    return obj


def allow_partial_option(f):
    return click.option("--allow-partial", is_flag=True, default=None,
                        help="Exit 0 (not 3) when a branch failed on some images; the metrics cover only the images "
                        "every branch scored either way.")(f)


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


def _relaunch(num_processes: int, scoring: Scoring, cfg) -> None:
    """Re-run this very command under ``accelerate launch`` on ``num_processes`` ranks (``cfg``: the run's
    config, already validated here, so a bad value fails before any process starts)."""
    from ..distributed import launch
    from ..runner import make_run_id, plan

    argv = _strip_option(sys.argv[1:], "--num-processes")
    if not cfg.out:  # every rank must write to the same folder
        cfg = cfg.model_copy(update={"out": os.path.join("runs", make_run_id(cfg))})
        argv += ["--out", cfg.out]
    plan(cfg)  # names, data and the output folder are checked before any process starts
    rc = launch(argv, num_processes, scoring.device)
    if rc != 0:
        raise click.ClickException(f"distributed run failed (exit code {rc}); re-run the same command to resume.")


def _print_result(result) -> None:
    for name, st in result.branches.items():
        cov = result.coverage.get(name)
        of = f" (has {cov['scored']} of {cov['total']} images)" if cov else ""
        echo(f"branch {name}: scored {st.scored}, reused from store {st.reused}, failed {st.failed}{of}  [{st.fingerprint}]")
    if result.skipped:
        echo(f"skipped {len(result.skipped)} file(s):")
        for path, why in result.skipped:  # one line each, whatever the name holds
            echo(f"  {terminal_text(path)}: {terminal_text(why)}")
    print_metrics(result.metrics)
    echo(f"run {result.run_id} written to {result.out_dir}")


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
@allow_partial_option
@click.option("--num-processes", type=int, default=1, show_default=True,
              help="Shard scoring across N processes (GPUs, or CPU ranks; at most one per GPU or core) with accelerate launch.")
@click.option("--overwrite", is_flag=True, default=None,
              help="Write into an --out folder that holds other files, the data, or a run of another configuration.")
@click.option("--profile", is_flag=True, help="Measure each stage (wall and CPU time, loader workers included) and count "
              "files read, images decoded, windows, forward batches and store writes: printed and written to RUN/profile.json.")
def run_cmd(scoring: Scoring, data, data_options, allow_download, config_file, workers, out, explain,
            allow_outside_paths, suite, perturb, fusion_state, allow_partial, num_processes, overwrite, profile) -> None:
    """Score a dataset with one or more branches, fuse, and write predictions and metrics.

    Exit status 3 when a branch failed on some image (every output is still written; the metrics
    cover only the images every branch scored), or when no image could be scored; --allow-partial
    makes the first case exit 0."""
    from ..config import make_run_config
    from ..limits import check_ranks
    from ..runner import run

    cfg = make_run_config(
        config_file, **scoring.run_options(), data=data, workers=workers, out=out, explain=explain,
        allow_outside_paths=allow_outside_paths, suite=suite, perturb=perturb,
        fusion_state=read_fusion_state(fusion_state), data_options=parse_kv(data_options, "--data-option") or None,
        allow_download=allow_download, allow_partial=allow_partial, overwrite=overwrite)
    if fusion_state:
        from ..planning import check_fusion_state

        check_fusion_state(cfg, where=f"fusion state {fusion_state}")
    if num_processes != 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        check_ranks(num_processes, cfg.device)
        _relaunch(num_processes, scoring, cfg)
        return
    result = run(cfg, progress=scoring.progress, log=None if scoring.quiet else echo_err, profile=profile)
    if not result.is_main:  # a non-zero rank of a distributed run: rank 0 reports
        return
    _print_result(result)
    if result.profile is not None:
        from ..profiling import format_report
        from ..rundir import PROFILE

        echo(format_report(result.profile))
        echo(f"profile written to {result.out_dir / PROFILE}")
    if config_file:
        _compare_with_recorded(config_file, result)
    finish_incomplete(result.metrics, result.out_dir, cfg.allow_partial)


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
