"""An example aligncore plugin: one implementation of each of the five hooks.

aligncore calls each hook once with a callback: ``register(cls)`` for components, the click
group for commands. The classes live in their own modules; the command imports its heavy
parts inside the function, so ``alignctl --help`` stays fast.
"""

from __future__ import annotations

from aligncore import hookimpl

from .audit import ClassBalanceAudit
from .branch import ColourfulnessBranch
from .builder import PosterizePairs
from .command import add_commands
from .fusion import MedianFusion

__version__ = "0.3.0"


@hookimpl
def register_branches(register):
    register(ColourfulnessBranch)


@hookimpl
def register_fusions(register):
    register(MedianFusion)


@hookimpl
def register_supervision_builders(register):
    register(PosterizePairs)


@hookimpl
def register_audits(register):
    register(ClassBalanceAudit)


@hookimpl
def register_commands(cli):
    add_commands(cli)
