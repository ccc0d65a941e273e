"""The fault suite: what an operator does to faceops on a bad day (kill processes, stop the S3
server, fill the disk, submit in parallel, damage the store, feed hostile specs) and what must hold.

Every case drives the real CLI in real processes against a real SeaweedFS, bounded in time: each
test gets SIGALRM after ``FAULT_SECONDS`` and every subprocess its own timeout. The run ends with
one line, ``N faults tried, N held``, counted from the outcomes of the tests in this folder.
"""
from __future__ import annotations

import signal
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.faults.helpers import tmpfs
from tests.harness.net import OutageProxy

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


@pytest.fixture
def home_on_tmpfs(tmp_path, monkeypatch) -> Iterator[Callable[[int], Path]]:
    """``home_on_tmpfs(MB)`` puts $FACEOPS_HOME on a tmpfs of its own of that size (root only;
    the test skips with the reason elsewhere) and returns the mount; unmounted afterwards."""
    with ExitStack() as mounts:
        def make(megabytes: int) -> Path:
            mount = mounts.enter_context(tmpfs(tmp_path / f"disk-{megabytes}mb", megabytes))
            monkeypatch.setenv("FACEOPS_HOME", str(mount / "home"))
            return mount

        yield make


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
