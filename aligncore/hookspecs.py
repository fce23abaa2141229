"""The plugin contract of aligncore.

Every hook is a ``register_*`` function that receives a callback: a plugin calls
``register(SomeClass)`` once per component it provides. The core checks what was
registered (right base class, unique names) and records which plugin registered it.

Hook implementations may accept a subset of the arguments named here, so a spec can
grow by adding arguments; the meaning of an existing argument never changes.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("aligncore")
hookimpl = pluggy.HookimplMarker("aligncore")


# --------------------------------------------------------------------------- components


@hookspec
def register_branches(register):
    """Register detector branches.

    ``register(cls)`` takes a subclass of :class:`aligncore.Branch` with a unique
    ``name`` class attribute. Returns nothing.
    """


@hookspec
def register_supervision_builders(register):
    """Register supervision-set builders (pixel sets, semantic sets, ...).

    ``register(cls)`` takes a subclass of :class:`aligncore.SupervisionBuilder` with a
    unique ``name``. Returns nothing.
    """


@hookspec
def register_fusions(register):
    """Register fusion rules that turn per-branch scores into one verdict.

    ``register(cls)`` takes a subclass of :class:`aligncore.Fusion` with a unique
    ``name``. Returns nothing.
    """


@hookspec
def register_audits(register):
    """Register audits: checks of a labelled set (e.g. pixel leakage in a semantic set).

    ``register(cls)`` takes a subclass of :class:`aligncore.audit.Audit` with a unique
    ``name``. Studies run audits by registered name. Returns nothing.
    """


# --------------------------------------------------------------------------- command line


@hookspec
def register_commands(cli):
    """Add commands to the ``alignctl`` click group.

    ``cli`` is the :class:`click.Group`; call ``cli.command()`` or ``cli.add_command``.
    Parse options with :mod:`aligncore.cli_options` (``scoring_options``, ``parse_kv``,
    ``branch_options``), never with ``aligncore.cli`` internals. The core's own commands
    cannot be replaced. Keep imports of heavy libraries inside the command functions so
    that ``alignctl --help`` stays fast. Returns nothing.
    """
