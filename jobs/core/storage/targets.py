"""Where outputs may go: the one rule every writer follows, on disk and on S3 alike.

faceops publishes only its own files and ``_manifest.json`` and removes nothing else. Before it
writes, :func:`check_target` refuses a system folder (always) and a non-empty folder or prefix
without a manifest of ours (someone else's files) unless the caller says ``into_existing``; job
submit and ``--dry-run`` run it too, so a wrong output is refused before any work.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from jobs.core.errors import NotFoundError, StorageError
from jobs.core.storage.s3 import _errors, s3_client
from jobs.core.storage.uris import MANIFEST, Location, _prefix, join, parse

SYSTEM_FOLDERS = frozenset({"/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/media", "/mnt",
                            "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var",
                            "/Users", "/System", "/Library", "/Applications", "/private"})
SYSTEM_TREES = ("/proc", "/sys", "/dev", "/etc", "/boot", "/bin", "/sbin", "/lib", "/usr", "/run")
# The hidden folder where images/bin/faceops-task keeps a processing run's hyperparameters and
# metrics inside the results folder it was given: faceops wrote it, so it is no one else's file.
RUN_FILES = ".faceops-task"


class UnsafeTarget(StorageError):
    """An output location faceops refuses to write: a system folder, or a folder of someone else's files."""


def refuse_system_folder(uri: str | Path) -> None:
    """Raise :class:`UnsafeTarget` when ``uri`` is (or, for /proc, /etc, /usr..., lies inside) a
    system folder or a home root: no output of faceops belongs there, whoever runs it."""
    loc = parse(uri)
    if loc.scheme != "file":
        return
    path = Path(os.path.abspath(loc.path))
    try:
        path = path.resolve()
    except OSError:
        pass  # a loop or an unreadable parent: judge the path as written
    text = path.as_posix()
    homes = {Path.home().as_posix(), Path.home().parent.as_posix()}
    if text in SYSTEM_FOLDERS or text in homes or any(text.startswith(tree + "/") for tree in SYSTEM_TREES):
        raise UnsafeTarget(f"{loc.path}: refusing to write outputs into the system folder {text}; "
                           "choose a folder of its own for them")


def check_target(uri: str | Path, into_existing: bool = False) -> None:
    """Refuse a folder output that faceops must not write: a system folder (always), or a
    non-empty folder or prefix without a manifest of ours (someone else's files), unless
    ``into_existing`` says the user wants the job's files added beside them. Run at submit, in
    ``--dry-run`` and by every writer before it publishes."""
    refuse_system_folder(uri)
    loc = parse(uri)
    if loc.scheme == "file":
        if loc.path.exists() and not loc.path.is_dir():
            raise UnsafeTarget(f"{loc.path}: exists and is not a folder; an output needs a folder")
        if (not loc.path.is_dir() or not any(p.name != RUN_FILES for p in loc.path.iterdir())
                or _ours(loc.path / MANIFEST) or into_existing):
            return
    else:
        if into_existing or not _s3_holds_files(loc) or _ours(join(str(loc), MANIFEST)):
            return
    raise UnsafeTarget(f"{uri}: the folder holds files that faceops did not write (no {MANIFEST} of ours); "
                       "faceops publishes only into an empty folder or one it published before. Choose another "
                       "folder, or pass --into-existing to add the outputs beside those files (nothing is removed)")


def _ours(uri: str | Path) -> bool:
    """True when ``uri`` is a manifest faceops wrote (JSON with a ``files`` list)."""
    loc = parse(uri)
    try:
        if loc.scheme == "file":
            manifest = json.loads(loc.path.read_bytes())
        else:
            with _errors(loc, "read"):
                manifest = json.loads(s3_client().get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read())
    except (FileNotFoundError, IsADirectoryError, NotFoundError, ValueError):
        return False
    return isinstance(manifest, dict) and isinstance(manifest.get("files"), type([]))


def _s3_holds_files(loc: Location) -> bool:
    with _errors(loc, "list"):
        answer = s3_client().list_objects_v2(Bucket=loc.bucket, Prefix=_prefix(loc), MaxKeys=1)
    return bool(answer.get("Contents"))
