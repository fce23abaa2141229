"""Shared fixtures: an isolated score store per test, synthetic image sets, the shared data path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path | None:
    """The read-only ../shared folder beside the checkout, or $ALIGNCORE_SHARED; None if absent."""
    env = os.environ.get("ALIGNCORE_SHARED")
    p = Path(env) if env else REPO.parent / "shared"
    return p if (p / "data").is_dir() else None


@pytest.fixture(autouse=True)
def _isolated_store(tmp_path, monkeypatch):
    from aligncore.quiet import QUIET_ENV

    monkeypatch.setenv("ALIGNCORE_STORE", str(tmp_path / "store.sqlite"))
    monkeypatch.setenv("ALIGNCORE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ALIGNCORE_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("ALIGNCORE_PLUGINS", raising=False)
    for key in QUIET_ENV:  # an in-process `alignctl` quiets the process's environment: undo it after each test
        monkeypatch.setenv(key, os.environ[key]) if key in os.environ else monkeypatch.delenv(key, raising=False)
    yield


@pytest.fixture
def image_folder(tmp_path):
    from aligncore.testing import make_image_folder

    return make_image_folder(tmp_path / "ds", n_real=6, n_fake=6, generators=("genA", "genB"))


@pytest.fixture
def shared_data() -> Path:
    d = shared_dir()
    if d is None:
        pytest.skip("the shared test data (../shared/data or $ALIGNCORE_SHARED) is not present")
    return d / "data"


@pytest.fixture
def shared_weights() -> Path:
    d = shared_dir()
    if d is None or not (d / "weights").is_dir():
        pytest.skip("the shared weights (../shared/weights or $ALIGNCORE_SHARED) are not present")
    return d / "weights"
