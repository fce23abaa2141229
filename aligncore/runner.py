"""Scoring runs: plan → score (optionally sharded across ranks) → gather → report.

Every branch score goes to the SQLite store as soon as its batch is done, keyed by
(image sha256, branch fingerprint). A run that is killed and started again, a second
run on overlapping data, or a re-fusion scores only what is missing. Each image that any
branch still needs is read and decoded once for all of them (:mod:`aligncore.data.loader`);
scores go through :mod:`aligncore.scoring`; the run folder is written by :class:`RunDir`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import leaderboard, profiling
from .config import RunConfig
from .data import Dataset, Record, load_dataset
from .data.datasets import hash_records
from .data.loader import UNREADABLE, LoadItem, load_images, size_bucket
from .distributed import DistContext, gather_reports, merge_shards, open_shard, sum_reports
from .errors import AlignCoreError
from .fusion import FittedState, FusionOutput, apply_state, parse_state
from .metrics import compute_metrics
from .perturb import PerturbChain, parse_perturb, perturbed_fingerprint
from .registry import get_registry
from .rundir import SHARDS, RunDir, ScoreTable, make_run_id
from .scoring import BranchScorer, Scored, create_branches
from .store import ScoreStore


#: the key of a file's own error (unreadable, not decodable) in the per-image errors {sha256: {branch: why}}
FILE_ERROR = ""


@dataclass
class BranchStats:
    fingerprint: str
    scored: int = 0
    reused: int = 0
    failed: int = 0


@dataclass
class RunResult:
    run_id: str
    out_dir: Path
    metrics: dict  # empty on a rank other than the main one
    branches: dict[str, BranchStats]
    skipped: list[tuple[str, str]]
    table: ScoreTable | None = None
    is_main: bool = True  # False on the other ranks of a distributed run: rank 0 gathers and reports
    profile: dict | None = None  # with run(..., profile=True): per-stage times and counts (RUN/profile.json)

    @property
    def coverage(self) -> dict[str, dict[str, int]]:
        """{branch: {"scored", "failed", "total"}} over the run's readable images."""
        return self.metrics.get("coverage", {})

    @property
    def complete(self) -> bool:
        """Every branch scored every readable image (and there was at least one)."""
        cov = self.coverage
        return bool(cov) and all(c["failed"] == 0 and c["total"] > 0 for c in cov.values())

    @property
    def scored_any(self) -> bool:
        """At least one image was scored by at least one branch."""
        return any(c["scored"] > 0 for c in self.coverage.values())

    def incomplete_summary(self) -> str:
        """One line naming every branch that failed and its counts ("" for a complete run)."""
        return coverage_summary(self.coverage, self.metrics.get("fused_over", {}))


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


@dataclass
class ResolvedRun:
    """A run with every name resolved and every component built (no model loaded yet)."""

    config: RunConfig
    run_id: str
    out: Path
    branches: list  # Branch objects, in config order
    fusion: Any
    dataset: Dataset
    dist: DistContext
    perturb: PerturbChain | None

    def fingerprints(self) -> dict[str, str]:
        """Store keys: each branch's fingerprint, plus the perturbation (never mixed with clean scores)."""
        if getattr(self, "_fingerprints", None) is None:  # a checkpoint's digest is computed once per run
            spec = self.perturb.spec if self.perturb else None
            self._fingerprints = {b.name: perturbed_fingerprint(b.fingerprint(), spec) for b in self.branches}
        return dict(self._fingerprints)


@dataclass
class ScoringJob:
    """The run's images and, for this rank, which branches still need which image."""

    records: list[Record]
    hashes: list[str | None]  # None: the file could not be read
    unreadable: list[tuple[str, str]]
    fingerprints: dict[str, str]
    reused: dict[str, int]  # images each branch finds in the main store
    todo: list[LoadItem] = field(default_factory=list)  # key = record index, needs = branch indices


# ---------------------------------------------------------------------- plan


