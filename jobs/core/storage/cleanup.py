"""Garbage collection of what killed or failed uploads leave: unfinished multipart uploads and
staging prefixes on S3, ``.part``/``.old`` siblings locally. Every upload runs it on its own
target first (:func:`_tidy`); ``faceops storage gc`` runs it on demand.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from jobs.core.config import setting
from jobs.core.errors import StorageError
from jobs.core.storage.s3 import StorageUnavailable, _errors, s3_client
from jobs.core.storage.uris import STAGING_MARK, Location, parse

ORPHAN_SECONDS = 3600.0


def _abort_uploads(loc: Location, prefix: str, newer_than: float | None = None,
                   older_than: float | None = None, exact: bool = True) -> list[str]:
    """Abort the unfinished multipart uploads of ``prefix`` (only that key unless ``exact`` is
    false) started in the given time window, so storage stops keeping (and billing) their parts."""
    aborted: list[str] = []
    try:
        client = s3_client()
        with _errors(loc, "list uploads in"):
            pages = client.get_paginator("list_multipart_uploads").paginate(Bucket=loc.bucket, Prefix=prefix)
            uploads = [u for page in pages for u in page.get("Uploads", [])]
        for upload in uploads:
            started = upload["Initiated"].timestamp()
            if (exact and upload["Key"] != prefix) or (newer_than is not None and started < newer_than) \
                    or (older_than is not None and started > older_than):
                continue
            with _errors(loc, "abort an upload in"):
                client.abort_multipart_upload(Bucket=loc.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            aborted.append(f"s3://{loc.bucket}/{upload['Key']} (multipart upload {upload['UploadId'][:12]})")
    except StorageUnavailable:
        pass  # the endpoint is gone: the next upload or `faceops storage gc` tries again
    return aborted


def gc(uri: str | Path, older_than: float = ORPHAN_SECONDS) -> list[str]:
    """Remove what interrupted uploads left under ``uri`` more than ``older_than`` seconds ago:
    unfinished multipart uploads and staging prefixes on S3, ``.part``/``.old`` siblings locally.
    Returns what was removed."""
    loc = parse(uri)
    cutoff = time.time() - older_than
    if loc.scheme == "file":
        return _gc_local(loc.path, cutoff)
    key = loc.key.rstrip("/")
    removed = _abort_uploads(loc, key, older_than=cutoff, exact=False)
    client = s3_client()
    with _errors(loc, "list"):
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=key + STAGING_MARK)
        stale = [obj["Key"] for page in pages for obj in page.get("Contents", [])
                 if obj["LastModified"].timestamp() < cutoff]
    for name in stale:
        with _errors(loc, "delete"):
            client.delete_object(Bucket=loc.bucket, Key=name)
        removed.append(f"s3://{loc.bucket}/{name}")
    return removed


def _gc_local(path: Path, cutoff: float) -> list[str]:
    """The ``.NAME.<id>.part`` and ``.old`` siblings that :func:`_staged` leaves when killed."""
    removed: list[str] = []
    if not path.parent.is_dir():
        return removed
    for leftover in path.parent.glob(f".{path.name}.*"):
        if leftover.suffix in (".part", ".old") and leftover.lstat().st_mtime < cutoff:
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
            removed.append(str(leftover))
    return removed


def _tidy(uri: str | Path) -> None:
    """Best-effort :func:`gc` of an upload's target before it starts (``s3.orphan_seconds``
    old): a cleanup that cannot run (endpoint down, no list permission) never stops the upload."""
    try:
        gc(uri, float(setting("s3", "orphan_seconds", ("FACEOPS_STORAGE_ORPHAN_SECONDS",), ORPHAN_SECONDS)))
    except StorageError:
        pass
