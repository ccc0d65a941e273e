"""Running out of disk under ``$FACEOPS_HOME`` without losing the record of why.

A job that fills the disk leaves no room for the supervisor to log its end or for SQLite to
store the final state, so the job would stay ``running`` with its cause lost. The supervisor keeps
a small reserve file in the state folder and gives it up the moment a write fails for lack of
space, so the final state (with ENOSPC and the path as the reason) always fits.
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Callable, TypeVar

from jobs.core.config import home
from jobs.core.errors import FaceopsError

RESERVE_NAME = ".disk-reserve"
RESERVE_BYTES = 4 * 1024 * 1024
T = TypeVar("T")


def ensure_reserve() -> None:
    """Hold :data:`RESERVE_BYTES` in ``$FACEOPS_HOME`` (best effort: a disk already too full to
    hold it is a disk the next write will report anyway)."""
    path = home() / RESERVE_NAME
    try:
        if path.exists() and path.stat().st_size >= RESERVE_BYTES:
            return
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, RESERVE_BYTES)
        finally:
            os.close(fd)
    except OSError:
        path.unlink(missing_ok=True)


def release_reserve() -> bool:
    """Give the reserve back to the disk; True when there was one to give."""
    try:
        (home() / RESERVE_NAME).unlink()
        return True
    except OSError:
        return False


def is_disk_full(exc: BaseException) -> bool:
    """True for ENOSPC/EDQUOT and for the store's (SQLite's) way of saying the same."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "database or disk is full" in text or "No space left on device" in text or "no space left" in text


def with_reserve(call: Callable[[], T]) -> T:
    """``call()``; when it fails for lack of space, release the reserve and try once more."""
    try:
        return call()
    except Exception as exc:
        if not is_disk_full(exc) or not release_reserve():
            raise
        return call()


def note_full(reason: str | None, folder: Path) -> str | None:
    """``reason`` plus a note when the disk holding ``folder`` is full, so a job that died of
    ENOSPC in a write that named no file still says so, and where."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return reason
    if free >= RESERVE_BYTES or (reason and "ENOSPC" in reason):
        return reason
    return f"{reason or 'failed'} (no space left on device (ENOSPC) on the disk holding {folder}: {free} bytes free)"


def describe(exc: BaseException, folder: Path) -> str:
    """A failure reason that says what ran out and where: ENOSPC names the path and the free
    space left on its disk, where the plain OSError text often names neither."""
    if not is_disk_full(exc):
        return str(exc) if isinstance(exc, FaceopsError) else f"{type(exc).__name__}: {exc}"
    path = getattr(exc, "filename", None) or folder
    try:
        free = shutil.disk_usage(path if Path(path).exists() else folder).free
    except OSError:
        free = 0
    return f"no space left on device (ENOSPC) writing {path} ({free} bytes free on its disk); free space and rerun"
