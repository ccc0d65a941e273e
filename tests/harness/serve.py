"""``faceops serve`` as a real process on a free loopback port, for the tests and the serve
benchmark: started through the installed ``faceops`` executable, ready once ``/healthz`` answers,
stopped afterwards."""
from __future__ import annotations

import os
import sys
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tests.harness.net import free_port
from tests.harness.process import running

READY_SECONDS = 180  # loading two ONNX models and a gallery on a shared 2-core machine


@dataclass
class Server:
    """A running ``faceops serve``: its base URL, its log and its process id."""

    url: str
    log: Path
    pid: int


def faceops_executable() -> str:
    """The ``faceops`` console script of the interpreter running the tests."""
    return str(Path(sys.executable).with_name("faceops"))


@contextmanager
def running_serve(gallery: str | Path, log: Path, *args: str, env: dict[str, str] | None = None,
                  timeout: float = READY_SECONDS) -> Iterator[Server]:
    """``faceops serve --gallery GALLERY ARGS`` on a free port, yielded once ``/healthz`` answers
    (within ``timeout`` seconds, else RuntimeError with the log's tail)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
            return response.status == 200

    command = [faceops_executable(), "serve", "--gallery", str(gallery), "--port", str(port), *args]
    with running(command, log, ready, timeout=timeout, grace=15, env={**os.environ, **(env or {})}) as proc:
        yield Server(url, log, proc.pid)
