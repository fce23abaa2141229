"""Files that ship inside the package: benchmark suites (``suites/*.yaml``), accelerate
launch configs (``accelerate/*.yaml``) and study recipes (``studies/*.yaml``).

They are found through ``importlib.resources``, so a source checkout, an editable install
and an installed wheel read the same files; nothing depends on where the source tree lies.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path

from ..errors import AlignCoreError, ConfigError


def resource_dir(kind: str) -> Path:
    """The folder of shipped ``kind`` files (``"suites"``, ``"accelerate"`` or ``"studies"``)."""
    folder = resources.files(__name__) / kind
    if not isinstance(folder, Path):  # e.g. a zip import: accelerate and YAML readers need real files
        raise AlignCoreError(f"aligncore's packaged {kind} files are not on the file system ({folder}); "
                             "install aligncore from a wheel or a source folder, not a zip.")
    return folder


def accelerate_configs() -> dict[str, Path]:
    """Shipped accelerate configs by name (file stem), e.g. ``{"ddp_8gpu": Path(...)}``."""
    return {p.stem: p for p in sorted(resource_dir("accelerate").glob("*.yaml"))}


def accelerate_config(name: str) -> Path:
    """The path of the shipped accelerate config ``name``; an unknown name lists the known ones."""
    known = accelerate_configs()
    if name in known:
        return known[name]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"no shipped accelerate config {name!r}.{hint} Known: {', '.join(known)}.")


def describe(path: Path) -> str:
    """The first comment line of a shipped YAML file (what it is for), or ''."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""
