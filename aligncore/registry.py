"""A typed facade over the hooks: the core never calls ``pm.hook.*`` anywhere else.

Each ``register_*`` hook is called once per plugin with a callback; the facade checks
every registered class (right base class, a name, no duplicates) and records which
plugin registered it. ``create_branch(name, **overrides)`` and friends build components.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pluggy

from .errors import PluginError, UnknownComponentError
from .plugins import get_plugin_state


@dataclass
class Registered:
    name: str
    cls: type
    plugin: str

    @property
    def help(self) -> str:
        return (getattr(self.cls, "help", "") or (self.cls.__doc__ or "").strip().split("\n")[0]).strip()


class Registry:
    HOOKS = {
        "branch": "register_branches",
        "builder": "register_supervision_builders",
        "fusion": "register_fusions",
        "audit": "register_audits",
    }

    def __init__(self) -> None:
        from .audit import Audit
        from .branch import Branch
        from .fusion import Fusion
        from .supervision import SupervisionBuilder

        self._bases = {"branch": Branch, "builder": SupervisionBuilder, "fusion": Fusion, "audit": Audit}
        self.components: dict[str, dict[str, Registered]] = {k: {} for k in self.HOOKS}
        self.errors: dict[str, str] = {}  # plugin name → what went wrong in its hooks
        state = get_plugin_state()
        self.state = state
        for kind, hook in self.HOOKS.items():
            self._collect(kind, hook)

    def _collect(self, kind: str, hook: str) -> None:
        base = self._bases[kind]

        def make_register(plugin: str) -> Callable[[type], None]:
            def register(cls: type) -> None:
                if not (isinstance(cls, type) and issubclass(cls, base)):
                    raise PluginError(f"plugin {plugin!r} registered {cls!r}, which is not a {base.__name__} subclass")
                name = getattr(cls, "name", "")
                if not name:
                    raise PluginError(f"plugin {plugin!r} registered {cls.__name__} without a name")
                if name in self.components[kind]:
                    other = self.components[kind][name].plugin
                    raise PluginError(f"plugin {plugin!r} registered {kind} {name!r}, already registered by {other!r}")
                self.components[kind][name] = Registered(name, cls, plugin)

            return register

        for plugin, exc in call_each(self.state.pm, hook, lambda plugin: {"register": make_register(plugin)}):
            if isinstance(exc, PluginError):
                self.errors[plugin] = str(exc)
            else:
                self.errors[plugin] = f"plugin {plugin!r} raised in {hook}: {type(exc).__name__}: {exc}"

    def broken(self) -> dict[str, str]:
        """Plugin name → what went wrong, for every plugin that failed to import, register or run a hook."""
        return {**self.state.broken, **self.errors}

    # ---------------------------------------------------------------- lookups
    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])

    def get(self, kind: str, name: str) -> Registered:
        try:
            return self.components[kind][name]
        except KeyError:
            known = self.names(kind)
            err = UnknownComponentError(kind, name, known)
            broken = self.broken()
            if broken:
                err.args = (err.args[0] + " Plugins that failed to load: " + "; ".join(broken.values()),)
            raise err from None

    def create(self, kind: str, name: str, config: Any = None, **overrides: Any):
        return self.get(kind, name).cls(config, **overrides)

    def add_commands(self, cli, on_error: Callable[[str], None] | None = None) -> None:
        """Let every plugin add commands; a plugin that raises is named, not fatal."""
        for plugin, exc in call_each(self.state.pm, "register_commands", lambda plugin: {"cli": cli}):
            msg = f"plugin {plugin!r} raised in register_commands: {type(exc).__name__}: {exc}"
            self.errors[plugin] = msg
            if on_error:
                on_error(msg)


def call_each(pm: pluggy.PluginManager, hook: str,
              arguments: Callable[[str], dict[str, Any]]) -> Iterator[tuple[str, Exception]]:
    """Call ``hook``'s implementations one plugin at a time; yield ``(plugin, error)`` for each that raised.

    ``arguments(plugin)`` gives the spec's arguments by name (a per-plugin callback, say). Each
    implementation receives the subset it names, as pluggy itself calls hooks, so a spec can
    grow an argument without breaking older plugins. Calling plugins one by one (instead of
    ``pm.hook.<name>(...)``) keeps a raising plugin from hiding the others and lets the
    callbacks know who registered what.
    """
    caller = getattr(pm.hook, hook)
    spec_args = set(caller.spec.argnames) if caller.spec else set()
    for impl in caller.get_hookimpls():
        kwargs = arguments(impl.plugin_name)
        if set(kwargs) != spec_args:  # a facade out of step with hookspecs.py: a bug in the core
            raise TypeError(f"hook {hook} takes {sorted(spec_args)}, the registry passed {sorted(kwargs)}")
        try:
            impl.function(**{a: kwargs[a] for a in impl.argnames})
        except Exception as exc:
            yield impl.plugin_name, exc


_lock = threading.Lock()
_registry: Registry | None = None


def get_registry() -> Registry:
    global _registry
    with _lock:
        if _registry is None:
            _registry = Registry()
        return _registry


def reset_registry() -> None:
    global _registry
    with _lock:
        _registry = None


def create_branch(name: str, config: Any = None, **overrides: Any):
    """Build the branch registered as ``name`` with config ``overrides`` (e.g. ``preset="tiny"``)."""
    return get_registry().create("branch", name, config, **overrides)


def create_fusion(name: str, config: Any = None, **overrides: Any):
    return get_registry().create("fusion", name, config, **overrides)


def create_builder(name: str, config: Any = None, **overrides: Any):
    return get_registry().create("builder", name, config, **overrides)


def create_audit(name: str, config: Any = None, **overrides: Any):
    return get_registry().create("audit", name, config, **overrides)


def list_components(kind: str, pattern: str = "*") -> list[Registered]:
    """Registered components of one kind, optionally filtered by a shell-style wildcard."""
    import fnmatch

    reg = get_registry()
    return [reg.components[kind][n] for n in reg.names(kind) if fnmatch.fnmatch(n, pattern)]