def plan(config: RunConfig, branches: list | None = None) -> ResolvedRun:
    """Resolve names, build components, read the dataset and check the run folder, before any work.
    ``branches``: already built branch objects for ``config.branches`` (same names, same order)."""
    fusion = get_registry().create("fusion", config.fusion, config.fusion_options)
    check_fusion_state(config, fusion)  # a bad state fails now, not after every image is scored
    if branches is None:
        branches = create_branches(config.branches, config.device, config.preset, config.batch_size,
                                   config.branch_options, config.allow_download)
    elif [b.name for b in branches] != list(config.branches):
        raise AlignCoreError(f"the branches given ({', '.join(b.name for b in branches)}) are not the run's "
                             f"({', '.join(config.branches)}).")
    dataset = load_dataset(config.data, allow_outside=config.allow_outside_paths, options=config.data_options or None,
                           allow_download=config.allow_download)
    dist = DistContext.from_env()
    if dist.enabled and not config.out:
        raise AlignCoreError("a distributed run needs --out (alignctl run --num-processes sets it for you).")
    out = Path(config.out or Path("runs") / make_run_id(config))
    # every rank must agree on the id, so a distributed run is named after its directory
    run_id = make_run_id(config) if (config.out and not dist.enabled) else out.name
    rr = ResolvedRun(config, run_id, out, branches, fusion, dataset, dist, parse_perturb(config.perturb))
    if dist.is_main:
        # never over the data, a folder of the user's or another run (unless --overwrite); then writable
        RunDir.check_output(out, {"dataset": {"root": dataset.root}, "fingerprints": rr.fingerprints(),
                                  "fusion": config.fusion, "fusion_options": config.fusion_options,
                                  "fusion_state": config.fusion_state}, config.data, config.overwrite)
        RunDir.check_writable(out)
    return rr


def check_fusion_state(config: RunConfig, fusion=None, where: str = "the fusion state") -> None:
    """Validate ``config.fusion_state`` against the fusion and the run's branches (types, finite numbers,
    shapes, branch names), raising a ConfigError that names ``where``."""
    if not config.fusion_state:
        return
    fusion = fusion or get_registry().create("fusion", config.fusion, config.fusion_options)
    apply_state(fusion, parse_state(config.fusion_state, where), config.branches, where)


def plan_job(rr: ResolvedRun, store: ScoreStore, rank_store: ScoreStore | None = None) -> ScoringJob:
    """Which (image, branch) scores are missing from ``store``; with ranks, this rank's share of the images
    (every rank computes the same list), less what this rank's shard already holds from a killed attempt."""
    records = rr.dataset.records
    with profiling.stage("hash files"):
        hashes, unreadable = hash_records(records)
    profiling.count("files_hashed", len(records))
    first = {h: i for i, h in reversed(list(enumerate(hashes))) if h is not None}  # identical files: scored once
    with profiling.stage("fingerprints"):
        fps = rr.fingerprints()
    needs: dict[int, list[int]] = {}
    reused = {}
    for bi, (name, fp) in enumerate(fps.items()):
        with profiling.stage("store lookup"):
            have = store.known(fp, first)
        reused[name] = len(have)
        for h, i in first.items():
            if h not in have:
                needs.setdefault(i, []).append(bi)
    mine = sorted(needs)[rr.dist.rank :: rr.dist.world]
    if rank_store is not None:
        done = [rank_store.known(fp, [hashes[i] for i in mine]) for fp in fps.values()]
        needs = {i: [bi for bi in needs[i] if hashes[i] not in done[bi]] for i in mine}
    todo = [LoadItem(i, records[i].path, tuple(needs[i]), records[i].source) for i in mine if needs[i]]
    if any(rr.branches[bi].bucket_by_size for it in todo for bi in it.needs):
        todo.sort(key=lambda it: size_bucket(it.path, it.source))
    return ScoringJob(records, hashes, unreadable, fps, reused, todo)


# ---------------------------------------------------------------------- score


