"""What the machine has, and the caps derived from it: worker processes, ranks, batch and input memory.

A value from a flag, a config or a checkpoint can ask for a million worker processes or a batch of
crops larger than the machine's memory. Each is checked before any work against what this process
may use: the CPU cores it may run on (affinity and cgroup quota) and the memory it may take (physical
memory, or a lower cgroup limit). The message names the setting and the most the machine allows.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError

#: share of the machine's memory one run's inputs (a batch of preprocessed images) may take
MEMORY_SHARE = 0.5


def usable_cpus() -> int:
    """CPU cores this process may run on: its affinity mask, lowered by a cgroup (v2) CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def total_memory() -> int:
    """Bytes of memory this process may use: physical memory, or a lower cgroup (v2) limit."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        total = 8 << 30  # unknown: assume a small machine
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            total = min(total, int(limit))
    except (OSError, ValueError):
        pass
    return total


def memory_budget() -> int:
    """Bytes the inputs of one run (a batch per branch) may take: :data:`MEMORY_SHARE` of :func:`total_memory`."""
    return int(total_memory() * MEMORY_SHARE)


def gib(n: float) -> str:
    """Bytes in the unit that reads best (``"3.2 GiB"``, ``"960.0 KiB"``)."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{int(n)} bytes"


def max_workers() -> int:
    """The most data-loader worker processes allowed: twice the usable cores (loading can wait on disk or
    network), at least 4 (so a config written for a small machine runs anywhere). More never decodes faster."""
    return max(4, 2 * usable_cpus())


def check_workers(n: int, what: str = "workers") -> int:
    """``n`` when it is within :func:`max_workers`; else a ConfigError saying the most this machine allows."""
    cap = max_workers()
    if n > cap:
        raise ConfigError(f"{n} worker processes asked for, but this machine gives aligncore {usable_cpus()} CPU "
                          f"core(s): use at most {cap} ({what} = 0 decodes in the main process).")
    return n


def check_ranks(n: int, device: str | None) -> int:
    """``n`` ranks for ``alignctl run --num-processes``: at most one per GPU (when GPUs are used) or per CPU core."""
    if n < 1:
        raise ConfigError(f"--num-processes {n}: give 1 or more.")
    cpus = usable_cpus()
    gpus = 0
    if device != "cpu":
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n > max(cpus, gpus):
        gpu_part = f" and {gpus} GPU(s)" if gpus else " and no GPU"
        raise ConfigError(f"--num-processes {n}: this machine gives aligncore {cpus} CPU core(s){gpu_part}, so at "
                          f"most {max(cpus, gpus)} rank(s).")
    return n


def check_memory(nbytes: int, what: str, how: str) -> None:
    """A ConfigError when ``nbytes`` exceed :func:`memory_budget`; ``what`` names the request, ``how`` the fix."""
    budget = memory_budget()
    if nbytes > budget:
        raise ConfigError(f"{what} needs about {gib(nbytes)} of memory, more than the {gib(budget)} aligncore allows "
                          f"itself on this machine ({MEMORY_SHARE:.0%} of {gib(total_memory())}). {how}")
