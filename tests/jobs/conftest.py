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


@pytest.fixture(params=["closed port", "frozen endpoint"])
def s3_nowhere(request, s3_env, monkeypatch) -> str:
    """faceops' S3 endpoint moved (after the test server's fixtures) to one it cannot reach: a
    closed loopback port, which refuses connections, or a loopback listener that accepts them
    and never answers (tests.harness.net.OutageProxy with ``freeze``). One short try per request
    keeps a real submit's full checks short too. Yields the endpoint."""
    from tests.harness.net import OutageProxy, free_port

    for name, value in {"FACEOPS_S3_ATTEMPTS": "1", "FACEOPS_S3_CONNECT_TIMEOUT": "1",
                        "FACEOPS_S3_READ_TIMEOUT": "1", "FACEOPS_S3_UPLOAD_ATTEMPTS": "1"}.items():
        monkeypatch.setenv(name, value)
    if request.param == "closed port":
        endpoint = f"http://127.0.0.1:{free_port()}"
        monkeypatch.setenv("FACEOPS_S3_ENDPOINT", endpoint)
        yield endpoint
        return
    proxy = OutageProxy(s3_env.endpoint, freeze=True)
    monkeypatch.setenv("FACEOPS_S3_ENDPOINT", proxy.endpoint)
    yield proxy.endpoint
    proxy.down()
