"""Staged publishing: readers never see half an output.

S3 makes a PUT or a completed multipart upload visible in one step, so single objects need
nothing more. A folder is complete when its ``_manifest.json`` exists: it is written last, after
every file. An S3 folder is uploaded under a staging prefix beside the target and copied in
(server-side) only once every file is up; a local folder is built under a temporary sibling and
renamed into place. A multipart upload that fails is aborted. tqdm is imported inside
:func:`_bar` so ``faceops --help`` stays fast.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from jobs.core.errors import NotFoundError, StorageError
from jobs.core.storage.cleanup import _abort_uploads, _tidy
from jobs.core.storage.s3 import _errors, _retried, _transfer_config, s3_client
from jobs.core.storage.uris import MANIFEST, STAGING_MARK, Location, _copy_local, _staged, join, parse

PART_SIZE = 64 * 1024 * 1024
PROGRESS_MIN_BYTES = 4 * 1024 * 1024


def _bar(total: int, desc: str, progress: bool):
    """A byte progress bar on stderr, shown only for transfers big enough to wait for."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                disable=not progress or total < PROGRESS_MIN_BYTES, leave=False)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def _manifest(files: list[tuple[str, Path]]) -> bytes:
    """The completion marker of a folder: every file's relative path, size and sha256."""
    entries = [{"path": rel, "size": p.stat().st_size, "sha256": _sha256(p)} for rel, p in files]
    return json.dumps({"files": entries, "total_size": sum(e["size"] for e in entries),
                       "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2).encode()


def _put(src: Path, loc: Location, update: Callable[[int], Any], part_size: int) -> None:
    if loc.scheme == "file":
        _copy_local(src, loc.path, update)
        return

    def attempt() -> None:
        started = time.time()
        try:
            with _errors(loc, "upload"):
                s3_client().upload_file(str(src), loc.bucket, loc.key, Callback=update,
                                        Config=_transfer_config(part_size))
        except StorageError:
            _abort_uploads(loc, loc.key, newer_than=started - 1)
            raise

    _retried(attempt, f"uploading {src.name}")


def upload(src: Path, uri: str | Path, progress: bool = True, part_size: int = PART_SIZE) -> None:
    """Upload the file or folder ``src`` to ``uri`` (a URI ending in ``/`` receives a file under
    its own name). Files over ``part_size`` go up in parts. A folder gets ``_manifest.json`` last:
    on S3 its files go up under a staging prefix and are copied in once all are there (objects
    already under the prefix stay: the manifest says which files belong); a local folder is built
    beside the target and renamed in, replacing what was there. Leftovers of earlier interrupted
    uploads to the same place are removed first."""
    src = Path(src)
    if not src.exists():
        raise NotFoundError(f"{src}: no such file or folder to upload")
    if src.is_file():
        if str(uri).endswith("/"):
            uri = join(uri, src.name)
        _tidy(uri)
        with _bar(src.stat().st_size, src.name, progress) as bar:
            _put(src, parse(uri), bar.update, part_size)
        return
    loc = parse(uri)
    _tidy(uri)
    if loc.scheme == "s3":
        _publish_tree(src, loc, progress, part_size)
        return
    with _staged(loc.path) as tmp:
        _put_tree(src, str(tmp), progress, part_size)


def _publish_tree(src: Path, loc: Location, progress: bool, part_size: int) -> None:
    """Upload a folder under ``<key>.faceops-staging-<id>/``, copy every file to its place, write
    the manifest, then drop the staging copy: nothing appears under the target before all of it
    is on the server."""
    key = loc.key.rstrip("/")
    staging = Location("s3", loc.bucket, f"{key}{STAGING_MARK}{uuid.uuid4().hex[:12]}")
    files = _tree_files(src)
    with _bar(sum(p.stat().st_size for _, p in files), src.name, progress) as bar:
        for rel, path in files:
            _put(path, parse(join(str(staging), rel)), bar.update, part_size)
    client = s3_client()
    for rel, _ in files:
        source = {"Bucket": loc.bucket, "Key": f"{staging.key}/{rel}"}
        target = parse(join(str(loc), rel))
        _retried(lambda: _copy(client, source, target), f"publishing {rel}")
    write_bytes(join(str(loc), MANIFEST), _manifest(files))
    for rel, _ in files:
        with _errors(staging, "clean up"):
            client.delete_object(Bucket=loc.bucket, Key=f"{staging.key}/{rel}")


def _copy(client: Any, source: dict[str, str], target: Location) -> None:
    with _errors(target, "publish"):
        client.copy(source, target.bucket, target.key)


def _tree_files(src: Path) -> list[tuple[str, Path]]:
    return [(p.relative_to(src).as_posix(), p) for p in sorted(src.rglob("*"))
            if p.is_file() and p.relative_to(src).as_posix() != MANIFEST]


def _put_tree(src: Path, uri: str, progress: bool, part_size: int) -> None:
    """Every file under ``src`` to ``uri``, then the manifest: its presence means complete."""
    files = _tree_files(src)
    with _bar(sum(p.stat().st_size for _, p in files), src.name, progress) as bar:
        for rel, path in files:
            _put(path, parse(join(uri, rel)), bar.update, part_size)
    write_bytes(join(uri, MANIFEST), _manifest(files))


def write_bytes(uri: str | Path, data: bytes) -> None:
    """Write ``data`` as a whole file or object (visible only once complete)."""
    loc = parse(uri)
    if loc.scheme == "file":
        with _staged(loc.path) as tmp:
            tmp.write_bytes(data)
        return

    def attempt() -> None:
        with _errors(loc, "write"):
            s3_client().put_object(Bucket=loc.bucket, Key=loc.key, Body=data)

    _retried(attempt, f"writing {loc.key.rsplit('/', 1)[-1]}")
