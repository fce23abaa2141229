"""The plugin manager: built-ins registered explicitly, third parties by entry point.

Loading is lazy (nothing happens at ``import aligncore``) and idempotent (one manager
per process). A third-party plugin that fails to import is recorded by name and
skipped; ``ALIGNCORE_DISABLE_PLUGINS=name1,name2`` blocks plugins by entry-point name.
"""

from __future__ import annotations

import importlib
import os
import threading
from dataclasses import dataclass, field
from importlib import metadata

import pluggy

from . import hookspecs

ENTRY_POINT_GROUP = "aligncore"
DISABLE_ENV = "ALIGNCORE_DISABLE_PLUGINS"

#: built-in plugin modules, registered by their short name (``aligncore_plugins.<name>``)
BUILTIN_PLUGINS: tuple[str, ...] = (
    "fake",
    "fusions",
    "learned_fusion",
    "dinov2",
    "npr",
    "spectrum",
    "vae_sets",
    "qwen",
    "semantic_set",
    "leakage",
)


@dataclass
class PluginInfo:
    name: str
    module: str
    builtin: bool
    distribution: str | None = None
    version: str | None = None
    error: str | None = None  # set when the plugin could not be loaded
    blocked: bool = False
    hooks: list[str] = field(default_factory=list)


@dataclass
class PluginState:
    pm: pluggy.PluginManager
    infos: dict[str, PluginInfo]

    @property
    def broken(self) -> dict[str, str]:
        return {n: i.error for n, i in self.infos.items() if i.error}


_lock = threading.Lock()
_state: PluginState | None = None


def blocked_names() -> set[str]:
    return {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}


def get_plugin_state() -> PluginState:
    """Build the plugin manager once: hook specs, built-ins, then the entry-point group."""
    global _state
    with _lock:
        if _state is None:
            _state = _build_state()
        return _state


def get_plugin_manager() -> pluggy.PluginManager:
    return get_plugin_state().pm


def reset_plugins() -> None:
    """Forget the manager (tests, or after ``pip install`` of a plugin in the same process)."""
    global _state
    with _lock:
        _state = None
    from . import registry

    registry.reset_registry()


def _build_state() -> PluginState:
    pm = pluggy.PluginManager("aligncore")
    pm.add_hookspecs(hookspecs)
    blocked = blocked_names()
    infos: dict[str, PluginInfo] = {}
    from . import __version__

    for short in BUILTIN_PLUGINS:
        modname = f"aligncore_plugins.{short}"
        info = PluginInfo(name=short, module=modname, builtin=True, distribution="aligncore", version=__version__)
        infos[short] = info
        if short in blocked:
            info.blocked = True
            pm.set_blocked(short)
            continue
        try:
            mod = importlib.import_module(modname)
        except Exception as exc:  # a broken built-in is a bug, but must not take the CLI down
            info.error = f"Error importing plugin {short!r}: {type(exc).__name__}: {exc}"
            continue
        pm.register(mod, name=short)

    for ep in _entry_points():
        dist = getattr(ep, "dist", None)
        info = PluginInfo(
            name=ep.name,
            module=ep.value,
            builtin=False,
            distribution=dist.metadata["Name"] if dist is not None else None,
            version=dist.version if dist is not None else None,
        )
        if ep.name in infos:
            info.error = f"plugin name {ep.name!r} is already taken by {infos[ep.name].module}"
            infos[f"{ep.name} ({info.distribution})"] = info
            continue
        infos[ep.name] = info
        if ep.name in blocked:
            info.blocked = True
            pm.set_blocked(ep.name)
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            info.error = f"Error importing plugin {ep.name!r} ({ep.value}): {type(exc).__name__}: {exc}"
            continue
        try:
            pm.register(plugin, name=ep.name)
        except Exception as exc:
            info.error = f"Error registering plugin {ep.name!r}: {type(exc).__name__}: {exc}"
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        bad = getattr(exc, "plugin", None)
        name = pm.get_name(bad) if bad is not None else "?"
        if name in infos:
            infos[name].error = f"plugin {name!r} implements an unknown hook: {exc}"
        if bad is not None:
            pm.unregister(bad)
    for name, plugin in pm.list_name_plugin():
        if name in infos:
            infos[name].hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
    return PluginState(pm=pm, infos=infos)


def _entry_points():
    try:
        return list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    except Exception:  # a corrupt distribution's metadata must not break start-up
        return []
