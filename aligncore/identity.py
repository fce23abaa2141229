"""What makes up a component's identity beyond its config: its code, the libraries that compute
its scores, and digests of weight files too large to hash on every run.

- :func:`source_digest`: a digest of the Python source of the modules that define a component
  class (every class of its MRO and of its config class's MRO), of the modules it names in
  ``source_modules``, and, for a plugin's modules (outside the core ``aligncore`` package), of
  the modules of the plugin's own package that they import, transitively (e.g. a ``*_model.py``
  beside the plugin and the ``layers.py`` it imports). Editing any of them changes the digest, for third-party plugins as for built-ins.
- :func:`library_versions`: ``{"torch": "2.14", ...}``, major.minor of installed distributions.
- :func:`cached_file_digest`: the sha256 of a (large) file, remembered per (path, size, mtime,
  inode) in ``$ALIGNCORE_HOME/digests.json`` so a 15 GB model folder is hashed once, not per run.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Iterable

CORE_PACKAGE = "aligncore"
_SKIP_MODULES = ("builtins", "abc", "typing")


def _class_modules(cls: type) -> list[str]:
    mods = []
    for klass in cls.__mro__:
        mod = klass.__module__
        if mod in _SKIP_MODULES or mod.split(".")[0] in ("pydantic", "pydantic_core"):
            continue
        mods.append(mod)
    return mods


def component_modules(cls: type) -> list[str]:
    """Names of the modules whose source makes up ``cls``'s code identity (sorted, unique)."""
    mods: list[str] = []
    for klass in (cls, getattr(cls, "config_class", None)):
        if isinstance(klass, type):
            mods += _class_modules(klass)
    for klass in cls.__mro__:
        mods += list(vars(klass).get("source_modules", ()) or ())
    # a plugin's own modules are followed transitively: its scoring code may sit two imports away
    # (branch.py -> model.py -> layers.py), and an edit there must change the fingerprint too
    seen = set(mods)
    todo = [m for m in seen if m.split(".")[0] != CORE_PACKAGE]
    while todo:
        for dep in _package_imports(todo.pop()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return sorted(seen)


def _module_file(name: str) -> Path | None:
    mod = sys.modules.get(name)
    path = getattr(mod, "__file__", None) if mod is not None else None
    if path is None:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            return None
        path = spec.origin if spec is not None and spec.has_location else None
    if not path:
        return None
    p = Path(path)
    if p.suffix in (".pyc", ".pyo"):
        src = p.with_suffix(".py")
        p = src if src.exists() else p
    return p if p.is_file() else None


def _package_imports(name: str) -> list[str]:
    """Modules of ``name``'s own top-level package that ``name`` imports (anywhere in its source, lazily too)."""
    path = _module_file(name)
    if path is None or path.suffix != ".py":
        return []
    st = path.stat()
    return list(_imports_of(name, str(path), st.st_size, st.st_mtime_ns))


@lru_cache(maxsize=256)
def _imports_of(name: str, path_text: str, size: int, mtime_ns: int) -> tuple[str, ...]:
    path = Path(path_text)
    try:
        tree = ast.parse(_read(path))
    except (SyntaxError, ValueError):
        return ()
    top = name.split(".")[0]
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == top]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                mod = ".".join(parent + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != top:
                continue
            found.append(mod)
            # ``from . import x`` / ``from .pkg import mod``: the names may be modules themselves
            found += [f"{mod}.{a.name}" for a in node.names if _module_file(f"{mod}.{a.name}") is not None]
    return tuple(m for m in found if m != name and _module_file(m) is not None)


def _read(path: Path) -> bytes:
    return path.read_bytes()


@lru_cache(maxsize=512)
def _file_sha(path: str, size: int, mtime_ns: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def source_digest(cls: type) -> str:
    """sha256 (hex) over the names and source bytes of :func:`component_modules` of ``cls``."""
    h = hashlib.sha256()
    for mod in component_modules(cls):
        p = _module_file(mod)
        h.update(mod.encode() + b"\0")
        if p is None:
            h.update(str(getattr(sys.modules.get(mod), "__version__", "")).encode())
            continue
        st = p.stat()
        h.update(_file_sha(str(p), st.st_size, st.st_mtime_ns).encode())
    return h.hexdigest()


def library_versions(names: Iterable[str]) -> dict[str, str]:
    """``{distribution: "major.minor"}`` for the named distributions (``"absent"`` when not installed)."""
    return {n: _major_minor(n) for n in sorted(set(names))}


@lru_cache(maxsize=64)
def _major_minor(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return ".".join(version(name).split(".")[:2])
    except PackageNotFoundError:
        return "absent"


# ---------------------------------------------------------------------- large weight files


def _digest_cache_path() -> Path:
    home = Path(os.environ.get("ALIGNCORE_HOME", Path.home() / ".aligncore")).expanduser()
    return home / "digests.json"


def cached_file_digest(path: str | Path) -> str:
    """sha256 (hex) of a file, hashed once per (path, size, mtime, inode) and remembered on disk."""
    from .hashing import sha256_file

    p = Path(path).resolve()
    st = p.stat()
    key = f"{p}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    cache_file = _digest_cache_path()
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8"))
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    got = cache.get(key)
    if isinstance(got, str) and len(got) == 64:
        return got
    digest = sha256_file(p)
    cache = {k: v for k, v in cache.items() if not k.startswith(f"{p}|")}
    cache[key] = digest
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, sort_keys=True), encoding="utf-8")
        os.replace(tmp, cache_file)
    except OSError:
        pass  # an unwritable home only costs hashing again next time
    return digest


def weights_identity(source: str | Path) -> str:
    """What a base model's resolved weights are: the Hub commit of a cache snapshot, else a digest of
    the files (a file, or every file of a folder), each hashed once and remembered."""
    from .hub import snapshot_revision

    p = Path(source)
    rev = snapshot_revision(p)
    if rev:
        return f"rev:{rev}"
    if p.is_file():
        return f"sha256:{cached_file_digest(p)[:32]}"
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        h.update(str(f.relative_to(p)).encode() + b"\0" + cached_file_digest(f).encode())
    return f"sha256:{h.hexdigest()[:32]}"
