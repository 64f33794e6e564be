"""Shared fixtures: compose the real Hydra configs, find MNIST, isolate run directories."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def data_root() -> Path | None:
    """The MNIST root for tests: $BNNREPRO_DATA, else ../shared/data; None when neither has MNIST."""
    for candidate in (os.environ.get("BNNREPRO_DATA"), SHARED_DATA):
        if candidate and (Path(candidate) / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").is_file():
            return Path(candidate)
    return None


@pytest.fixture
def mnist_root() -> Path:
    root = data_root()
    if root is None:
        pytest.skip("MNIST archives not found (set BNNREPRO_DATA or put them in ../shared/data)")
    return root


def compose(overrides: list[str] | None = None):
    """The config `bnnrepro train <overrides>` would run with (composition only, no job)."""
    from bnnrepro.compose import compose as compose_config

    return compose_config(list(overrides or []))


@pytest.fixture
def runs_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "runs"
    monkeypatch.setenv("BNNREPRO_RUNS", str(path))
    return path
