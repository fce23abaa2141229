"""aligncore: detect AI-generated images with task-aligned experts and a fusion rule.

Importing this package is cheap: heavy modules (torch, transformers) load only when a
component that needs them is created.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .hookspecs import hookimpl  # noqa: E402

_LAZY = {
    "Branch": ("aligncore.branch", "Branch"),
    "BranchConfig": ("aligncore.branch", "BranchConfig"),
    "SupervisionBuilder": ("aligncore.supervision", "SupervisionBuilder"),
    "BuilderConfig": ("aligncore.supervision", "BuilderConfig"),
    "WorkItem": ("aligncore.supervision", "WorkItem"),
    "Fusion": ("aligncore.fusion", "Fusion"),
    "FusionConfig": ("aligncore.fusion", "FusionConfig"),
    "FusionOutput": ("aligncore.fusion", "FusionOutput"),
    "create_branch": ("aligncore.registry", "create_branch"),
    "create_fusion": ("aligncore.registry", "create_fusion"),
    "create_builder": ("aligncore.registry", "create_builder"),
    "list_components": ("aligncore.registry", "list_components"),
    "Detector": ("aligncore.api", "Detector"),
    "RunConfig": ("aligncore.config", "RunConfig"),
    "run": ("aligncore.runner", "run"),
    "load_dataset": ("aligncore.data", "load_dataset"),
    "load_image": ("aligncore.data", "load_image"),
    "compute_metrics": ("aligncore.metrics", "compute_metrics"),
}

__all__ = ["__version__", "hookimpl", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        value = getattr(importlib.import_module(mod), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'aligncore' has no attribute {name!r}")
