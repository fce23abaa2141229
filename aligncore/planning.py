"""Plan a scoring run before any work: every name resolved, every component built, the dataset read and
the run folder checked (:func:`plan`), then which (image, branch) scores are still missing (:func:`plan_job`).

The first stage of :func:`aligncore.runner.run`; a bad fusion state, branch name, data path or output
folder fails here, before a model is loaded or an image decoded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import profiling
from .config import RunConfig
from .data import Dataset, Record, load_dataset
from .data.datasets import hash_records
from .data.loader import LoadItem, size_bucket
from .distributed import DistContext
from .errors import AlignCoreError
from .fusion import load_state
from .perturb import PerturbChain, parse_perturb, perturbed_fingerprint
from .registry import get_registry
from .rundir import RunDir, make_run_id
from .scoring import create_branches
from .store import ScoreStore


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
    if config.fusion_state:
        load_state(fusion or get_registry().create("fusion", config.fusion, config.fusion_options),
                   config.fusion_state, config.branches, where)


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

