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
