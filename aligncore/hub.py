"""Where pretrained weights come from: a local path, the Hugging Face cache, or (only when asked) the Hub.

:func:`resolve_weights` is the one resolver every branch and builder uses, with one
offline rule (:func:`hub_offline`) and one error for a missing model
(:class:`aligncore.errors.ModelUnavailableError`, which names the id and how to provide it).
Nothing here touches the network unless the caller passes ``allow_download=True`` and
``HF_HUB_OFFLINE`` is unset, so a missing model fails at once instead of hanging.
The same resolver finds Hub datasets (``repo_type="dataset"``) and aligncore detectors
(``hf:OWNER/NAME[@REV]``, :func:`parse_hub_ref`); :func:`push_folder` uploads a folder
(``alignctl push``), the only call here that writes to the Hub.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

from .errors import ModelUnavailableError

OFFLINE_VALUES = ("1", "true", "yes", "on")
HUB_PREFIX = "hf:"
REPO_TYPES = ("model", "dataset")
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


def parse_hub_ref(text: str) -> tuple[str, str | None]:
    """``hf:OWNER/NAME[@REV]`` (or ``OWNER/NAME[@REV]``) → (repo id, revision or None)."""
    spec = text[len(HUB_PREFIX):] if text.startswith(HUB_PREFIX) else text
    repo, _, rev = spec.partition("@")
    if not is_hub_id(repo) or "/" not in repo or ("@" in spec and not rev):
        raise ModelUnavailableError(text, "Write a Hub repository as hf:OWNER/NAME or hf:OWNER/NAME@REVISION.", local=True)
    return repo, rev or None


def snapshot_origin(path: str | Path) -> tuple[str, str] | None:
    """(repo id, commit) of the Hugging Face cache snapshot that ``path`` lies in; None for other paths."""
    parts = Path(path).parts
    for i in range(1, len(parts) - 1):
        if parts[i] == "snapshots" and _COMMIT.match(parts[i + 1]):
            kind, _, rest = parts[i - 1].partition("--")
            if kind in ("models", "datasets") and rest:
                return rest.replace("--", "/"), parts[i + 1]
    return None


def resolve_weights(source: str | Path, files: Sequence[str] | None = None, allow_download: bool = False,
                    revision: str | None = None, how: str = "", repo_type: str = "model") -> Path:
    """A local path for ``source``: the path itself, its snapshot in the Hugging Face cache, or a download.

    - ``source`` that exists on disk is returned as given (a file or folder); with ``files``,
      a folder must hold every one of them.
    - a Hub id (``owner/name``) resolves to its cached snapshot folder at ``revision``
      (default: main) when that holds ``files`` (or, with ``files=None``, anything);
    - otherwise, only when ``allow_download`` and not :func:`hub_offline`, ``files`` (or the
      whole repository when None) are downloaded and the snapshot folder is returned.

    Anything else raises :class:`ModelUnavailableError` naming ``source``; ``how`` is added to
    the message (e.g. the branch option that takes a local path). ``repo_type="dataset"`` finds a
    Hub dataset (``datasets--OWNER--NAME`` in the cache) the same way.
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
    if repo_type not in REPO_TYPES:
        raise ValueError(f"repo_type must be one of {REPO_TYPES}, not {repo_type!r}")
    snapshot = cached_snapshot(text, files, revision, repo_type)
    if snapshot is not None:
        return snapshot
    if not allow_download:
        raise ModelUnavailableError(text, f"It is not in the Hugging Face cache ({hub_cache_dir()}) and downloading "
                                    f"was not allowed.{_unreferenced(text, revision, repo_type)} {how}".strip(),
                                    repo_type=repo_type)
    if hub_offline():
        raise ModelUnavailableError(text, f"HF_HUB_OFFLINE is set and it is not in the cache. {how}".strip(),
                                    repo_type=repo_type)
    return _download(text, files, revision, how, repo_type)


def _storage(repo_id: str, repo_type: str) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return hub_cache_dir() / repo_folder_name(repo_id=repo_id, repo_type=repo_type)


def _unreferenced(repo_id: str, revision: str | None, repo_type: str) -> str:
    """A hint when the cache holds snapshots of ``repo_id`` but no ref for the revision asked for."""
    snaps = _storage(repo_id, repo_type) / "snapshots"
    revs = sorted(p.name for p in snaps.iterdir() if p.is_dir()) if snaps.is_dir() else []
    if not revs or (revision and _COMMIT.match(revision)):
        return ""
    return (f" The cache holds snapshot(s) {', '.join(r[:12] for r in revs)} but no refs/{revision or 'main'}: "
            f"name one as {repo_id}@<commit>.")


def cached_snapshot(repo_id: str, files: Sequence[str] | None = None, revision: str | None = None,
                    repo_type: str = "model") -> Path | None:
    """The cache's snapshot folder of ``repo_id`` at ``revision`` when it holds ``files``; None otherwise."""
    storage = _storage(repo_id, repo_type)
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


def _download(repo_id: str, files: Sequence[str] | None, revision: str | None, how: str,
              repo_type: str = "model") -> Path:
    from huggingface_hub import hf_hub_download, snapshot_download

    cache = str(hub_cache_dir())
    try:
        if not files:
            return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache, repo_type=repo_type))
        got = [hf_hub_download(repo_id, f, revision=revision, cache_dir=cache, repo_type=repo_type) for f in files]
    except Exception as exc:  # network, auth, missing repo or file: one message, the cause attached
        raise ModelUnavailableError(repo_id, how, cause=exc, repo_type=repo_type) from None
    return Path(got[0]).parents[len(Path(files[0]).parts) - 1]


def push_folder(folder: str | Path, repo_id: str, private: bool = False, commit_message: str | None = None,
                revision: str | None = None) -> str:
    """Create ``repo_id`` (a model repository) if needed and upload every file of ``folder`` in one commit.

    Returns the commit's URL. Authentication is huggingface_hub's (``hf auth login`` or ``HF_TOKEN``).
    Raises :class:`aligncore.errors.AlignCoreError` when offline mode is set or the Hub refuses.
    """
    from huggingface_hub import HfApi

    from .errors import AlignCoreError

    if hub_offline():
        raise AlignCoreError(f"cannot push to {repo_id}: HF_HUB_OFFLINE is set (unset it to upload).")
    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", revision=revision,
                                 commit_message=commit_message or "Upload aligncore detector")
    except Exception as exc:  # network, auth, permissions: one message naming the repository
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        raise AlignCoreError(f"could not push to the Hub repository {repo_id}: {type(exc).__name__}: {first}. "
                             "Log in with `hf auth login` (or set HF_TOKEN) and check the repository name.") from None
    return str(getattr(info, "commit_url", None) or info)
