"""Bounded parsing of configs, states and manifests: a small file may not expand into a huge structure.

YAML aliases let a few hundred bytes describe a structure of billions of nodes ("billion laughs"),
and deep nesting exhausts the parser's stack. Everything aligncore parses from a file or an option
goes through :func:`parse_text` / :func:`read_structured`: the file is a regular file below a size
limit, the parser's recursion errors become a message, and the parsed value is walked once, counting
every node as often as aliases repeat it, until :data:`MAX_NODES`, :data:`MAX_DEPTH` or
:data:`MAX_CHARS` is passed. The walk is iterative and stops at the limit, so a bomb costs
milliseconds, never memory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from .errors import AlignCoreError, ConfigError

#: a config or state file may hold at most this many bytes
MAX_FILE_BYTES = 16 << 20
#: nodes (mappings, lists, scalars) of a parsed value, counted with every alias expanded
MAX_NODES = 100_000
#: nesting depth of a parsed value
MAX_DEPTH = 64
#: characters of all strings (keys included) of a parsed value, counted with every alias expanded
MAX_CHARS = 16 << 20


def check_size(value: Any, where: str, error: type[AlignCoreError] = ConfigError, max_nodes: int = MAX_NODES,
               max_depth: int = MAX_DEPTH, max_chars: int = MAX_CHARS) -> Any:
    """``value`` itself, once its expanded size is known to be within the limits; else ``error`` naming ``where``."""
    nodes = chars = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        nodes += 1
        if depth > max_depth:
            raise error(f"{where} is nested deeper than {max_depth} levels; aligncore refuses it.")
        if isinstance(v, dict):
            for k, x in v.items():
                if isinstance(k, str):
                    chars += len(k)
                stack.append((x, depth + 1))
        elif isinstance(v, (list, tuple)):
            stack.extend((x, depth + 1) for x in v)
        elif isinstance(v, (str, bytes)):
            chars += len(v)
        if nodes > max_nodes or chars > max_chars:
            raise error(f"{where} expands to more than {max_nodes} values or {max_chars} characters (YAML aliases "
                        "repeat what they name); aligncore refuses it.")
    return value


def _yaml(text: str):
    import yaml

    return yaml.safe_load(text)


def _toml(text: str):
    import tomllib

    return tomllib.loads(text)


PARSERS: dict[str, Callable[[str], Any]] = {"yaml": _yaml, "json": json.loads, "toml": _toml}


def fmt_for(path: str | Path) -> str:
    """The parser a file name asks for: .toml, .json, anything else YAML."""
    suffix = Path(path).suffix.lower()
    return "toml" if suffix == ".toml" else "json" if suffix in (".json", ".jsonl") else "yaml"


def parse_text(text: str, fmt: str, where: str, error: type[AlignCoreError] = ConfigError, **limits: int) -> Any:
    """Parse ``text`` (yaml, json or toml) and check its expanded size; every failure is ``error`` naming ``where``."""
    try:
        value = PARSERS[fmt](text)
    except RecursionError:
        raise error(f"{where} is nested too deeply to parse; aligncore refuses it.") from None
    except MemoryError:
        raise error(f"{where} is too large to parse.") from None
    except Exception as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        if hasattr(exc, "lineno"):  # json / tomllib
            at = f" at line {exc.lineno}, column {getattr(exc, 'colno', '?')}"
        what = getattr(exc, "problem", None) or getattr(exc, "msg", None) or str(exc)
        what = " ".join(str(what).split())  # one paragraph: YAML's messages span several lines
        raise error(f"{where} cannot be parsed{at}: {what}.") from None
    return check_size(value, where, error, **limits)


def read_structured(path: str | Path, what: str, fmt: str | None = None, error: type[AlignCoreError] = ConfigError,
                    max_bytes: int = MAX_FILE_BYTES, **limits: int) -> Any:
    """A YAML/JSON/TOML file (a regular file of at most ``max_bytes``), parsed and size-checked.
    ``what`` names it in errors (``"config file"``)."""
    from .files import FileRefused, read_text

    try:
        text = read_text(path, max_bytes, what)
    except FileRefused as exc:
        raise error(str(exc)) from None
    return parse_text(text, fmt or fmt_for(path), f"{what} {path}", error, **limits)
