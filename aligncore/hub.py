"""Where pretrained weights come from: a local path, the Hugging Face cache, or (only when asked) the Hub.

:func:`resolve_weights` is the one resolver every branch and builder uses, with one
offline rule (:func:`hub_offline`) and one error for a missing model
(:class:`aligncore.errors.ModelUnavailableError`, which names the id and how to provide it).
Nothing here touches the network unless the caller passes ``allow_download=True`` and
``HF_HUB_OFFLINE`` is unset, so a missing model fails at once instead of hanging.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

from .errors import ModelUnavailableError

OFFLINE_VALUES = ("1", "true", "yes", "on")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` is set to a true value (read at call time, so tests and shells can change it)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in OFFLINE_VALUES


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else the library's default."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def is_hub_id(source: str) -> bool:
    """``owner/name`` (or a bare ``name``) that is not a path on this machine."""
    return not source.startswith((".", "~", "/")) and not os.path.isabs(source) and bool(_HUB_ID.match(source))


def resolve_weights(source: str | Path, files: Sequence[str] | None = None, allow_download: bool = False,
                    revision: str | None = None, how: str = "") -> Path:
    """A local path for ``source``: the path itself, its snapshot in the Hugging Face cache, or a download.

    - ``source`` that exists on disk is returned as given (a file or folder); with ``files``,
      a folder must hold every one of them.
    - a Hub id (``owner/name``) resolves to its cached snapshot folder at ``revision``
      (default: main) when that holds ``files`` (or, with ``files=None``, anything);
    - otherwise, only when ``allow_download`` and not :func:`hub_offline`, ``files`` (or the
      whole repository when None) are downloaded and the snapshot folder is returned.

    Anything else raises :class:`ModelUnavailableError` naming ``source``; ``how`` is added to
    the message (e.g. the branch option that takes a local path).
    """
    text = str(source)
    local = Path(text).expanduser()
    if local.exists():
        missing = [f for f in files or () if local.is_dir() and not (local / f).exists()]
        if missing:
            raise ModelUnavailableError(text, f"The folder has no {', '.join(missing)}. {how}".strip(), local=True)
        return local
    if not is_hub_id(text):
        raise ModelUnavailableError(text, f"No such file or folder. {how}".strip(), local=True)
    snapshot = cached_snapshot(text, files, revision)
    if snapshot is not None:
        return snapshot
    if not allow_download:
        raise ModelUnavailableError(text, f"It is not in the Hugging Face cache ({hub_cache_dir()}) and downloading "
                                    f"was not allowed. {how}".strip())
    if hub_offline():
        raise ModelUnavailableError(text, f"HF_HUB_OFFLINE is set and it is not in the cache. {how}".strip())
    return _download(text, files, revision, how)


def cached_snapshot(repo_id: str, files: Sequence[str] | None = None, revision: str | None = None) -> Path | None:
    """The cache's snapshot folder of ``repo_id`` at ``revision`` when it holds ``files``; None otherwise."""
    from huggingface_hub.file_download import repo_folder_name

    storage = hub_cache_dir() / repo_folder_name(repo_id=repo_id, repo_type="model")
    rev = revision or "main"
    commit = rev
    if not _COMMIT.match(rev):
        ref = storage / "refs" / rev
        if not ref.is_file():
            return None
        commit = ref.read_text().strip()
    snap = storage / "snapshots" / commit
    if not snap.is_dir():
        return None
    if files:
        return snap if all((snap / f).exists() for f in files) else None
    return snap if any(snap.iterdir()) else None


def snapshot_revision(path: str | Path) -> str | None:
    """The commit of a Hugging Face cache snapshot that ``path`` lies in (None for other paths)."""
    parts = Path(path).parts
    for i in range(len(parts) - 1):
        if parts[i] == "snapshots" and i > 0 and parts[i - 1].startswith("models--") and _COMMIT.match(parts[i + 1]):
            return parts[i + 1]
    return None


def _download(repo_id: str, files: Sequence[str] | None, revision: str | None, how: str) -> Path:
    from huggingface_hub import hf_hub_download, snapshot_download

    cache = str(hub_cache_dir())
    try:
        if not files:
            return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache))
        got = [hf_hub_download(repo_id, f, revision=revision, cache_dir=cache) for f in files]
    except Exception as exc:  # network, auth, missing repo or file: one message, the cause attached
        raise ModelUnavailableError(repo_id, how, cause=exc) from None
    return Path(got[0]).parents[len(Path(files[0]).parts) - 1]
