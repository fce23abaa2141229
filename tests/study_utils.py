"""Helpers for the fusion-study tests: a finished run with synthetic stored scores.

The run directory is written by the runner's own ``fuse_and_report`` (predictions.csv,
metrics.json, config.yaml) plus run.json, exactly as ``alignctl run`` leaves it, and the
scores are put in the score store under made-up fingerprints; no image is decoded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np


def make_scored_run(out: Path, n: int = 200, seed: int = 0, dataset: str = "synthetic", suite: str | None = None):
    """Two complementary branches: ``pix`` separates generator 'pixgen' fakes, ``sem`` separates 'semgen' fakes."""
    from aligncore.registry import create_fusion
    from aligncore.runner import RUN_INFO, _write_json, fuse_and_report
    from aligncore.store import ScoreStore

    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2).astype(int)  # alternate real / fake
    gens = np.where(labels == 0, "photos", np.where((np.arange(n) // 2) % 2 == 0, "pixgen", "semgen"))
    pix = np.where(gens == "pixgen", rng.beta(6, 2, n), rng.beta(2, 6, n))
    sem = np.where(gens == "semgen", rng.beta(6, 2, n), rng.beta(2, 6, n))
    sem[rng.random(n) < 0.02] = np.nan  # a few images one branch could not score
    hashes = [hashlib.sha256(f"{seed}-{i}".encode()).hexdigest() for i in range(n)]
    rows = [{"path": f"/data/{dataset}/{'1_fake' if labels[i] else '0_real'}/{i:05d}.png", "sha256": hashes[i],
             "label": int(labels[i]), "generator": str(gens[i]), "subset": None,
             "scores": {"pix": float(pix[i]), "sem": float(sem[i])}, "error": None} for i in range(n)]
    fps = {"pix": "pix-0000000000000001", "sem": "sem-0000000000000002"}
    out.mkdir(parents=True, exist_ok=True)
    run_id = f"synthetic-{dataset}-{seed}"
    resolved = {"branches": ["pix", "sem"], "fusion": "or", "data": f"/data/{dataset}", "fingerprints": fps,
                "dataset": {"root": f"/data/{dataset}", "layout": "0_real/1_fake", "n_records": n},
                "dataset_name": dataset, "suite": suite, "perturb": None, "checkpoints": {}}
    with ScoreStore() as store:
        for b, fp in fps.items():
            store.put_scores(fp, b, [(h, None if np.isnan(r["scores"][b]) else r["scores"][b]) for h, r in zip(hashes, rows)])
        table = {"rows": rows, "skipped": [], "branches": ["pix", "sem"]}
        metrics = fuse_and_report(table, create_fusion("or"), out, resolved, store, run_id)
        resolved["store"] = str(store.path)
    _write_json(out / RUN_INFO, {"run_id": run_id, "config": resolved, "branches": {}, "skipped": 0})
    return out, metrics
