"""Scoring runs: plan → score (optionally sharded across ranks) → gather → report.

Every branch score goes to the SQLite store as soon as its batch is done, keyed by
(image sha256, branch fingerprint). A run that is killed and started again, a second
run on overlapping data, or a re-fusion scores only what is missing. Each image that any
branch still needs is read and decoded once for all of them (:mod:`aligncore.data.loader`);
scores go through :mod:`aligncore.scoring`; the run folder is written by :class:`RunDir`.

The stages: plan in :mod:`aligncore.planning`, score and gather here, report (fusion, the coverage
rule, the run folder, the leaderboard row) in :mod:`aligncore.publish`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import profiling
from .config import RunConfig
from .data.loader import UNREADABLE, load_images
from .distributed import gather_reports, merge_shards, open_shard, sum_reports
from .planning import ResolvedRun, ScoringJob, check_fusion_state, plan, plan_job
from .publish import coverage_summary, fuse, refuse, resolved_config, scored_any, write_run
from .rundir import SHARDS, RunDir, ScoreTable, make_run_id
from .scoring import BranchScorer, Scored
from .store import ScoreStore

#: names of the run's stages, importable from here as before the stages had modules of their own
__all__ = ["FILE_ERROR", "BranchStats", "ResolvedRun", "RunResult", "ScoringJob", "check_fusion_state",
           "coverage_summary", "fuse", "gather", "gather_ranks", "make_run_id", "plan", "plan_job", "refuse",
           "resolved_config", "run", "score", "write_run"]


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
        return scored_any(self.coverage)

    def incomplete_summary(self) -> str:
        """One line naming every branch that failed and its counts ("" for a complete run)."""
        return coverage_summary(self.coverage, self.metrics.get("fused_over", {}))


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
