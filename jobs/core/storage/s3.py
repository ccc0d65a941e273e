"""The S3 client: settings, bounded timeouts, retries, and errors that say what to check.

Any endpoint URL, region and addressing style from the environment or ``config.yaml`` (AWS S3,
Huawei OBS, MinIO, SeaweedFS). Every request is bounded as a whole (:func:`request_bound`:
``s3.attempts`` tries of ``s3.connect_timeout`` + ``s3.read_timeout`` plus backoff), and a request
that timed out is not retried again, so a frozen endpoint fails a command within that stated
figure; uploads outlive short outages through :func:`_retried` (``s3.upload_attempts``), each
retry reported with its cause. boto3 and botocore come from :mod:`jobs.core.lazy`, loaded on first
use, so ``faceops --help`` stays fast. Error messages name the URI and what to check, never a key or secret.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

from jobs.core.config import setting
from jobs.core.errors import FaceopsError, NotFoundError, SpecError, StorageError
from jobs.core.lazy import boto3, botocore
from jobs.core.retry import retrying
from jobs.core.storage.uris import Location, ObjectInfo, _prefix, parse

RANGE_ATTEMPTS = 3
RANGE_RETRY_DELAY = 0.1  # seconds before the first refetch of a broken range
DENIED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"}
MISSING = {"404", "NoSuchKey", "NotFound"}
UNAVAILABLE = {"500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout"}
_RETRY_REPORT: ContextVar[Callable[[str], None] | None] = ContextVar("faceops_retry_report", default=None)


class StorageUnavailable(StorageError):
    """The endpoint cannot be reached or answers 5xx: worth trying again a little later.
    ``timed_out`` marks an endpoint that took a connection but gave no answer in time on every
    try: retrying that again would only multiply the wait, so callers give up at once."""

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


def s3_client(timeout: float | None = None, attempts: int | None = None):
    """A boto3 S3 client for the current settings (cached per settings, since tests and long
    sessions change the environment). Environment variables win over ``config.yaml``'s ``s3:``.
    ``timeout`` and ``attempts`` replace the configured timeouts and tries (for :func:`probe`)."""
    endpoint = setting("s3", "endpoint_url", ("FACEOPS_S3_ENDPOINT", "AWS_ENDPOINT_URL"))
    connect, read = (timeout, timeout) if timeout is not None else timeouts()
    return _client(
        connect, read, attempts or request_attempts(),
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
    configured = setting(section, "region", (*env, "AWS_REGION", "AWS_DEFAULT_REGION"))
    if configured:
        return str(configured)
    try:
        return boto3.session.Session().region_name
    except botocore.exceptions.ProfileNotFound as exc:
        raise SpecError(f"{section}: {exc}; check AWS_PROFILE and the AWS config file") from None


def timeouts() -> tuple[float, float]:
    """Seconds to wait for a connection and for an answer (``s3.connect_timeout``/``read_timeout``):
    a frozen endpoint fails a command in seconds, not minutes."""
    return (float(setting("s3", "connect_timeout", ("FACEOPS_S3_CONNECT_TIMEOUT",), 3)),
            float(setting("s3", "read_timeout", ("FACEOPS_S3_READ_TIMEOUT",), 20)))


def request_attempts() -> int:
    """How often one S3 request is sent before it fails (``s3.attempts``, botocore's retries)."""
    return max(1, int(setting("s3", "attempts", ("FACEOPS_S3_ATTEMPTS",), 3)))


def request_bound() -> float:
    """The longest one S3 request can take before faceops gives up on it, in seconds: every try
    waits at most ``s3.connect_timeout`` + ``s3.read_timeout``, and botocore's backoff between
    tries is at most 1, 2, 4... seconds (capped at 20). Error messages state this figure."""
    connect, read = timeouts()
    attempts = request_attempts()
    return attempts * (connect + read) + sum(min(2.0 ** i, 20.0) for i in range(attempts - 1))


def probe_timeout() -> float:
    """Seconds :func:`probe` waits for a connection, and again for an answer (``s3.probe_timeout``)."""
    return float(setting("s3", "probe_timeout", ("FACEOPS_S3_PROBE_TIMEOUT",), 2))


def probe(uri: str | Path) -> str | None:
    """Why the S3 endpoint of ``uri`` cannot be reached, or None when it answers. One request
    (HEAD of the bucket), one try of :func:`probe_timeout` seconds to connect and as many to
    answer, no retries: a dry run asks once and plans without S3 instead of waiting out
    :func:`request_bound` in every check. Any answer but a 5xx counts as reachable (a missing
    bucket, a denied key or missing credentials are for the real checks to explain)."""
    limit = probe_timeout()
    client = s3_client(timeout=limit, attempts=1)
    where = f"S3 endpoint {client.meta.endpoint_url}"
    try:
        client.head_bucket(Bucket=parse(uri).bucket)
    except botocore.exceptions.ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return f"{where} answered {code}" if code in UNAVAILABLE else None
    except botocore.exceptions.ConnectTimeoutError:
        return f"{where}: no connection within {limit:g}s (s3.probe_timeout, one try)"
    except botocore.exceptions.ReadTimeoutError:
        return f"{where}: no answer within {limit:g}s (s3.probe_timeout, one try)"
    except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as exc:
        return f"{where}: could not connect ({type(exc).__name__}, one try)"
    except (botocore.exceptions.NoCredentialsError, botocore.exceptions.ParamValidationError):
        return None
    return None


@lru_cache(maxsize=8)
def _client(connect: float, read: float, attempts: int, endpoint: str | None, region: str, style: str, access_key: str | None,
            secret_key: str | None, token: str | None):
    # Standard retries back off on throttling and 5xx; bounded timeouts make an unreachable or
    # frozen endpoint fail in seconds instead of hanging a job submission.
    config = botocore.config.Config(region_name=region, s3={"addressing_style": style}, connect_timeout=connect,
                    read_timeout=read, retries={"mode": "standard", "max_attempts": attempts})
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, aws_access_key_id=access_key, aws_secret_access_key=secret_key,
        aws_session_token=token, config=config)


