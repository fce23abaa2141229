"""Where a run spends its time: per-stage wall and CPU times and counts (``alignctl run --profile``).

A :class:`Profile` is made current for the length of a run (:func:`profiling`); code along the run
path marks its stages with ``with stage("name"):`` and its work with :func:`count`. With no current
profile both cost one context-variable lookup, so the path carries them always.

CPU time is the process's (every thread: torch's intra-op threads count), from
:func:`time.process_time`. Decoding and preprocessing run in the data loader's workers when
``workers`` > 0: each worker measures its own items and sends the sums back with its batches, so
their stages say ``where: workers``; the run's total CPU time adds the workers' (``RUSAGE_CHILDREN``
of the finished workers). Stages may nest: ``loader wait`` (the main process waiting for the next
images) holds the decoding when there are no workers.
"""

from __future__ import annotations

import contextvars
import os
import time
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator

_CURRENT: contextvars.ContextVar["Profile | None"] = contextvars.ContextVar("aligncore_profile", default=None)
_NULL = nullcontext()


class _Stage:
    __slots__ = ("profile", "name", "wall", "cpu")

    def __init__(self, profile: "Profile", name: str):
        self.profile, self.name = profile, name

    def __enter__(self):
        self.profile._depth += 1
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        p = self.profile
        p._depth -= 1
        p.add(self.name, wall, cpu)
        if p._depth == 0:  # time inside some stage (a nested stage is inside its outer one already)
            p._covered[0] += wall
            p._covered[1] += cpu


class Profile:
    """Accumulated stages ({name: wall, cpu, calls, where}) and counts of one run."""

    def __init__(self) -> None:
        self.stages: dict[str, dict[str, Any]] = {}
        self.counts: dict[str, Any] = {}
        self.worker_pids: set[int] = set()
        self._depth = 0
        self._covered = [0.0, 0.0]
        self._start = (time.perf_counter(), time.process_time(), _children_cpu())

    def stage(self, name: str) -> _Stage:
        return _Stage(self, name)

    def add(self, name: str, wall: float, cpu: float, calls: int = 1, where: str = "main") -> None:
        s = self.stages.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0, "calls": 0, "where": where})
        s["wall_s"] += wall
        s["cpu_s"] += cpu
        s["calls"] += calls

    @staticmethod
    def now() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def add_since(self, name: str, since: tuple[float, float]) -> None:
        """A stage from ``since`` (:meth:`now`) to now, around other stages (not counted twice in "other")."""
        self.add(name, time.perf_counter() - since[0], time.process_time() - since[1])

    def count(self, name: str, n: int = 1, per: str | None = None) -> None:
        if per is None:
            self.counts[name] = self.counts.get(name, 0) + n
        else:
            d = self.counts.setdefault(name, {})
            d[per] = d.get(per, 0) + n

    def add_loader(self, timings: dict[str, Any], names: list[str]) -> None:
        """Merge what the loader measured for a batch (:class:`aligncore.data.loader.LoadedBatch`)."""
        where = "main" if timings["pid"] == os.getpid() else "workers"
        if where == "workers":
            self.worker_pids.add(timings["pid"])
        for key, (wall, cpu, calls) in timings["stages"].items():
            kind, _, bi = key.partition(":")
            self.add(f"{kind} {names[int(bi)]}" if bi else kind, wall, cpu, calls, where)
        for key, n in timings["counts"].items():
            self.count(key, n)

    def report(self) -> dict[str, Any]:
        """The profile as plain data: totals, stages (in the order they first ended) and counts."""
        w0, c0, ch0 = self._start
        wall, main_cpu, children = time.perf_counter() - w0, time.process_time() - c0, _children_cpu() - ch0
        stages = {k: {**v, "wall_s": round(v["wall_s"], 4), "cpu_s": round(v["cpu_s"], 4)}
                  for k, v in self.stages.items()}
        stages["other (main process, outside the stages above)"] = {
            "wall_s": round(wall - self._covered[0], 4), "cpu_s": round(main_cpu - self._covered[1], 4), "calls": 1,
            "where": "main"}
        return {"wall_s": round(wall, 4), "cpu_s": {"main": round(main_cpu, 4), "workers": round(children, 4),
                                                     "total": round(main_cpu + children, 4)},
                "loader_workers": len(self.worker_pids), "torch_threads": _torch_threads(),
                "stages": stages, "counts": self.counts}


def _children_cpu() -> float:
    try:
        import resource
    except ImportError:  # not on POSIX: the workers' own measurements still show in their stages
        return 0.0
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _torch_threads() -> int | None:
    import sys

    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


@contextmanager
def profiling(enabled: bool = True) -> Iterator[Profile | None]:
    """Make a new :class:`Profile` current for the block (yields None, and costs nothing, when not ``enabled``)."""
    if not enabled:
        yield None
        return
    prof = Profile()
    token = _CURRENT.set(prof)
    try:
        yield prof
    finally:
        _CURRENT.reset(token)


def current() -> Profile | None:
    return _CURRENT.get()


def stage(name: str):
    """``with stage("store write"):`` — timed into the current profile; a shared no-op without one."""
    prof = _CURRENT.get()
    return _NULL if prof is None else _Stage(prof, name)


def count(name: str, n: int = 1, per: str | None = None) -> None:
    prof = _CURRENT.get()
    if prof is not None:
        prof.count(name, n, per)


def format_report(report: dict[str, Any]) -> str:
    """The report as a table for the terminal."""
    cpu = report["cpu_s"]
    lines = [f"profile: wall {report['wall_s']:.2f} s, CPU {cpu['total']:.2f} s (main process {cpu['main']:.2f} s, "
             f"loader workers {cpu['workers']:.2f} s; {report['loader_workers']} worker(s), "
             f"torch threads {report['torch_threads']})",
             f"  {'stage':<48} {'where':<8} {'calls':>7} {'wall s':>9} {'CPU s':>9}"]
    for name, s in report["stages"].items():
        lines.append(f"  {name:<48} {s['where']:<8} {s['calls']:>7} {s['wall_s']:>9.3f} {s['cpu_s']:>9.3f}")
    for name, v in report["counts"].items():
        shown = ", ".join(f"{k} {n}" for k, n in v.items()) if isinstance(v, dict) else str(v)
        lines.append(f"  {name.replace('_', ' ')}: {shown}")
    return "\n".join(lines)
