"""Service processes for tests: start one with its output in a log file, wait until it really
answers (or say why it never will), and stop it afterwards whatever happened."""
from __future__ import annotations

import os
import signal
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


# What marks a process as faceops work rather than a service: a job's entry point (and any child
# of it) has the contract's model folder in its environment; supervisors and reapers are ours by name.
JOB_MARKS = ("jobs.backends.supervisor", "jobs.backends.runtimes import reap")


def kill_jobs_under(root: Path) -> list[int]:
    """SIGKILL every supervisor, reaper and job process whose ``$FACEOPS_HOME`` or model folder
    lies under ``root`` (a test's temporary folder) and return their pids. A test that fails
    half-way (or submits with ``--detach`` and ends first) must not leave a job running into the
    next tests' time; the services the harness starts are never matched."""
    prefix, killed = f"{root}{os.sep}", []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or another user's
            continue
        env = dict(item.decode(errors="replace").partition("=")[::2] for item in environ if b"=" in item)
        job = env.get("FACEOPS_MODEL_DIR", "").startswith(prefix)
        ours = env.get("FACEOPS_HOME", "").startswith(prefix) and any(mark in command for mark in JOB_MARKS)
        if job or ours:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
            except ProcessLookupError:
                pass
    return killed