@contextmanager
def _errors(loc: Location, action: str) -> Iterator[None]:
    """Turn botocore exceptions into errors that say what failed and what to check."""
    try:
        yield
    except boto3.exceptions.S3UploadFailedError as exc:
        cause = exc.__context__
        if isinstance(cause, botocore.exceptions.ClientError):
            raise _client_error(loc, action, cause) from None
        raise StorageError(f"{loc}: {action} failed: {exc}") from None
    except botocore.exceptions.ClientError as exc:
        raise _client_error(loc, action, exc) from None
    except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as exc:
        endpoint = s3_client().meta.endpoint_url
        connect, read = timeouts()
        read_timeout = isinstance(exc, botocore.exceptions.ReadTimeoutError)
        connect_timeout = isinstance(exc, botocore.exceptions.ConnectTimeoutError)
        timed_out = read_timeout or connect_timeout
        tries = f"on each of {request_attempts()} tries, {request_bound():g}s in all with backoff"
        why = (f"no answer within {read:g}s (s3.read_timeout) {tries}" if read_timeout
               else f"no connection within {connect:g}s (s3.connect_timeout) {tries}" if connect_timeout
               else type(exc).__name__)
        raise StorageUnavailable(f"cannot reach S3 endpoint {endpoint} ({why}) to {action} {loc}; "
                                 "check FACEOPS_S3_ENDPOINT / AWS_ENDPOINT_URL or s3.endpoint_url in config.yaml "
                                 "and that the server is running", timed_out=timed_out) from None
    except botocore.exceptions.NoCredentialsError:
        raise StorageError(f"{loc}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                           "or s3.access_key and s3.secret_key in config.yaml") from None
    except botocore.exceptions.ParamValidationError as exc:
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


def _s3_files(loc: Location) -> list[ObjectInfo]:
    prefix, found = _prefix(loc), []
    with _errors(loc, "list"):
        for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith("/"):
                    found.append(ObjectInfo(f"s3://{loc.bucket}/{obj['Key']}", obj["Size"], obj["ETag"].strip('"'),
                                            False, obj["LastModified"].timestamp()))
    return sorted(found, key=lambda info: info.uri)


@contextmanager
def reporting_retries(report: Callable[[str], None]) -> Iterator[None]:
    """Within the block, storage retries are reported to ``report`` (a job's log) instead of stderr."""
    token = _RETRY_REPORT.set(report)
    try:
        yield
    finally:
        _RETRY_REPORT.reset(token)


def _retried(call: Callable[[], Any], what: str) -> Any:
    """``call`` again with backoff while the endpoint is down or answers 5xx, for at most
    ``s3.upload_attempts`` tries (``s3.upload_backoff`` seconds, doubling): a short outage does
    not fail a job, a long one still ends it with the reason. An endpoint that took the
    connection and never answered is not tried again (each request already waited its bound).
    Every retry is reported with its cause: on stderr, or to :func:`reporting_retries`'s listener."""
    attempts = int(setting("s3", "upload_attempts", ("FACEOPS_S3_UPLOAD_ATTEMPTS",), 6))
    delay = float(setting("s3", "upload_backoff", ("FACEOPS_S3_UPLOAD_BACKOFF",), 1.0))

    def give_up(exc: Exception, tries: int) -> Exception:
        return StorageUnavailable(f"{exc} (gave up on {what} after {tries} tries)")

    def say(line: str) -> None:
        report = _RETRY_REPORT.get()
        if report is None:
            print(f"[faceops] {what}: {line}", file=sys.stderr, flush=True)
        else:
            report(f"{what}: {line}")

    return retrying(call, lambda exc: isinstance(exc, StorageUnavailable) and not exc.timed_out,
                    attempts=attempts, delay=delay, give_up=give_up, say=say)


def _transfer_config(part_size: int):
    from boto3.s3.transfer import TransferConfig  # a submodule boto3 loads only for S3 clients

    return TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size)


class _BrokenRange(Exception):
    """A ranged GET whose body broke off or came back short: worth fetching again."""


def _get_range(loc: Location, start: int, length: int) -> bytes:
    client = s3_client()
    with _errors(loc, "read"):
        try:
            response = client.get_object(Bucket=loc.bucket, Key=loc.key, Range=f"bytes={start}-{start + length - 1}")
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return b""  # starts past the end, like a local read there
            raise
    try:
        data = response["Body"].read()
    except (botocore.exceptions.HTTPClientError, botocore.exceptions.IncompleteReadError, OSError) as exc:
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


def require_bucket(uri: str | Path) -> None:
    """Raise NotFoundError when the bucket of the S3 ``uri`` does not exist and the endpoint's
    error when it cannot be reached in time; other answers (no permission to list buckets, a
    server that creates buckets on the first PUT) leave the decision to the write itself."""
    loc = parse(uri)
    try:
        with _errors(loc, "check the bucket of"):
            s3_client().head_bucket(Bucket=loc.bucket)
    except NotFoundError:
        raise NotFoundError(f"{uri}: bucket '{loc.bucket}' does not exist") from None
    except StorageUnavailable as exc:
        if exc.timed_out:
            raise
    except StorageError:
        pass
