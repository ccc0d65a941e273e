"""Service processes for tests: start one with its output in a log file, wait until it really
answers (or say why it never will), and stop it afterwards whatever happened."""
from __future__ import annotations

import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


def stop(proc: subprocess.Popen, grace: float = 2.0) -> None:
    """Terminate, then kill what does not exit within ``grace`` seconds (weed takes ~17 s to
    shut down gracefully, and its data is thrown away anyway)."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_until_ready(proc: subprocess.Popen, ready: Callable[[], object], log_path: Path, timeout: float,
                     pause: float = 0.2) -> None:
    """Call ``ready`` until it returns something true; an exception from it just means "not yet"
    (services answer before they can serve). RuntimeError with the log's tail when the process
    exits or ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    problem = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{Path(proc.args[0]).name} exited with code {proc.returncode}:\n"
                               f"{log_path.read_text(errors='replace')[-2000:]}")
        try:
            if ready():
                return
        except Exception as exc:  # any failure just means "not yet"
            problem = str(exc)
        time.sleep(pause)
    raise RuntimeError(f"{Path(proc.args[0]).name} not ready after {timeout:.0f}s ({problem}):\n"
                       f"{log_path.read_text(errors='replace')[-2000:]}")


@contextmanager
def running(command: list[str], log_path: Path, ready: Callable[[], object], *, timeout: float,
            grace: float = 2.0, **popen) -> Iterator[subprocess.Popen]:
    """``command`` running with stdout and stderr in ``log_path``, once ``ready`` says it serves
    (see :func:`wait_until_ready`); stopped on leaving (see :func:`stop`)."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, **popen)
        try:
            wait_until_ready(proc, ready, log_path, timeout)
            yield proc
        finally:
            stop(proc, grace)


def wait_for(predicate: Callable[[], object], timeout: float = 60.0, what: str = "condition", every: float = 0.2):
    """Poll ``predicate`` until it returns something true and return that; fail the test after
    ``timeout`` seconds saying ``what`` was not reached."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"{what}: not reached within {timeout:.0f}s")
