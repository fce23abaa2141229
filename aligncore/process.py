"""Child processes die with their parent.

``alignctl run --num-processes N`` starts a launcher (accelerate), which starts N ranks. If the
``alignctl`` process is killed (SIGKILL cannot be caught), nothing would stop them: they would go on
writing the run folder and the store. On Linux each process in that chain asks the kernel for
SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``), and checks, once that is set, that its
parent is still the process that started it (the parent may have died before). Elsewhere this is a
no-op; a kill then leaves the children to finish or fail on their own.
"""

from __future__ import annotations

import os
import signal
import sys

#: set by a parent that wants its grandchildren (the ranks) to die with their own parent: the pid they expect
PARENT_ENV = "ALIGNCORE_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent ends; False where that is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(expected_parent: int | None) -> None:
    """This process is killed when its parent ends; if the parent (``expected_parent``) is gone already, exit now."""
    if set_parent_death_signal() and expected_parent is not None and os.getppid() != expected_parent:
        os._exit(1)


def preexec_die_with(parent_pid: int):
    """A ``subprocess.Popen(preexec_fn=...)`` that makes the child die with ``parent_pid`` (runs in the child)."""

    def preexec() -> None:
        die_with_parent(parent_pid)

    return preexec


def rank_guard() -> None:
    """Called first by ``alignctl`` itself: a rank started under a launcher that asked for it (:data:`PARENT_ENV`)
    dies with that launcher."""
    pid = os.environ.get(PARENT_ENV)
    if pid and pid.isdigit() and os.environ.get("LOCAL_RANK") is not None:
        die_with_parent(int(pid))


#: runs accelerate's launcher after recording its own pid for the ranks it starts (they die with it)
LAUNCHER_BOOTSTRAP = (
    "import os, runpy, sys\n"
    f"os.environ[{PARENT_ENV!r}] = str(os.getpid())\n"
    "sys.argv = ['accelerate-launch', *sys.argv[1:]]\n"
    "runpy.run_module('accelerate.commands.launch', run_name='__main__', alter_sys=True)\n"
)
