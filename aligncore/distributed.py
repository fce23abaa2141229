"""Distributed scoring on accelerate: shard the work across ranks, merge per-rank stores.

``alignctl run --num-processes N`` re-launches itself under ``accelerate launch`` (the launcher
dies with it, and every rank with the launcher: :mod:`aligncore.process`; so
torch.distributed, NCCL/gloo and multi-node set-up are accelerate's, not ours). Inside,
every rank computes the same list of missing (image, branch) scores from the main store,
takes every N-th item, and writes its scores to its own shard store
``RUN/shards/rank<r>.sqlite`` (SQLite over a network file system is unsafe, a local
shard file is not). Rank 0 merges the shards into the main store, fuses and reports.
Shards left by a killed run are merged first on the next start, so nothing is lost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .store import ScoreStore


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    _state: object = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.enabled:
            self._state.wait_for_everyone()  # type: ignore[union-attr]

    @classmethod
    def from_env(cls) -> "DistContext":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch
        from accelerate import PartialState

        # without a GPU (or when asked), the ranks talk over gloo on the CPU
        cpu = os.environ.get("ALIGNCORE_DIST_CPU") == "1" or not torch.cuda.is_available()
        state = PartialState(cpu=cpu)
        return cls(state.process_index, state.num_processes, state)


def merge_shards(shard_dir: Path, store: ScoreStore) -> int:
    """Copy every shard's scores into ``store`` (existing keys win), then delete the shard files."""
    added = 0
    if not shard_dir.is_dir():
        return 0
    for shard in sorted(shard_dir.glob("rank*.sqlite")):
        src = ScoreStore(shard)
        try:
            rows = src.conn.execute("SELECT sha256, fingerprint, branch, score, explanation, error, logit FROM scores").fetchall()
        finally:
            src.close()
        by_fp: dict[tuple[str, str], list[tuple]] = {}
        for sha, fp, branch, score, expl, err, logit in rows:  # put_scores writes only valid scores
            by_fp.setdefault((fp, branch), []).append((sha, score, expl, err, logit))
        for (fp, branch), rs in by_fp.items():
            added += store.put_scores(fp, branch, rs)
        for suffix in ("", "-wal", "-shm"):
            Path(str(shard) + suffix).unlink(missing_ok=True)
    if not any(shard_dir.iterdir()):
        shard_dir.rmdir()  # nothing left to resume from
    return added


def open_shard(shard_dir: Path, dist: DistContext, store: ScoreStore) -> ScoreStore:
    """This rank's shard store; rank 0 first merges what a killed earlier attempt left behind."""
    if dist.is_main:
        merge_shards(shard_dir, store)
        shard_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    return ScoreStore(shard_dir / f"rank{dist.rank}.sqlite")


def gather_reports(shard_dir: Path, dist: DistContext, report: dict) -> list[dict] | None:
    """Every rank writes ``report`` (JSON); after the barrier rank 0 reads them all (and removes them),
    other ranks get None."""
    path = shard_dir / f"rank{dist.rank}.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)
    dist.barrier()
    if not dist.is_main:
        return None
    reports = []
    for rep in sorted(shard_dir.glob("rank*.json")):
        reports.append(json.loads(rep.read_text(encoding="utf-8")))
        rep.unlink()
    return reports


def sum_reports(reports: list[dict]) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, str]]]:
    """Rank reports ({"stats": {branch: {"scored", "failed"}}, "errors": {sha256: {branch: why}}}) → the summed
    counts per branch and every rank's errors."""
    counts: dict[str, dict[str, int]] = {}
    errors: dict[str, dict[str, str]] = {}
    for rep in reports:
        for name, st in rep["stats"].items():
            c = counts.setdefault(name, {"scored": 0, "failed": 0})
            c["scored"] += st["scored"]
            c["failed"] += st["failed"]
        for h, errs in rep["errors"].items():
            errors.setdefault(h, {}).update(errs)
    return counts, errors


def free_port() -> int:
    """A free local TCP port for the rendezvous (the default 29500 may be taken by another job)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(argv: list[str], num_processes: int, device: str | None) -> int:
    """Re-run ``alignctl`` with ``argv`` under ``accelerate launch`` on ``num_processes`` ranks."""
    import torch

    use_gpu = device != "cpu" and torch.cuda.is_available() and torch.cuda.device_count() >= num_processes
    # accelerate's torchrun-based launcher (--multi_gpu) also serves CPU ranks: each rank then
    # builds a gloo process group (its --cpu path would need MPI for more than one process)
    from .process import LAUNCHER_BOOTSTRAP, preexec_die_with

    # the launcher dies with this process, and each rank with the launcher (aligncore.process)
    cmd = [sys.executable, "-c", LAUNCHER_BOOTSTRAP, "--multi_gpu", "--num_processes", str(num_processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "--module", "aligncore", *argv]
    env = dict(os.environ)
    if not use_gpu:
        env["ALIGNCORE_DIST_CPU"] = "1"
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // num_processes)))
    return subprocess.call(cmd, env=env, preexec_fn=preexec_die_with(os.getpid()))
