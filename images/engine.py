"""The one way faceops reaches a Docker engine: ``DOCKER_HOST`` (or the default socket), with an
error that says how to start an engine instead of a connection traceback."""
from __future__ import annotations

import os

from jobs.core.errors import FaceopsError
from jobs.core.lazy import docker

START_HINT = ("start one with `sudo systemctl start docker` (or `sudo dockerd &`), "
              "or point DOCKER_HOST at a running engine")


class EngineError(FaceopsError):
    """No Docker engine answers, or it refused a request."""


def client():
    """A ``docker.DockerClient`` for the engine named by the environment, already checked to answer.

    The client also carries the registry credentials of the docker config (``DOCKER_CONFIG`` or
    ``~/.docker``), which push and pull use."""
    try:
        return docker.from_env()
    except docker.errors.DockerException as exc:
        where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        raise EngineError(f"no Docker engine answers at {where} ({_reason(exc)}); {START_HINT}") from None


REASONS = {
    "FileNotFoundError": "no socket there",
    "ConnectionRefusedError": "connection refused",
    "PermissionError": "permission denied; add yourself to the docker group",
}


def _reason(exc: Exception) -> str:
    """The innermost cause of a connection failure, short enough for one line."""
    text = str(exc)
    for marker, reason in REASONS.items():
        if marker in text:
            return reason
    return text.splitlines()[0][:200] if text else type(exc).__name__
