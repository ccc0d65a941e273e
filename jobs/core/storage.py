"""The one storage layer: ``s3://bucket/key`` through boto3, ``file://`` URIs and plain paths.

Every part of faceops that reads inputs or writes outputs goes through these functions, so AWS S3,
Huawei OBS, MinIO and SeaweedFS (any endpoint URL, region and addressing style from the environment
or ``config.yaml``) behave exactly like a local folder.

Readers must never see half an output. S3 makes a PUT or a completed multipart upload visible in
one step and s3transfer downloads to a temporary name, so single objects need nothing more. A
folder is complete when its ``_manifest.json`` exists: it is written last, after every file. An S3
folder is uploaded under a staging prefix beside the target and copied in (server-side) only once
every file is up; a local folder is built under a temporary sibling and renamed into place.

Uploads outlive short outages: an unreachable endpoint or a 5xx answer is retried with backoff for
a bounded number of tries (``s3.upload_attempts``), and connect/read timeouts are bounded
(``s3.connect_timeout``, ``s3.read_timeout``). A multipart upload that fails is aborted; what a
killed process leaves (multipart uploads, staging prefixes, local ``.part`` folders) is cleaned by
:func:`gc`, which every upload also runs on its own target for leftovers older than an hour.

boto3 and tqdm are imported inside the functions that use them so ``faceops --help`` stays fast.
Error messages name the URI and what to check, never a key or secret.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

from jobs.core.config import setting
from jobs.core.errors import FaceopsError, NotFoundError, SpecError, StorageError
from jobs.core.retry import retrying

MANIFEST = "_manifest.json"
PART_SIZE = 64 * 1024 * 1024
PROGRESS_MIN_BYTES = 4 * 1024 * 1024
RANGE_ATTEMPTS = 3
RANGE_RETRY_DELAY = 0.1  # seconds before the first refetch of a broken range
DENIED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"}
MISSING = {"404", "NoSuchKey", "NotFound"}
UNAVAILABLE = {"500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout"}
STAGING_MARK = ".faceops-staging-"
ORPHAN_SECONDS = 3600.0


class StorageUnavailable(StorageError):
    """The endpoint cannot be reached or answers 5xx: worth trying again a little later."""


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


def s3_client():
    """A boto3 S3 client for the current settings (cached per settings, since tests and long
    sessions change the environment). Environment variables win over ``config.yaml``'s ``s3:``."""
    endpoint = setting("s3", "endpoint_url", ("FACEOPS_S3_ENDPOINT", "AWS_ENDPOINT_URL"))
    connect, read = timeouts()
    return _client(
        connect, read,
        endpoint,
        aws_region("s3") or "us-east-1",
        setting("s3", "addressing_style", ("FACEOPS_S3_ADDRESSING_STYLE",), "path" if endpoint else "auto"),
        setting("s3", "access_key", ("AWS_ACCESS_KEY_ID",)),
        setting("s3", "secret_key", ("AWS_SECRET_ACCESS_KEY",)),
        setting("s3", "session_token", ("AWS_SESSION_TOKEN",)),
    )


def aws_region(section: str, env: tuple[str, ...] = ()) -> str | None:
    """The AWS region for ``section``: its config.yaml ``region``, the variables ``env``,
    ``AWS_REGION`` or ``AWS_DEFAULT_REGION``, else the one boto3 resolves itself: the ``region``
    of the profile (``AWS_PROFILE`` or ``default``) in the AWS config file (``AWS_CONFIG_FILE``,
    ``~/.aws/config``), where ``aws configure`` writes it. None when none is set anywhere."""
    import boto3
    from botocore.exceptions import ProfileNotFound

    configured = setting(section, "region", (*env, "AWS_REGION", "AWS_DEFAULT_REGION"))
    if configured:
        return str(configured)
    try:
        return boto3.session.Session().region_name
    except ProfileNotFound as exc:
        raise SpecError(f"{section}: {exc}; check AWS_PROFILE and the AWS config file") from None