def score(job: ScoringJob, rr: ResolvedRun, target: ScoreStore,
          progress: bool = True) -> tuple[dict[str, BranchStats], dict[str, dict[str, str]]]:
    """Decode each image of ``job.todo`` once, score it with every branch that needs it, and store every
    batch as soon as it is scored. Returns the counts and the per-image errors ({sha256: {branch: why}})."""
    names = [b.name for b in rr.branches]
    stats = {n: BranchStats(job.fingerprints[n], reused=job.reused[n]) for n in names}
    errors: dict[str, dict[str, str]] = {}
    busy = sorted({bi for it in job.todo for bi in it.needs})
    if not busy:
        return stats, errors
    with profiling.stage("load models"):
        scorers = {bi: BranchScorer(rr.branches[bi].ensure_loaded(), rr.config.explain) for bi in busy}
    prof = profiling.current()
    counts_before = {bi: rr.branches[bi].score_counts() for bi in busy} if prof is not None else {}

    def commit(bi: int, results: list[Scored]) -> None:
        name, rows = names[bi], []
        for r in results:
            h = job.hashes[r.key]  # type: ignore[index]
            if r.error is None:
                rows.append((h, r.score, r.explanation, None, r.logit))
            else:
                errors.setdefault(h, {})[name] = f"branch {name!r} failed: {r.error}"  # type: ignore[index]
        stats[name].scored += len(rows)
        stats[name].failed += len(results) - len(rows)
        if rows:
            with profiling.stage("store write"):
                target.put_scores(job.fingerprints[name], name, rows)
            profiling.count("store_writes")
            profiling.count("scores_stored", len(rows))

    chunk = min(s.batch_size for s in scorers.values())
    bar = _bar(len(job.todo), "score " + ",".join(names[bi] for bi in busy)) if progress else None
    preprocess = [b.preprocess for b in rr.branches]
    batches = load_images(job.todo, preprocess, chunk, rr.config.workers, rr.perturb, profile=prof is not None)
    started = prof.now() if prof is not None else None
    for loaded in batches if prof is None else _waited(batches, prof, names):
        for key, inputs, errs in loaded:
            for bi, why in errs.items():
                who = FILE_ERROR if bi == UNREADABLE else names[bi]
                errors.setdefault(job.hashes[key], {})[who] = why  # type: ignore[index]
            for bi, x in inputs.items():
                commit(bi, scorers[bi].add(key, x))
        if bar is not None:
            bar.update(len(loaded))
    for bi, scorer in scorers.items():
        commit(bi, scorer.flush())
    if bar is not None:
        bar.close()
    if prof is not None:
        prof.add_since("scoring loop (loader wait through store write)", started)
        for bi in busy:
            now = rr.branches[bi].score_counts()
            for k, v in now.items():
                prof.count(k, v - counts_before[bi].get(k, 0), per=names[bi])
    return stats, errors


def _waited(batches, prof: "profiling.Profile", names: list[str]):
    """``batches`` with the time spent waiting for each (``loader wait``) and the loader's own timings profiled."""
    it = iter(batches)
    while True:
        with prof.stage("loader wait"):
            loaded = next(it, None)
        if loaded is None:
            return
        if loaded.timings is not None:
            prof.add_loader(loaded.timings, names)
        yield loaded


def _bar(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, leave=False)


# ---------------------------------------------------------------------- gather


def gather_ranks(rr: ResolvedRun, stats: dict[str, BranchStats], errors: dict, store: ScoreStore) -> tuple[dict, dict] | None:
    """Rank 0: every rank's counts summed, their errors joined, their shards merged; other ranks: None."""
    shard_dir = rr.out / SHARDS
    reports = gather_reports(shard_dir, rr.dist, {"stats": {k: vars(v) for k, v in stats.items()}, "errors": errors})
    if reports is None:
        return None
    counts, joined = sum_reports(reports)
    merge_shards(shard_dir, store)
    return {k: BranchStats(v.fingerprint, counts[k]["scored"], v.reused, counts[k]["failed"]) for k, v in stats.items()}, joined


