"""The run-level configuration: which branches, which fusion, which data, where to write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from .component import ComponentConfig, format_validation_error
from .errors import ConfigError


class RunConfig(ComponentConfig):
    branches: list[str] = Field(..., min_length=1, description="Registered branch names (alignctl branches lists them).")
    fusion: str = Field("or", description="Fusion rule applied to the branch scores.")
    data: str = Field(..., description="A dataset folder (0_real/1_fake or real/fake), a CSV/JSONL manifest, a parquet "
                      "or Arrow table, a datasets.save_to_disk folder, or a Hub dataset hf:OWNER/NAME[:SPLIT].")
    data_options: dict[str, Any] = Field(
        default_factory=dict, description="How to read a table dataset: image_column, label_column, generator_column, "
        "subset_column, labels ({value: 0 or 1}), split."
    )
    preset: str | None = Field(None, description="Preset passed to every branch (e.g. 'tiny' for offline models).")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    batch_size: int | None = Field(None, ge=1, description="Override every branch's batch size.")
    workers: int = Field(0, ge=0, description="Data loader worker processes (0 decodes in the main process; at most "
                         "one per CPU core this process may use).")
    out: str | None = Field(None, description="Run directory (default: runs/<run id>).")
    store: str | None = Field(None, description="SQLite score store (default: $ALIGNCORE_STORE or ~/.aligncore/store.sqlite).")
    branch_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per-branch config overrides: {branch: {field: value}}."
    )
    fusion_options: dict[str, Any] = Field(default_factory=dict, description="Fusion config overrides.")
    explain: bool = Field(False, description="Ask branches that can explain for a short rationale per image.")
    allow_outside_paths: bool = Field(False, description="Allow manifest paths outside the manifest's folder.")
    allow_download: bool = Field(False, description="Download an hf: dataset or hf: checkpoint missing from the "
                                 "Hugging Face cache (never by default; HF_HUB_OFFLINE always wins).")
    suite: str | None = Field(None, description="Benchmark suite this run belongs to (for the leaderboard).")
    dataset_name: str | None = Field(None, description="Name of the dataset in the leaderboard (default: folder name).")
    perturb: str | None = Field(
        None, description="Deterministic perturbation applied to every image before branch preprocessing, "
        "e.g. jpeg:75, webp:80, blur:1.0, resize:0.5, crop:0.8 (chain with '+')."
    )
    overwrite: bool = Field(False, description="Write into an `out` folder that holds other files, the data (or lies "
                            "inside it, or holds it), or a run of another configuration.")
    fusion_state: dict[str, Any] | None = Field(
        None, description="A fitted or calibrated fusion's state file (as written by alignctl ablate): its config, "
        "fitted state and the images it was fitted on (left out of the run's metrics)."
    )
    allow_partial: bool = Field(
        False, description="Accept a run in which a branch failed on some images: it records a leaderboard row and "
        "`alignctl run` exits 0 instead of 3 (the metrics cover only the images every branch scored either way)."
    )

    @field_validator("perturb")
    @classmethod
    def _perturb(cls, v):
        from .perturb import normalize_perturb

        try:
            return normalize_perturb(v)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("workers")
    @classmethod
    def _workers(cls, v):
        from .limits import check_workers

        try:
            return check_workers(v)
        except ConfigError as exc:
            raise ValueError(str(exc).rstrip(".")) from None

    @field_validator("branches", mode="before")
    @classmethod
    def _split(cls, v):
        if isinstance(v, str):
            v = [b.strip() for b in v.split(",") if b.strip()]
        return v

    @field_validator("branches")
    @classmethod
    def _unique(cls, v):
        if len(set(v)) != len(v):
            raise ValueError("a branch is listed twice")
        return v


def read_config_file(path: str | Path) -> dict[str, Any]:
    """YAML, TOML or JSON → dict, with a clear error naming the file. The file must be a regular file of at
    most 16 MiB whose parsed value stays small (YAML alias bombs and deep nesting are refused, see
    :mod:`aligncore.parsing`)."""
    from .parsing import read_structured

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file {p} does not exist.")
    data = read_structured(p, "config file")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of fields, not {type(data).__name__}.")
    return data


#: what a run adds to its config when it writes RUN/config.yaml (``runner.resolved_config``)
RUN_RECORD_KEYS = ("run_id", "fingerprints")


def is_run_record(data: dict[str, Any]) -> bool:
    """A run's own ``config.yaml`` (the config as run, with what was resolved), not a hand-written config."""
    return all(k in data for k in RUN_RECORD_KEYS)


def from_run_record(data: dict[str, Any]) -> dict[str, Any]:
    """The settings of a run's ``config.yaml``: the run's fields, without what it resolved (fingerprints,
    dataset, ...) and without its ``out`` (a repeat goes to a new folder unless ``--out`` says otherwise)."""
    fields = set(RunConfig.model_fields) - {"out"}
    out = {k: v for k, v in data.items() if k in fields}
    root = (data.get("dataset") or {}).get("root") if isinstance(data.get("dataset"), dict) else None
    if isinstance(root, str) and root and (root.startswith("hf:") or Path(root).is_absolute()):
        out["data"] = root  # the dataset as it was resolved: the repeat does not depend on the working folder
    return out


def make_run_config(file: str | Path | None = None, **overrides: Any) -> RunConfig:
    """File values first, then every override that is not None.

    ``file`` may be a run's own ``RUN/config.yaml``: it repeats that run (same branches, options,
    checkpoints, data and fusion) into a new folder.
    """
    data = read_config_file(file) if file else {}
    if file and is_run_record(data):
        data = from_run_record(data)
    for k, v in overrides.items():
        if v is None:
            continue
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            merged = dict(data[k])
            for kk, vv in v.items():
                merged[kk] = {**merged.get(kk, {}), **vv} if isinstance(vv, dict) and isinstance(merged.get(kk), dict) else vv
            data[k] = merged
        else:
            data[k] = v
    try:
        return RunConfig(**data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(f"the run (config file {file})" if file else "the run", err,
                                                  RunConfig.model_fields)) from None
