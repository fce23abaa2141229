"""Helpers for the fusion-study tests: a finished run with synthetic scores.

The run folder is written by the runner's own ``write_run`` (the same RunDir files as
``alignctl run`` leaves, and the run recorded in the score store), from a score table made
up here; no image is decoded.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


def make_scored_run(out: Path, n: int = 200, seed: int = 0, dataset: str = "synthetic", suite: str | None = None):
    """Two complementary branches: ``pix`` separates generator 'pixgen' fakes, ``sem`` separates 'semgen' fakes."""
    from aligncore.registry import create_fusion
    from aligncore.rundir import ScoreTable
    from aligncore.runner import write_run
    from aligncore.store import ScoreStore

    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2).astype(int)  # alternate real / fake
    gens = np.where(labels == 0, "photos", np.where((np.arange(n) // 2) % 2 == 0, "pixgen", "semgen"))
    pix = np.where(gens == "pixgen", rng.beta(6, 2, n), rng.beta(2, 6, n))
    sem = np.where(gens == "semgen", rng.beta(6, 2, n), rng.beta(2, 6, n))
    sem[rng.random(n) < 0.02] = np.nan  # a few images one branch could not score
    table = ScoreTable(
        branches=["pix", "sem"],
        paths=[f"/data/{dataset}/{'1_fake' if labels[i] else '0_real'}/{i:05d}.png" for i in range(n)],
        sha256=[hashlib.sha256(f"{seed}-{i}".encode()).hexdigest() for i in range(n)],
        labels=labels, generators=gens.astype(object), subsets=np.full(n, "", dtype=object),
        scores={"pix": pix, "sem": sem}, errors=[""] * n,
    )
    fps = {"pix": "pix-0000000000000001", "sem": "sem-0000000000000002"}
    run_id = f"synthetic-{dataset}-{seed}"
    with ScoreStore() as store:
        resolved = {"branches": ["pix", "sem"], "fusion": "or", "data": f"/data/{dataset}", "fingerprints": fps,
                    "dataset": {"root": f"/data/{dataset}", "layout": "0_real/1_fake", "n_records": n},
                    "dataset_name": dataset, "suite": suite, "perturb": None, "checkpoints": {}, "store": str(store.path),
                    "allow_partial": True}  # ``sem`` misses a few images, as a run with --allow-partial would
        metrics = write_run(out, run_id, "run", table, create_fusion("or"), resolved, store, {"branches": {}})
    return out, metrics