def gather(job: ScoringJob, store: ScoreStore, errors: dict[str, dict[str, str]]) -> ScoreTable:
    """Every readable image with every branch's valid stored score (NaN where a branch failed on it); files
    that could not be read or decoded are skipped with their reason."""
    known = [h for h in job.hashes if h]
    stored = {b: store.get_scores(fp, known) for b, fp in job.fingerprints.items()}
    scores = {b: {h: row[0] for h, row in got.items()} for b, got in stored.items()}
    logits = {b: {h: row[3] for h, row in got.items()} for b, got in stored.items()}
    keep, skipped = [], list(job.unreadable)
    for r, h in zip(job.records, job.hashes):
        if h is None:
            continue
        if FILE_ERROR in errors.get(h, {}) and all(scores[b].get(h) is None for b in scores):
            skipped.append((r.path, errors[h][FILE_ERROR]))
        else:
            keep.append((r, h))
    return ScoreTable.from_records([r for r, _ in keep], [h for _, h in keep], scores, errors, skipped, logits)


# ---------------------------------------------------------------------- report


def fuse(table: ScoreTable, fusion, state: dict | None = None) -> tuple[FusionOutput, dict]:
    """The fused output over ``table`` and the metrics of the fused verdicts and of each branch alone.

    A fused score and verdict are given only for images every branch scored; the fused metrics are
    over those images, each branch's over the images it scored (``coverage`` says how many). With a
    ``state`` (a fitted fusion), the images it was fitted on are left out of every metric.
    """
    fitted = _load_state(fusion, state, table.branches)
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


def _load_state(fusion, state: dict | None, branches: list[str]) -> tuple[Any, FittedState] | None:
    """(the fusion with the state applied, the parsed state), or None without a state."""
    if not state:
        return None
    fitted = parse_state(state)
    return apply_state(fusion, fitted, branches), fitted


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


# ---------------------------------------------------------------------- entry points


def run(config: RunConfig, progress: bool = True, log: Callable[[str], None] | None = None,
        profile: bool = False, branches: list | None = None) -> RunResult:
    """Score ``config.data`` with every branch, fuse, and write the run directory.

    ``profile``: measure every stage (wall and CPU time, counts; the loader's workers included) into
    ``RunResult.profile`` and ``RUN/profile.json``. ``branches``: branch objects to score with instead
    of building ``config.branches`` (the same names, in the same order), e.g. models already loaded.
    """
    with profiling.profiling(profile) as prof:
        result = _run(config, progress, log, branches)
        if prof is not None and result.is_main:
            result.profile = prof.report()
            RunDir.write_profile(result.out_dir, result.profile)
    return result


def _run(config: RunConfig, progress: bool, log: Callable[[str], None] | None, branches: list | None) -> RunResult:
    with profiling.stage("plan"):
        rr = plan(config, branches)
    store = ScoreStore(config.store)
    try:
        rank_store = open_shard(rr.out / SHARDS, rr.dist, store) if rr.dist.enabled else None
        job = plan_job(rr, store, rank_store)
        if log and rr.dist.is_main:
            for name, fp in job.fingerprints.items():
                log(f"branch {name}: fingerprint {fp}")
        stats, errors = score(job, rr, rank_store or store, progress and rr.dist.is_main)
        if rank_store is not None:
            rank_store.close()
            gathered = gather_ranks(rr, stats, errors, store)
            if gathered is None:
                return RunResult(rr.run_id, rr.out, {}, stats, [], is_main=False)
            stats, errors = gathered
        with profiling.stage("gather scores"):
            table = gather(job, store, errors)
        summary = {"branches": {k: vars(v) for k, v in stats.items()}}
        metrics = write_run(rr.out, rr.run_id, "run", table, rr.fusion, resolved_config(rr, store, job.fingerprints),
                            store, summary)
        return RunResult(rr.run_id, rr.out, metrics, stats, table.skipped, table)
    finally:
        store.close()


def refuse(run_dir: str | Path, fusion_name: str, fusion_options: dict | None = None,
           store_path: str | None = None, fusion_state: dict | None = None,
           allow_partial: bool | None = None, state_source: str | None = None) -> tuple[Path, dict]:
    """Re-fuse a finished run from its recorded scores (no model is loaded); writes RUN/fusions/<name>/."""
    rd = RunDir.open(run_dir)
    fusion = get_registry().create("fusion", fusion_name, fusion_options or {})
    if fusion_state:  # named after its file in every error
        apply_state(fusion, parse_state(fusion_state, state_source or "the fusion state"),
                    list(rd.config.get("fingerprints") or rd.config.get("branches") or []),
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
