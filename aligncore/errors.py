"""Errors the core raises. The CLI turns each into a one-paragraph message."""

from __future__ import annotations

import difflib


class AlignCoreError(Exception):
    """Base class for errors a user can act on (bad names, configs, inputs)."""


class UnknownComponentError(AlignCoreError, KeyError):
    """An unknown branch, fusion or builder name; lists the known names and close matches."""

    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind, self.name, self.known = kind, name, sorted(known)
        close = difflib.get_close_matches(name, self.known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        listed = ", ".join(self.known) or "(none registered)"
        plural = "branches" if kind == "branch" else kind + "s"
        super().__init__(f"Unknown {kind} {name!r}.{hint} Known {plural}: {listed}.")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class PluginError(AlignCoreError):
    """A plugin failed to import or raised inside a hook."""


class ModelUnavailableError(AlignCoreError):
    """Pretrained weights are not available locally and were not (or could not be) downloaded.

    ``local=True``: ``model_id`` is a path on this machine that is missing or incomplete.
    """

    def __init__(self, model_id: str, how: str = "", cause: BaseException | None = None, local: bool = False,
                 repo_type: str = "model"):
        self.model_id = model_id
        what, flag = ("Model", "") if repo_type == "model" else ("Dataset", f"--repo-type {repo_type} ")
        if local:
            msg = f"{what} {model_id!r} is not available: the local path cannot be used."
        else:
            msg = (
                f"{what} {model_id!r} is not available locally (not a local path, not in the Hugging Face cache) "
                f"and was not downloaded. Provide it by downloading it where you have network access "
                f"(`hf download {flag}{model_id} --local-dir DIR`) and passing the directory instead of the id, "
                f"by pre-filling the Hugging Face cache (HF_HOME), or by allowing the download."
            )
        if how:
            msg += " " + how
        if cause is not None:
            msg += f" (underlying error: {type(cause).__name__}: {str(cause).splitlines()[0][:200] if str(cause) else ''})"
        super().__init__(msg)


class ConfigError(AlignCoreError):
    """An invalid configuration; the message names the field."""


class DataError(AlignCoreError):
    """A dataset or manifest that cannot be read; the message names the file and line."""
