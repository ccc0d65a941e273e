"""Fixtures for the jobs tests."""
from __future__ import annotations

import pytest


@pytest.fixture
def fast_cloud(monkeypatch) -> None:
    """Cloud backends poll, back off and cache status in milliseconds, so a remote job's whole
    life fits in a test."""
    monkeypatch.setenv("FACEOPS_CLOUD_POLL_SECONDS", "0.05")
    monkeypatch.setenv("FACEOPS_CLOUD_BACKOFF", "0.01")
    monkeypatch.setenv("FACEOPS_CLOUD_MIN_POLL_SECONDS", "0")
