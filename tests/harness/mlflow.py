"""A real MLflow tracking server for tests: ``mlflow server`` on a free loopback port with a
SQLite backend store, started and stopped by the test (and restartable on the same port and store,
to test a tracking server that goes down while a job runs)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

READY_TIMEOUT = 120.0  # the first start creates the SQLite schema (dozens of migrations)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """``mlflow server`` over ``root/mlflow.db``; :meth:`stop` and :meth:`start` keep the port."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = root / "mlflow-server.log"

    def start(self) -> None:
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                   "--workers", "1", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                   "--default-artifact-root", str(self.root / "artifacts")]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, cwd=self.root,
                                         env={**os.environ, "MLFLOW_TRACKING_URI": ""})
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}:\n{self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server not ready after {READY_TIMEOUT:.0f}s:\n{self.log.read_text()[-2000:]}")

    def stop(self, grace: float = 10.0) -> None:
        """End the server and its gunicorn workers (one process group); the port is free after."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:  # workers leave after the master
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    time.sleep(0.2)
            except OSError:
                return


@contextmanager
def mlflow_server(root: Path) -> Iterator[MlflowServer]:
    """A started server, stopped afterwards whatever happens."""
    server = MlflowServer(root)
    server.start()
    try:
        yield server
    finally:
        server.stop()
