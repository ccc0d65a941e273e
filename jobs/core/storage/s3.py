"""The S3 client: settings, bounded timeouts, retries, and errors that say what to check.

Any endpoint URL, region and addressing style from the environment or ``config.yaml`` (AWS S3,
Huawei OBS, MinIO, SeaweedFS). Connect/read timeouts are bounded (``s3.connect_timeout``,
``s3.read_timeout``); uploads outlive short outages through :func:`_retried`
(``s3.upload_attempts``). boto3 is imported inside the functions that use it so ``faceops --help``
stays fast. Error messages name the URI and what to check, never a key or secret.
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Callable, Iterator

from jobs.core.config import setting
from jobs.core.errors import FaceopsError, NotFoundError, SpecError, StorageError
from jobs.core.retry import retrying
from jobs.core.storage.uris import Location, ObjectInfo, _prefix

RANGE_ATTEMPTS = 3
RANGE_RETRY_DELAY = 0.1  # seconds before the first refetch of a broken range
DENIED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"}
MISSING = {"404", "NoSuchKey", "NotFound"}
UNAVAILABLE = {"500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout"}


class StorageUnavailable(StorageError):
    """The endpoint cannot be reached or answers 5xx: worth trying again a little later."""


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


def _s3_files(loc: Location) -> list[ObjectInfo]:
    prefix, found = _prefix(loc), []
    with _errors(loc, "list"):
        for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith("/"):
                    found.append(ObjectInfo(f"s3://{loc.bucket}/{obj['Key']}", obj["Size"], obj["ETag"].strip('"'),
                                            False, obj["LastModified"].timestamp()))
    return sorted(found, key=lambda info: info.uri)


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


def _transfer_config(part_size: int):
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size)


class _BrokenRange(Exception):
    """A ranged GET whose body broke off or came back short: worth fetching again."""


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
