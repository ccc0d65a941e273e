"""Reading through storage: stat, list, download and (ranged) reads of a file, object or folder.
s3transfer downloads to a temporary name and local copies are staged, so a download is whole or
absent.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from jobs.core.errors import NotFoundError, StorageError
from jobs.core.retry import retrying
from jobs.core.storage.publish import _bar
from jobs.core.storage.s3 import (RANGE_ATTEMPTS, RANGE_RETRY_DELAY, _BrokenRange, _errors, _get_range, _s3_files,
                                  s3_client)
from jobs.core.storage.uris import ObjectInfo, _copy_local, _folder, _local_files, _local_info, _relative, parse


def stat(uri: str | Path) -> ObjectInfo:
    """Size, etag and mtime of a file/object, or totals of a folder/prefix (``is_dir``).
    Raises NotFoundError naming the URI (or the bucket) when nothing is there."""
    loc = parse(uri)
    if loc.scheme == "file":
        if loc.path.is_file():
            return _local_info(loc.path, str(uri))
        if loc.path.is_dir():
            return _folder(loc, str(uri), _local_files(loc))
        raise NotFoundError(f"{uri}: no such file or folder")
    if loc.key and not loc.key.endswith("/"):
        try:
            with _errors(loc, "read"):
                head = s3_client().head_object(Bucket=loc.bucket, Key=loc.key)
            return ObjectInfo(str(uri), head["ContentLength"], head["ETag"].strip('"'), False,
                              head["LastModified"].timestamp())
        except NotFoundError:
            pass  # maybe a prefix; the listing below also tells a missing bucket apart
    files = _s3_files(loc)
    if not files and loc.key.strip("/"):
        raise NotFoundError(f"{uri}: no such object or prefix in bucket '{loc.bucket}'")
    return _folder(loc, str(uri), files)


def exists(uri: str | Path) -> bool:
    """True when ``stat`` finds something; access problems still raise."""
    try:
        stat(uri)
        return True
    except NotFoundError:
        return False


def list(uri: str | Path) -> list[ObjectInfo]:  # noqa: A001 - the storage verb, like aws s3 ls
    """Every file under a folder/prefix, recursively, sorted by URI (a single file lists itself)."""
    loc = parse(uri)
    files = _local_files(loc) if loc.scheme == "file" and loc.path.is_dir() else (
        _s3_files(loc) if loc.scheme == "s3" else [])
    if files:
        return files
    info = stat(uri)
    return [] if info.is_dir else [info]


def _fetch(info: ObjectInfo, dest: Path, update: Callable[[int], Any]) -> None:
    loc = parse(info.uri)
    if loc.scheme == "file":
        _copy_local(loc.path, dest, update)
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _errors(loc, "download"):
        s3_client().download_file(loc.bucket, loc.key, str(dest), Callback=update)


def download(uri: str | Path, dest: Path, progress: bool = True) -> Path:
    """Copy an object to the file ``dest`` (or into ``dest`` when it is an existing folder), or a
    folder/prefix to a tree under ``dest``. Returns the file or folder written."""
    info, dest = stat(uri), Path(dest)
    if not info.is_dir:
        target = dest / str(uri).rstrip("/").rsplit("/", 1)[-1] if dest.is_dir() else dest
        with _bar(info.size, target.name, progress) as bar:
            _fetch(info, target, bar.update)
        return target
    loc, root = parse(uri), dest.resolve()
    with _bar(info.size, dest.name, progress) as bar:
        for entry in list(uri):
            target = (dest / _relative(loc, entry)).resolve()
            if root not in target.parents:
                raise StorageError(f"{entry.uri}: key would land outside {dest}")
            _fetch(entry, target, bar.update)
    dest.mkdir(parents=True, exist_ok=True)
    return dest


def read_bytes(uri: str | Path) -> bytes:
    """The whole content of a file or object."""
    loc = parse(uri)
    if loc.scheme == "file":
        if not loc.path.is_file():
            raise NotFoundError(f"{uri}: no such file")
        return loc.path.read_bytes()
    with _errors(loc, "read"):
        return s3_client().get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()


def read_range(uri: str | Path, start: int, length: int) -> bytes:
    """``length`` bytes from offset ``start`` (fewer at the end, empty past it), so RecordIO can
    be streamed with ranged GETs. A range whose body breaks off mid-read is fetched again
    (botocore itself only retries the request, not the reading of its body)."""
    if start < 0 or length < 0:
        raise ValueError(f"read_range needs start >= 0 and length >= 0, got {start}, {length}")
    loc = parse(uri)
    if loc.scheme == "file":
        if not loc.path.is_file():
            raise NotFoundError(f"{uri}: no such file")
        with open(loc.path, "rb") as fh:
            fh.seek(start)
            return fh.read(length)
    if length == 0:
        return b""
    return retrying(lambda: _get_range(loc, start, length), lambda exc: isinstance(exc, _BrokenRange),
                    attempts=RANGE_ATTEMPTS, delay=RANGE_RETRY_DELAY,
                    give_up=lambda exc, tries: StorageError(
                        f"{uri}: ranged read of {length} bytes at {start} failed {tries} times: {exc}"))
