"""A version's files where the whole team reads them: ``store.artifacts`` /
``FACEOPS_STORE_ARTIFACTS`` = ``s3://bucket/prefix/`` (any URI the storage layer takes).

With a shared store, another machine's ``job logs/metrics/plot/show/diff/rerun`` need what a
version left in its folder on the machine that ran it. So a local version's log, metrics,
failure note and small outputs go to ``ROOT/jobs/NAME/V/`` (the folder's own layout) while it runs,
at most :data:`LAG_SECONDS` behind, and all of them before its record turns terminal; its code
bundle goes to ``ROOT/bundles/SHA.tar.gz`` at submit. A machine that lacks a version's folder
fetches it from there into its own ``$FACEOPS_HOME/jobs/NAME/V`` (marked as a copy, and fetched
again while the version is live), so every reader works as on the machine that ran it.

Never uploaded: the staged inputs and code (``input/``, ``code/``), checkpoints, the secrets file,
and any file over :data:`SMALL_BYTES` (a model that big belongs under the spec's ``outputs:``).
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Callable

from jobs.core import storage
from jobs.core.config import home, setting
from jobs.core.errors import FaceopsError, NotFoundError, SpecError
from jobs.store import TERMINAL, workdir

LAG_SECONDS = 5.0
SMALL_BYTES = 16 * 1024 * 1024
# Parts of a version folder that stay on the machine that ran it.
PRIVATE = ("input", "code", "checkpoints", "secrets.json", "stop.json", "supervisor.log")
COPY_MARK = "fetched.json"


def root() -> str | None:
    """The team's artifact root, or None when none is set."""
    value = setting("store", "artifacts", ("FACEOPS_STORE_ARTIFACTS",))
    return str(value).rstrip("/") + "/" if value else None


def require(store_where: str) -> str:
    """The artifact root a shared store needs for local-backend jobs; a usage error saying what
    to set when there is none."""
    found = root()
    if not found:
        raise SpecError(f"the shared store {store_where} needs an artifact root for local-backend jobs, so other "
                        "machines can read their logs, metrics and outputs: set FACEOPS_STORE_ARTIFACTS="
                        "s3://BUCKET/PREFIX/ (or store.artifacts in $FACEOPS_HOME/config.yaml)")
    return found


def version_uri(record: dict[str, Any], base: str | None = None) -> str:
    """Where a version's files go under the artifact root."""
    return f"{base or root()}jobs/{record['name']}/{record['version']}/"


def shared_files(folder: Path) -> list[tuple[str, Path]]:
    """(relative name, path) of every file of a version folder that is shared."""
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if (path.is_file() and relative.split("/", 1)[0] not in PRIVATE and relative != COPY_MARK
                and path.stat().st_size <= SMALL_BYTES):
            found.append((relative, path))
    return found


def upload(record: dict[str, Any], sent: dict[str, tuple[int, int]] | None = None, base: str | None = None) -> int:
    """Upload the version folder's shared files that changed since ``sent`` ({name: (size,
    mtime)}, updated in place); returns how many were sent."""
    sent = {} if sent is None else sent
    count = 0
    for name, path in shared_files(workdir(record)):
        stat = path.stat()
        mark = (stat.st_size, stat.st_mtime_ns)
        if sent.get(name) == mark:
            continue
        storage.write_bytes(version_uri(record, base) + name, path.read_bytes())
        sent[name] = mark
        count += 1
    return count


def upload_bundle(path: Path, sha256: str, base: str | None = None) -> None:
    """Put a code bundle where another machine's rerun finds it (once; bundles never change)."""
    uri = f"{base or root()}bundles/{sha256}.tar.gz"
    if not storage.exists(uri):
        storage.write_bytes(uri, path.read_bytes())


def fetch_bundle(sha256: str) -> None:
    """Bring a bundle another machine packed into ``$FACEOPS_HOME/bundles`` (nothing when it is
    here already or there is no artifact root)."""
    local = home() / "bundles" / f"{sha256}.tar.gz"
    base = root()
    if local.exists() or base is None:
        return
    try:
        storage.download(f"{base}bundles/{sha256}.tar.gz", local, progress=False)
    except NotFoundError:
        pass  # stored_bundle then says the bundle is missing and what to do


def localized(record: dict[str, Any]) -> dict[str, Any]:
    """``record``, with its folder present on this machine: fetched from the artifact root when
    the version ran elsewhere (and again while it is live, or until the copy saw it end)."""
    base = root()
    folder = workdir(record)
    mark = folder / COPY_MARK
    if base is None or (folder.is_dir() and not mark.exists()):
        return record
    if mark.exists() and json.loads(mark.read_text()).get("status") in TERMINAL:
        return record
    try:
        storage.download(version_uri(record, base), folder, progress=False)
    except NotFoundError:
        return record  # nothing uploaded yet (a version just submitted)
    mark.write_text(json.dumps({"status": record["status"], "from": version_uri(record, base)}))
    return record


class Uploader:
    """Uploads a running version's shared files every :data:`LAG_SECONDS` from a thread, and
    all of them on :meth:`finish`. A failed upload is said once in the job's log and tried
    again next round; it never fails the job."""

    def __init__(self, record: dict[str, Any], say: Callable[[str], None], base: str | None) -> None:
        self.record, self.say, self.base = record, say, base
        self.sent: dict[str, tuple[int, int]] = {}
        self.stopped = threading.Event()
        self.warned = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        if self.base:
            self.thread.start()

    def _round(self) -> None:
        try:
            upload(self.record, self.sent, self.base)
        except FaceopsError as exc:
            if not self.warned:
                self.say(f"artifact upload to {self.base} failed, will retry: {exc}")
                self.warned = True

    def _loop(self) -> None:
        while not self.stopped.wait(LAG_SECONDS):
            self._round()

    def finish(self) -> None:
        """Stop the thread and upload what is left (before the record turns terminal)."""
        if not self.base:
            return
        self.stopped.set()
        self.thread.join(LAG_SECONDS * 4)
        self._round()
