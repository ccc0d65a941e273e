"""Writing files so that a reader never sees half of one: the one atomic writer of faceops."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: Path, content: str | bytes | Callable[[Path], None], mode: int | None = None) -> None:
    """Replace ``path`` with ``content`` (text, bytes, or a function that writes a given path).

    The data goes to a uniquely named temporary file in the same folder, which then takes
    ``path``'s place by rename: concurrent writers never share a temporary name, and a crash
    leaves the old file or the new one, never a mix. ``mode`` (e.g. ``0o600`` for credentials)
    is set before the rename, so the content is never visible with looser permissions."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        if callable(content):
            os.close(fd)
            content(tmp)
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(content.encode() if isinstance(content, str) else content)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_once(path: Path, content: bytes) -> bytes:
    """``path``'s content, writing ``content`` there first when the file does not exist yet. The
    new file is linked into place, never renamed over one, so two processes doing this at once
    agree on one content (the first link wins) and nobody reads a half-written file."""
    if not path.exists():
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(content)
            try:
                os.link(name, path)
            except FileExistsError:
                pass
        finally:
            os.unlink(name)
    return path.read_bytes()
