"""The fault suite: what an operator does to faceops on a bad day (kill processes, stop the S3
server, fill the disk, submit in parallel, damage the store, feed hostile specs) and what must hold.

Every case drives the real CLI in real processes against a real SeaweedFS, bounded in time: each
test gets SIGALRM after ``FAULT_SECONDS`` and every subprocess its own timeout. The run ends with
one line, ``N faults tried, N held``, counted from the outcomes of the tests in this folder.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
FAULT_SECONDS = 180


class FaultTimeout(Exception):
    """A fault case ran past its time bound."""


@pytest.fixture(autouse=True)
def fault_deadline() -> Iterator[None]:
    """Bound every fault case in time, so a hang is a failure rather than a stuck run."""
    def expire(*_):
        raise FaultTimeout(f"fault case still running after {FAULT_SECONDS}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(FAULT_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def cli(*args: str, timeout: float = 120, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``faceops ARGS`` as its own process (the way a user or a script does), with the
    current environment (``FACEOPS_HOME`` and the S3 settings the fixtures set)."""
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
               **(env or {})}
    return subprocess.run([sys.executable, "-c", "import cli; cli.main()", *args], capture_output=True, text=True,
                          timeout=timeout, env=environ, cwd=cwd)


def wait_for(predicate, timeout: float = 60.0, every: float = 0.2):
    """Poll ``predicate`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not reached within {timeout}s")


def custom_job(folder: Path, name: str = "fault-job", script: str = "print('ok')\n",
               hyperparameters: dict | None = None, extra: str = "") -> Path:
    """A minimal custom job (spec + script) in ``folder``; returns the spec path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "main.py").write_text(script)
    spec = folder / "job.yaml"
    hp = "".join(f"  {k}: {json.dumps(v)}\n" for k, v in (hyperparameters or {}).items())
    spec.write_text(f"name: {name}\ntask: custom\nentrypoint: [python, main.py]\n"
                    + (f"hyperparameters:\n{hp}" if hp else "") + extra)
    return spec


def pytest_terminal_summary(terminalreporter) -> None:
    """``N faults tried, N held``: the fault cases that ran, and those whose expectations held."""
    def ours(report) -> bool:
        return "tests/faults/" in report.nodeid.replace("\\", "/") and report.when in ("call", "setup")

    stats = terminalreporter.stats
    held = {r.nodeid for r in stats.get("passed", []) if ours(r) and r.when == "call"}
    broke = {r.nodeid for key in ("failed", "error") for r in stats.get(key, []) if ours(r)}
    skipped = {r.nodeid for r in stats.get("skipped", []) if ours(r)}
    if held or broke or skipped:
        tried = len(held | broke)
        line = f"{tried} faults tried, {len(held)} held"
        terminalreporter.write_line(line + (f" ({len(skipped)} skipped)" if skipped else ""))


class OutageProxy:
    """A TCP proxy in front of the S3 server that can fail like the server does: ``down()`` stops
    listening and cuts every open connection (as if the server was stopped), ``up()`` listens on
    the same port again; ``budget`` takes it down on its own once that many bytes went upstream
    (an outage in the middle of an upload); ``freeze`` accepts connections and never answers."""

    def __init__(self, target: str, budget: int | None = None, freeze: bool = False) -> None:
        import socket
        import threading

        host, port = target.removeprefix("http://").split(":")
        self.target, self.budget, self.freeze = (host, int(port)), budget, freeze
        self.sent = 0
        self.lock = threading.Lock()
        self.sockets: list = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._serve()

    def _serve(self) -> None:
        import threading

        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def _accept(self, listener) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self.lock:
                self.sockets.append(client)
            if self.freeze:
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets.append(upstream)
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src, dst, upstream: bool) -> None:
        try:
            while data := src.recv(65536):
                if upstream and self.budget is not None:
                    with self.lock:
                        self.sent += len(data)
                        over = self.sent > self.budget
                    if over:
                        self.down()
                        return
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.close()
            except OSError:
                pass

    def down(self) -> None:
        import socket

        with self.lock:
            sockets, self.sockets = self.sockets, []
            self.budget = None
        try:  # shutdown wakes the thread blocked in accept(); close alone would not
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            except OSError:
                pass

    def up(self) -> None:
        import socket

        self.listener = socket.create_server(("127.0.0.1", self.port))
        self._serve()


@pytest.fixture
def outage(s3_env, monkeypatch):
    """Point faceops at an :class:`OutageProxy` in front of the test S3 server; yield a factory
    so a test picks the kind of failure. Proxies are closed afterwards."""
    made: list[OutageProxy] = []

    def make(**kwargs) -> OutageProxy:
        proxy = OutageProxy(s3_env.endpoint, **kwargs)
        made.append(proxy)
        monkeypatch.setenv("FACEOPS_S3_ENDPOINT", proxy.endpoint)
        return proxy

    yield make
    for proxy in made:
        proxy.down()
