"""The plugin manager: built-ins registered explicitly, third parties by entry point.

Loading is lazy (nothing happens at ``import aligncore``) and idempotent (one manager
per process). A third-party plugin that fails to import is recorded by name and
skipped; ``ALIGNCORE_DISABLE_PLUGINS=name1,name2`` blocks plugins by entry-point name.
Plugin modules that are not installed load from the import path by module name:
``ALIGNCORE_PLUGINS=mod1,mod2`` (like llm's ``LLM_LOAD_PLUGINS``) or ``alignctl -p MODULE``
(like pytest's ``-p``), so a plugin can be used while it is being written.
"""

from __future__ import annotations

import importlib
import os
import threading
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable

import pluggy

from . import hookspecs

ENTRY_POINT_GROUP = "aligncore"
DISABLE_ENV = "ALIGNCORE_DISABLE_PLUGINS"
PLUGINS_ENV = "ALIGNCORE_PLUGINS"

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
    "aerecon",
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
    #: how it was found: "builtin", "entry point", "ALIGNCORE_PLUGINS" or "-p"
    source: str = "entry point"


@dataclass
class PluginState:
    pm: pluggy.PluginManager
    infos: dict[str, PluginInfo]

    @property
    def broken(self) -> dict[str, str]:
        return {n: i.error for n, i in self.infos.items() if i.error}


_lock = threading.Lock()
_state: PluginState | None = None


#: modules named with ``alignctl -p`` (added by :func:`load_plugin_modules`)
_cli_modules: list[str] = []


def blocked_names() -> set[str]:
    return {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}


def plugin_modules() -> list[tuple[str, str]]:
    """(module, how it was named) for every module to load from the import path, in order, once each."""
    out: dict[str, str] = {}
    for n in os.environ.get(PLUGINS_ENV, "").split(","):
        if n.strip():
            out.setdefault(n.strip(), PLUGINS_ENV)
    for n in _cli_modules:
        out.setdefault(n, "-p")
    return list(out.items())


def load_plugin_modules(modules: list[str]) -> dict[str, str]:
    """Load ``modules`` (``alignctl -p``) from the import path as plugins; the manager is rebuilt.

    Returns {module: error} for those that could not be loaded (the caller asked for them by
    name, so the CLI stops there).
    """
    new = [m for m in modules if m not in _cli_modules]
    if new:
        _cli_modules.extend(new)
        reset_plugins()
    state = get_plugin_state()
    return {m: state.infos[m].error for m in modules if m in state.infos and state.infos[m].error}


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
        info = PluginInfo(name=short, module=modname, builtin=True, distribution="aligncore", version=__version__,
                          source="builtin")
        infos[short] = info
        # a broken built-in is a bug, but must not take the CLI down
        mod = _load(pm, info, blocked, lambda: importlib.import_module(modname), f"plugin {short!r}")
        if mod is not None:
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
        plugin = _load(pm, info, blocked, ep.load, f"plugin {ep.name!r} ({ep.value})")
        if plugin is not None:
            _register(pm, info, plugin, f"plugin {ep.name!r}")
    for modname, how in plugin_modules():
        info = PluginInfo(name=modname, module=modname, builtin=False, source=how)
        if modname in infos:
            if infos[modname].module != modname or infos[modname].error:
                info.error = f"plugin name {modname!r} ({how}) is already taken by {infos[modname].module}"
                infos[f"{modname} ({how})"] = info
            continue  # the same module, installed and named again: loaded once
        infos[modname] = info
        mod = _load(pm, info, blocked, lambda: importlib.import_module(modname), f"plugin module {modname!r} ({how})",
                    missing_hint=" (is its folder on PYTHONPATH? PYTHONPATH=. adds the current folder)")
        if mod is None:
            continue
        info.version = getattr(mod, "__version__", None)
        if pm.is_registered(mod):  # installed as well (an entry point): loaded once, under that name
            del infos[modname]
            continue
        _register(pm, info, mod, f"plugin module {modname!r} ({how})")
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


def _load(pm: pluggy.PluginManager, info: PluginInfo, blocked: set[str], load: Callable[[], Any], what: str,
          missing_hint: str = "") -> Any:
    """Import one plugin unless it is blocked: the loaded object, or None (blocked, or ``info.error`` says why).
    ``missing_hint`` is added when the plugin's own top-level module is what could not be found."""
    if info.name in blocked:
        info.blocked = True
        pm.set_blocked(info.name)
        return None
    try:
        return load()
    except Exception as exc:
        hint = missing_hint if isinstance(exc, ModuleNotFoundError) and exc.name == info.module.split(".")[0] else ""
        info.error = f"Error importing {what}: {type(exc).__name__}: {exc}{hint}"
        return None


def _register(pm: pluggy.PluginManager, info: PluginInfo, plugin: Any, what: str) -> None:
    try:
        pm.register(plugin, name=info.name)
    except Exception as exc:
        info.error = f"Error registering {what}: {type(exc).__name__}: {exc}"


def _entry_points():
    try:
        return list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    except Exception:  # a corrupt distribution's metadata must not break start-up
        return []
