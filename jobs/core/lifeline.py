"""Processes that cannot outlive the process that started them. A job's entry point runs in a
session of its own (so a stop reaches its children) and would otherwise go on training and
writing into a version its dead supervisor's record already calls failed. Two things prevent it:
the kernel kills the entry point when its parent dies (Linux's ``PR_SET_PDEATHSIG``, set between
fork and exec), and the process group of every entry point is kept in the record so whoever
finds the supervisor gone (a ``job`` command, ``job stop``) kills what is left of the group.

Standard library only (ctypes for prctl), and a no-op where the kernel has no such call.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Callable

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def dies_with_this_process() -> Callable[[], None]:
    """A ``preexec_fn`` for :class:`subprocess.Popen`: the child starts a session of its own and
    gets SIGKILL when the process calling this dies. Made before the fork, so the child can tell
    a parent that died before the request was in place (its parent is then no longer us)."""
    parent = os.getpid()

    def preexec() -> None:
        os.setsid()
        if sys.platform.startswith("linux"):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:
                os._exit(1)

    return preexec


def group_alive(pgid: int) -> bool:
    """Whether any process of process group ``pgid`` is still there (zombies aside)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return any(_member_running(pid, pgid) for pid in _pids())


def kill_groups(pgids: list[int]) -> list[int]:
    """SIGKILL every process group of ``pgids`` that is still alive; returns those it reached."""
    reached = []
    for pgid in pgids:
        if group_alive(pgid):
            try:
                os.killpg(pgid, signal.SIGKILL)
                reached.append(pgid)
            except ProcessLookupError:
                pass
    return reached


def _pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


def _member_running(pid: int, pgid: int) -> bool:
    """True for a live (not zombie) process of group ``pgid``; without /proc, any answer to
    ``killpg(pgid, 0)`` counts as alive."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
    except OSError:
        return not os.path.isdir("/proc/self")
    return fields[0] != "Z" and int(fields[2]) == pgid
