"""Report a scored run: fuse its score table, publish the run folder, record the run (the last stage of
:func:`aligncore.runner.run`, and all of :func:`refuse`, which re-fuses a finished run from its scores).

The coverage rule lives here: a fused score and verdict are given only for images every branch scored,
and a run in which a branch failed on some image (:func:`coverage_summary` is not empty) is *partial*: it
gets no leaderboard row unless the run allows it. A fitted fusion state's own images are left out of
every metric.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import leaderboard, profiling
from .errors import AlignCoreError
from .fusion import FusionOutput, load_state
from .metrics import compute_metrics
from .registry import get_registry
from .rundir import RunDir, ScoreTable
from .store import ScoreStore

if TYPE_CHECKING:
    from .planning import ResolvedRun


def coverage_summary(coverage: dict[str, dict[str, int]], fused_over: dict | None = None) -> str:
    """``branch B failed on 12 of 12 images; fused metrics over 0 images`` ("" when nothing failed)."""
    failed = [f"branch {b} failed on {c['failed']} of {c['total']} images" for b, c in coverage.items() if c["failed"]]
    total = max((c["total"] for c in coverage.values()), default=0)
    if not failed and total > 0:
        return ""
    if total == 0:
        return "no image could be read, so nothing was scored"
    n = (fused_over or {}).get("images")
    tail = f"; fused metrics cover the {n} image(s) every branch scored" if n is not None else ""
    return "; ".join(failed) + tail


def scored_any(coverage: dict[str, dict[str, int]]) -> bool:
    """At least one image was scored by at least one branch (a partial run can still be accepted)."""
    return any(c["scored"] > 0 for c in coverage.values())



def fuse(table: ScoreTable, fusion, state: dict | None = None) -> tuple[FusionOutput, dict]:
    """The fused output over ``table`` and the metrics of the fused verdicts and of each branch alone.

    A fused score and verdict are given only for images every branch scored; the fused metrics are
    over those images, each branch's over the images it scored (``coverage`` says how many). With a
    ``state`` (a fitted fusion), the images it was fitted on are left out of every metric.
    """
    fitted = load_state(fusion, state, table.branches)
    if fusion.needs_fit and fitted is None:
        raise AlignCoreError(
            f"fusion {fusion.name!r} must be fitted on labelled scores first; "
            "fit it on a calibration split (alignctl ablate) and pass its state, or choose a rule such as 'or'."
        )
    if fitted is not None:
        fusion = fitted[0]
    complete = table.complete()
    if len(table):
        fused = fusion.predict(table.scores)
        fused = FusionOutput(np.where(complete, fused.score, np.nan), fused.verdict & complete)
    else:
        fused = FusionOutput(np.array([]), np.array([], dtype=bool))
    fitted_on = set(fitted[1].fitted_on) if fitted is not None else set()
    measured = np.array([h not in fitted_on for h in table.sha256], dtype=bool)
    view = table.subset(measured) if fitted_on else table
    f_score, f_verdict = (fused.score[measured], fused.verdict[measured]) if fitted_on else (fused.score, fused.verdict)
    metrics = compute_metrics(view.labels, f_score, f_verdict, view.generators, view.subsets)
    metrics["coverage"] = table.coverage()
    metrics["fused_over"] = {"images": int(complete.sum()), "of": len(table),
                             "rule": "images every branch scored (a missing score is never read as real)"}
    if fitted_on:
        metrics["fused_over"]["left_out_fitted"] = int((~measured).sum())
    state_out = fusion.state_dict()
    metrics["fusion"] = {"name": fusion.name, "config": fusion.config.model_dump(mode="json"), "state": state_out,
                         "fingerprint": fusion.fingerprint()}
    if fitted is not None:
        metrics["fusion"]["fitted_on"] = {"images": len(fitted_on), "left_out_here": int((~measured).sum()),
                                          **{k: v for k, v in fitted[1].info.items() if k in ("run_id", "dataset")}}
    metrics["skipped"] = len(table.skipped)
    metrics["per_branch"] = {b: compute_metrics(view.labels, s, s >= 0.5)["overall"] for b, s in view.scores.items()}
    return fused, metrics


def write_run(out: Path, run_id: str, kind: str, table: ScoreTable, fusion, resolved: dict,
              store: ScoreStore | None, summary: dict | None = None) -> dict:
    """Fuse, publish the run folder, and record the run (and, unless a branch failed on some image and the
    run does not allow that, its leaderboard row) in ``store``."""
    with profiling.stage("fuse + metrics"):
        fused, metrics = fuse(table, fusion, resolved.get("fusion_state"))
    fusion_cfg = metrics["fusion"]
    partial = bool(coverage_summary(metrics["coverage"]))
    with profiling.stage("write run folder"):
        RunDir.write(out, run_id=run_id, kind=kind, table=table, fused=fused, metrics=metrics, config=resolved,
                     summary=summary)
    if store is not None:
        store.add_run(run_id, kind, str(out), resolved, summary)
        if not partial or resolved.get("allow_partial"):
            leaderboard.add_row(
                store, run_id=run_id, dataset=resolved.get("dataset_name") or Path(resolved["dataset"]["root"]).name,
                branches=table.branches, fusion=fusion.name, metrics=metrics, checkpoints=resolved.get("checkpoints"),
                fusion_config=fusion_cfg["config"], suite=resolved.get("suite"), perturb=resolved.get("perturb"),
                fingerprints=resolved.get("fingerprints"), weights=resolved.get("weights"),
                fusion_fingerprint=fusion_cfg["fingerprint"],
            )
    return metrics


def resolved_config(rr: ResolvedRun, store: ScoreStore, fingerprints: dict[str, str]) -> dict:
    """The run's config as run: every setting, plus what was resolved (fingerprints, store, dataset)."""
    resolved = rr.config.model_dump(mode="json")
    resolved.update(
        run_id=rr.run_id, out=str(rr.out), store=str(store.path), fingerprints=fingerprints,
        weights={b.name: b.weights_provenance() for b in rr.branches},
        checkpoints={b.name: b.config.checkpoint for b in rr.branches if b.config.checkpoint},
        branch_configs={b.name: b.config.model_dump(mode="json") for b in rr.branches},
        dataset={"root": rr.dataset.root, "layout": rr.dataset.layout, "n_records": len(rr.dataset.records)},
    )
    return resolved



def refuse(run_dir: str | Path, fusion_name: str, fusion_options: dict | None = None,
           store_path: str | None = None, fusion_state: dict | None = None,
           allow_partial: bool | None = None, state_source: str | None = None) -> tuple[Path, dict]:
    """Re-fuse a finished run from its recorded scores (no model is loaded); writes RUN/fusions/<name>/."""
    rd = RunDir.open(run_dir)
    fusion = get_registry().create("fusion", fusion_name, fusion_options or {})
    # checked now, named after its file in every error (write_run applies it again to the fusion it fuses with)
    load_state(fusion, fusion_state, list(rd.config.get("fingerprints") or rd.config.get("branches") or []),
               state_source or "the fusion state")
    resolved = dict(rd.config)
    resolved.update(fusion=fusion_name, fusion_options=fusion_options or {}, fusion_state=fusion_state)
    if allow_partial is not None:
        resolved["allow_partial"] = allow_partial
    out = rd.path / "fusions" / fusion_name
    store = ScoreStore(store_path or resolved.get("store"))
    try:
        return out, write_run(out, f"{rd.run_id}+{fusion_name}", "fuse", rd.scores(), fusion, resolved, store)
    finally:
        store.close()
