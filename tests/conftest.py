"""Shared fixtures. Real services (S3, Docker engine, registry) are session fixtures that start
real processes on loopback ports and stop them afterwards."""
from __future__ import annotations

from pathlib import Path

import pytest

LFW10 = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw10"


@pytest.fixture(autouse=True)
def faceops_home(tmp_path, monkeypatch) -> Path:
    """Every test gets its own empty $FACEOPS_HOME so state never leaks between tests."""
    home = tmp_path / "faceops-home"
    monkeypatch.setenv("FACEOPS_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def lfw10() -> Path:
    """The shared 10 people x 10 LFW photos (read in place, never copied into the repo)."""
    if not LFW10.is_dir():
        pytest.skip(f"shared LFW photos not found at {LFW10}")
    return LFW10
