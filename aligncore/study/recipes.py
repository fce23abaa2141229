"""Recipes: study files shipped with aligncore (``aligncore/resources/studies/*.yaml``), one per open question.

Folders named in ``$ALIGNCORE_STUDIES_DIR`` (several joined with the path separator) add recipes and
take precedence over a shipped one of the same name, as ``$ALIGNCORE_SUITES_DIR`` does for suites.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..component import did_you_mean
from ..errors import ConfigError

STUDIES_DIR_ENV = "ALIGNCORE_STUDIES_DIR"


def recipe_dirs() -> list[Path]:
    from ..resources import resource_dir

    extra = [Path(d).expanduser() for d in os.environ.get(STUDIES_DIR_ENV, "").split(os.pathsep) if d.strip()]
    return [d for d in [*extra, resource_dir("studies")] if d.is_dir()]


def list_recipes() -> dict[str, Path]:
    """Recipe name (file stem) → file, the first found in :func:`recipe_dirs`' order."""
    seen: dict[str, Path] = {}
    for d in recipe_dirs():
        for p in sorted(d.glob("*.yaml")):
            seen.setdefault(p.stem, p)
    return dict(sorted(seen.items()))


def find_recipe(name: str) -> Path:
    known = list_recipes()
    if name in known:
        return known[name]
    raise ConfigError(f"no study file {name!r} and no recipe of that name.{did_you_mean(name, known)} "
                      f"Recipes: {', '.join(known) or 'none'} (alignctl study list).")