def timeouts() -> tuple[float, float]:
    """Seconds to wait for a connection and for an answer (``s3.connect_timeout``/``read_timeout``):
    a frozen endpoint fails a command in seconds, not minutes."""
    return (float(setting("s3", "connect_timeout", ("FACEOPS_S3_CONNECT_TIMEOUT",), 3)),
            float(setting("s3", "read_timeout", ("FACEOPS_S3_READ_TIMEOUT",), 20)))


@lru_cache(maxsize=8)
def _client(connect: float, read: float, endpoint: str | None, region: str, style: str, access_key: str | None,
            secret_key: str | None, token: str | None):
    import boto3
    from botocore.config import Config

    # Standard retries back off on throttling and 5xx; bounded timeouts make an unreachable or
    # frozen endpoint fail in seconds instead of hanging a job submission.
    config = Config(region_name=region, s3={"addressing_style": style}, connect_timeout=connect,
                    read_timeout=read, retries={"mode": "standard", "max_attempts": 3})
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, aws_access_key_id=access_key, aws_secret_access_key=secret_key,
        aws_session_token=token, config=config)


@contextmanager
def _errors(loc: Location, action: str) -> Iterator[None]:
    """Turn botocore exceptions into errors that say what failed and what to check."""
    from boto3.exceptions import S3UploadFailedError
    from botocore import exceptions as bex

    try:
        yield
    except S3UploadFailedError as exc:
        cause = exc.__context__
        if isinstance(cause, bex.ClientError):
            raise _client_error(loc, action, cause) from None
        raise StorageError(f"{loc}: {action} failed: {exc}") from None
    except bex.ClientError as exc:
        raise _client_error(loc, action, exc) from None
    except (bex.ConnectionError, bex.HTTPClientError) as exc:
        endpoint = s3_client().meta.endpoint_url
        connect, read = timeouts()
        why = (f"no answer within {read:g}s (s3.read_timeout)" if isinstance(exc, bex.ReadTimeoutError)
               else f"no connection within {connect:g}s (s3.connect_timeout)" if isinstance(exc, bex.ConnectTimeoutError)
               else type(exc).__name__)
        raise StorageUnavailable(f"cannot reach S3 endpoint {endpoint} ({why}) to {action} {loc}; "
                                 "check FACEOPS_S3_ENDPOINT / AWS_ENDPOINT_URL or s3.endpoint_url in config.yaml "
                                 "and that the server is running") from None
    except bex.NoCredentialsError:
        raise StorageError(f"{loc}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                           "or s3.access_key and s3.secret_key in config.yaml") from None
    except bex.ParamValidationError as exc:
        raise StorageError(f"{loc}: not a valid S3 location: {exc}") from None


def _client_error(loc: Location, action: str, exc: Any) -> FaceopsError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    if code == "NoSuchBucket":
        return NotFoundError(f"{loc}: bucket '{loc.bucket}' does not exist")
    if code in MISSING:
        return NotFoundError(f"{loc}: no such object")
    if code in DENIED:
        return StorageError(f"{loc}: access denied ({code}) trying to {action}; check the access key and "
                            f"secret (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or s3.access_key / "
                            f"s3.secret_key) and that they may {action} bucket '{loc.bucket}'")
    kind = StorageUnavailable if code in UNAVAILABLE else StorageError
    return kind(f"{loc}: {action} failed: {code} {error.get('Message', '')}".rstrip())


def _relative(loc: Location, info: ObjectInfo) -> str:
    """Where a file listed under the folder/prefix ``loc`` sits inside it (``a/b.rec``)."""
    if loc.scheme == "file":
        return Path(info.uri).relative_to(loc.path).as_posix()
    return info.uri[len(f"s3://{loc.bucket}/{_prefix(loc)}"):]


def _local_info(path: Path, uri: str) -> ObjectInfo:
    st = path.stat()
    return ObjectInfo(uri, st.st_size, f"{st.st_mtime_ns:x}-{st.st_size:x}", False, st.st_mtime)


def _local_files(loc: Location) -> list[ObjectInfo]:
    return sorted((_local_info(p, str(p)) for p in loc.path.rglob("*") if p.is_file()), key=lambda i: i.uri)


def _prefix(loc: Location) -> str:
    """The listing prefix of a folder-like key: ``a/b`` and ``a/b/`` both list ``a/b/...``."""
    return loc.key.rstrip("/") + "/" if loc.key.strip("/") else ""


def _s3_files(loc: Location) -> list[ObjectInfo]:
    prefix, found = _prefix(loc), []
    with _errors(loc, "list"):
        for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith("/"):
                    found.append(ObjectInfo(f"s3://{loc.bucket}/{obj['Key']}", obj["Size"], obj["ETag"].strip('"'),
                                            False, obj["LastModified"].timestamp()))
    return sorted(found, key=lambda info: info.uri)


def _folder(loc: Location, uri: str, files: list[ObjectInfo]) -> ObjectInfo:
    """A folder's totals; its etag changes when any file's relative name, size or etag does."""
    h = hashlib.sha256()
    for info in files:
        h.update(f"{_relative(loc, info)}\0{info.size}\0{info.etag}\n".encode())
    return ObjectInfo(uri, sum(f.size for f in files), h.hexdigest()[:32], True,
                      max((f.mtime for f in files), default=0.0))


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


def _bar(total: int, desc: str, progress: bool):
    """A byte progress bar on stderr, shown only for transfers big enough to wait for."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                disable=not progress or total < PROGRESS_MIN_BYTES, leave=False)


def _transfer_config(part_size: int):
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size)


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


def _retried(call: Callable[[], Any], what: str) -> Any:
    """``call`` again with backoff while the endpoint is unreachable or answers 5xx, for at most
    ``s3.upload_attempts`` tries (``s3.upload_backoff`` seconds, doubling): a short outage does
    not fail a job, a long one still ends it with the reason."""
    attempts = int(setting("s3", "upload_attempts", ("FACEOPS_S3_UPLOAD_ATTEMPTS",), 6))
    delay = float(setting("s3", "upload_backoff", ("FACEOPS_S3_UPLOAD_BACKOFF",), 1.0))

    def give_up(exc: Exception, tries: int) -> Exception:
        return StorageUnavailable(f"{exc} (gave up on {what} after {tries} tries)")

    return retrying(call, lambda exc: isinstance(exc, StorageUnavailable), attempts=attempts, delay=delay,
                    give_up=give_up)


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


def read_bytes(uri: str | Path) -> bytes:
    """The whole content of a file or object."""
    loc = parse(uri)
    if loc.scheme == "file":
        if not loc.path.is_file():
            raise NotFoundError(f"{uri}: no such file")
        return loc.path.read_bytes()
    with _errors(loc, "read"):
        return s3_client().get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()


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


class _BrokenRange(Exception):
    """A ranged GET whose body broke off or came back short: worth fetching again."""


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


def _get_range(loc: Location, start: int, length: int) -> bytes:
    from botocore import exceptions as bex

    client = s3_client()
    with _errors(loc, "read"):
        try:
            response = client.get_object(Bucket=loc.bucket, Key=loc.key, Range=f"bytes={start}-{start + length - 1}")
        except bex.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return b""  # starts past the end, like a local read there
            raise
    try:
        data = response["Body"].read()
    except (bex.HTTPClientError, bex.IncompleteReadError, OSError) as exc:
        raise _BrokenRange(type(exc).__name__) from None
    expected = _range_length(response.get("ContentRange", ""), len(data))
    if len(data) != expected:
        raise _BrokenRange(f"got {len(data)} of {expected} bytes")
    return data


def _range_length(content_range: str, default: int) -> int:
    """Bytes promised by a ``Content-Range: bytes a-b/total`` header."""
    span = content_range.partition(" ")[2].partition("/")[0]
    if "-" not in span:
        return default
    first, last = span.split("-")
    return int(last) - int(first) + 1
