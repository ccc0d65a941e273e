"""Where storage points: URIs parsed into locations, and the local side of every transfer.

``s3://bucket/key`` is object storage, ``file://`` URIs and plain paths are local. Local writes go
to a temporary sibling that is renamed into place (:func:`_staged`), so a reader sees the old
content or the whole new one, never half of it.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from jobs.core.errors import StorageError

MANIFEST = "_manifest.json"
STAGING_MARK = ".faceops-staging-"


@dataclass(frozen=True)
class Location:
    """A parsed URI: ``scheme`` is ``s3`` (with ``bucket`` and ``key``) or ``file`` (with ``path``)."""

    scheme: str
    bucket: str = ""
    key: str = ""
    path: Path | None = None

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.scheme == "s3" else str(self.path)


@dataclass(frozen=True)
class ObjectInfo:
    """What ``stat``/``list`` report. For a folder or prefix ``is_dir`` is true, ``size`` is the
    total of its files and ``etag`` a digest of their names, sizes and etags. A local file's etag is
    ``<mtime_ns>-<size>`` in hex: cheap, and it changes whenever the file does."""

    uri: str
    size: int
    etag: str
    is_dir: bool = False
    mtime: float = 0.0


def parse(uri: str | Path) -> Location:
    """Split ``uri`` into a :class:`Location`; anything without a scheme is a local path."""
    text = str(uri)
    if text.startswith("s3://"):
        bucket, _, key = text[5:].partition("/")
        if not bucket:
            raise StorageError(f"{text}: no bucket name (expected s3://BUCKET/KEY)")
        return Location("s3", bucket=bucket, key=key)
    if text.startswith("file://"):
        return Location("file", path=Path(text[7:]).expanduser())
    if "://" in text:
        raise StorageError(f"{text}: unsupported scheme (expected s3://, file:// or a local path)")
    return Location("file", path=Path(text).expanduser())


def is_remote(uri: str | Path) -> bool:
    """True for object-storage URIs, which must be staged before a process can open them."""
    return parse(uri).scheme == "s3"


def join(uri: str | Path, *parts: str) -> str:
    """``join("s3://b/models", "v1", "model.onnx")`` -> ``"s3://b/models/v1/model.onnx"``."""
    tail = "/".join(p.strip("/") for p in parts if p.strip("/"))
    return f"{str(uri).rstrip('/')}/{tail}" if tail else str(uri)


def _relative(loc: Location, info: ObjectInfo) -> str:
    """Where a file listed under the folder/prefix ``loc`` sits inside it (``a/b.rec``)."""
    if loc.scheme == "file":
        return Path(info.uri).relative_to(loc.path).as_posix()
    return info.uri[len(f"s3://{loc.bucket}/{_prefix(loc)}"):]


def _prefix(loc: Location) -> str:
    """The listing prefix of a folder-like key: ``a/b`` and ``a/b/`` both list ``a/b/...``."""
    return loc.key.rstrip("/") + "/" if loc.key.strip("/") else ""


def _local_info(path: Path, uri: str) -> ObjectInfo:
    st = path.stat()
    return ObjectInfo(uri, st.st_size, f"{st.st_mtime_ns:x}-{st.st_size:x}", False, st.st_mtime)


def _local_files(loc: Location) -> list[ObjectInfo]:
    return sorted((_local_info(p, str(p)) for p in loc.path.rglob("*") if p.is_file()), key=lambda i: i.uri)


def _folder(loc: Location, uri: str, files: list[ObjectInfo]) -> ObjectInfo:
    """A folder's totals; its etag changes when any file's relative name, size or etag does."""
    h = hashlib.sha256()
    for info in files:
        h.update(f"{_relative(loc, info)}\0{info.size}\0{info.etag}\n".encode())
    return ObjectInfo(uri, sum(f.size for f in files), h.hexdigest()[:32], True,
                      max((f.mtime for f in files), default=0.0))


@contextmanager
def _staged(dest: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``dest`` to fill (a file or a folder). On success it takes
    ``dest``'s place by rename, on failure it is removed: readers see the old or the whole new."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        yield tmp
        if tmp.is_dir() and dest.exists():
            _swap_dir(tmp, dest)
        else:
            os.replace(tmp, dest)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp)
        else:
            tmp.unlink(missing_ok=True)


def _swap_dir(new: Path, dest: Path) -> None:
    """Replace the folder ``dest`` by ``new``: two renames, then the old one is removed."""
    if not dest.is_dir():
        raise StorageError(f"{dest}: exists and is not a folder")
    old = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.old")
    os.replace(dest, old)
    os.replace(new, dest)
    shutil.rmtree(old)


def _copy_local(src: Path, dest: Path, update: Callable[[int], Any]) -> None:
    """Copy in chunks, so the progress bar moves, into a staged sibling of ``dest``."""
    with _staged(dest) as tmp:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            while chunk := fin.read(1024 * 1024):
                fout.write(chunk)
                update(len(chunk))
        shutil.copystat(src, tmp)
