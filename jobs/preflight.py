"""Checks a version must pass before it is created, so a job never trains for hours and then
fails at its last step: every output can be written (the local folder, or the S3 bucket with the
credentials in effect). ``job submit``, ``--dry-run``, ``rerun`` and ``resume`` all run them; a
dry run whose S3 endpoint does not answer one quick probe skips the S3 ones and says so
(:func:`s3_skipped`), since it only shows a plan.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from jobs.core import storage
from jobs.core.errors import FaceopsError, StorageError


def check_outputs(outputs: dict[str, str], into_existing: bool = False) -> None:
    """Raise the storage error of the first output that cannot be written or that faceops must
    not write (:func:`jobs.core.storage.check_target`), naming the output."""
    for name, uri in outputs.items():
        try:
            storage.check_target(uri, into_existing=into_existing)
            writable(uri)
        except FaceopsError as exc:
            raise type(exc)(f"outputs.{name}: {exc}") from None


def s3_skipped(inputs: dict[str, str], outputs: dict[str, str]) -> dict[str, Any] | None:
    """For a dry run: when the job reads or writes S3 and the endpoint does not answer one quick
    probe (:func:`jobs.core.storage.probe`), the checks that need it, which the plan goes without:
    ``{"reason": why, "checks": [...]}`` (outputs first, then inputs). None when there is nothing
    on S3 or the endpoint answers, so every check runs as in a real submit."""
    remote_outputs = {name: uri for name, uri in outputs.items() if storage.is_remote(uri)}
    remote_inputs = {name: uri for name, uri in inputs.items() if storage.is_remote(uri)}
    first = next(iter({**remote_outputs, **remote_inputs}.values()), None)
    reason = storage.probe(first) if first else None
    if reason is None:
        return None
    checks = [f"outputs.{name}: {uri} is writable and holds no files faceops did not write"
              for name, uri in remote_outputs.items()]
    checks += [f"inputs.{name}: {uri} exists (its size and ETag)" for name, uri in remote_inputs.items()]
    return {"reason": reason, "checks": checks}


def writable(uri: str) -> None:
    """A local folder: its nearest existing parent is a folder this user may write. S3: the
    bucket exists (some servers create one on the first PUT) and a zero-byte probe object put
    under the prefix and removed again proves the credentials and the permission to write there."""
    loc = storage.parse(uri)
    if loc.scheme == "file":
        _local_writable(loc.path)
        return
    storage.require_bucket(uri)
    probe = storage.join(uri, f".faceops-write-check-{uuid.uuid4().hex}")
    storage.write_bytes(probe, b"")
    try:
        storage.s3_client().delete_object(Bucket=loc.bucket, Key=storage.parse(probe).key)
    except Exception:  # noqa: BLE001 - writing worked; a leftover empty probe is harmless
        pass


def _local_writable(path: Path) -> None:
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise StorageError(f"{path}: cannot write there, {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise StorageError(f"{path}: cannot write there, {existing} is not writable by this user")
