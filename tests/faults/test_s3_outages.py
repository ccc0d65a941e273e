"""Items 5 and 6 of the fault run: S3 outages during uploads, half-finished uploads, a frozen
endpoint, and publishing a finished version again."""
from __future__ import annotations

import threading
import time

import pytest

from jobs.core import storage
from jobs.core.errors import StorageError
from jobs.store import TERMINAL, Store
from tests.faults.helpers import cli, custom_job
from tests.harness.process import wait_for

WRITE_MODEL = """\
import os, pathlib
model = pathlib.Path(os.environ["FACEOPS_MODEL_DIR"])
for i in range(4):
    (model / f"part{i}.bin").write_bytes(os.urandom(256 * 1024))
print("trained")
"""


def _folder(root, files: int = 4, size: int = 256 * 1024):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (root / f"part{i}.bin").write_bytes(bytes([i]) * size)
    return root


def _keys(client, bucket: str, prefix: str = "") -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]


def test_upload_rides_out_a_short_outage(s3_bucket, s3_env, outage, tmp_path, monkeypatch):
    monkeypatch.setenv("FACEOPS_S3_UPLOAD_BACKOFF", "0.5")
    proxy = outage()
    proxy.down()
    threading.Timer(1.5, proxy.up).start()
    storage.upload(_folder(tmp_path / "model"), f"s3://{s3_bucket}/models/m1", progress=False)
    keys = _keys(s3_env.client(), s3_bucket)
    assert sorted(keys) == sorted([f"models/m1/part{i}.bin" for i in range(4)] + ["models/m1/_manifest.json"])


def test_outage_mid_folder_upload_publishes_nothing_and_gc_cleans(s3_bucket, s3_env, outage, tmp_path, monkeypatch):
    monkeypatch.setenv("FACEOPS_S3_UPLOAD_ATTEMPTS", "2")
    monkeypatch.setenv("FACEOPS_S3_UPLOAD_BACKOFF", "0.1")
    outage(budget=600 * 1024)  # goes down after about two of the four files
    with pytest.raises(StorageError, match="gave up"):
        storage.upload(_folder(tmp_path / "model"), f"s3://{s3_bucket}/models/m2", progress=False)
    monkeypatch.setenv("FACEOPS_S3_ENDPOINT", s3_env.endpoint)
    client = s3_env.client()
    assert _keys(client, s3_bucket, "models/m2/") == []  # nothing visible under the target
    assert _keys(client, s3_bucket, "models/m2.faceops-staging-")  # the staged half stays until gc
    result = cli("storage", "gc", f"s3://{s3_bucket}/models/m2", "--older-than", "0")
    assert result.returncode == 0, result.stderr
    assert _keys(client, s3_bucket) == []


def test_orphaned_multipart_uploads_are_aborted(s3_bucket, s3_env, tmp_path, monkeypatch):
    client = s3_env.client()
    orphan = client.create_multipart_upload(Bucket=s3_bucket, Key="models/m3/big.bin")
    client.upload_part(Bucket=s3_bucket, Key="models/m3/big.bin", UploadId=orphan["UploadId"], PartNumber=1,
                       Body=b"x" * (5 * 1024 * 1024))
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
    result = cli("storage", "gc", f"s3://{s3_bucket}/models/m3", "--older-than", "0")
    assert result.returncode == 0 and "multipart upload" in result.stdout, result.stderr
    assert not client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
    # the next upload to the same prefix tidies on its own too
    again = client.create_multipart_upload(Bucket=s3_bucket, Key="models/m3/big.bin")
    monkeypatch.setenv("FACEOPS_STORAGE_ORPHAN_SECONDS", "0")
    storage.upload(_folder(tmp_path / "m3"), f"s3://{s3_bucket}/models/m3", progress=False)
    assert not [u for u in client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
                if u["UploadId"] == again["UploadId"]]


def test_killed_local_upload_leaves_part_folders_that_gc_removes(tmp_path, monkeypatch):
    dest = tmp_path / "out" / "model"
    leftover = dest.with_name(".model.deadbeef.part")
    leftover.mkdir(parents=True)
    (leftover / "half.bin").write_bytes(b"half")
    result = cli("storage", "gc", str(dest), "--older-than", "0")
    assert result.returncode == 0 and "1 leftovers removed" in result.stdout
    assert not leftover.exists()
    leftover.mkdir()
    monkeypatch.setenv("FACEOPS_STORAGE_ORPHAN_SECONDS", "0")
    storage.upload(_folder(tmp_path / "src"), dest, progress=False)
    assert not leftover.exists() and (dest / storage.MANIFEST).exists()


def test_frozen_endpoint_fails_fast_and_says_why(tmp_path, outage):
    outage(freeze=True)
    spec = custom_job(tmp_path / "proj", extra="inputs:\n  train: s3://frozen/data/\n")
    started = time.monotonic()
    result = cli("job", "submit", str(spec), "--detach", timeout=90, env={"FACEOPS_S3_READ_TIMEOUT": "2"})
    assert result.returncode == 2 and "no answer within 2s" in result.stderr, result.stderr
    assert time.monotonic() - started < 40


def test_failed_upload_is_published_again_without_retraining(s3_bucket, s3_env, outage, tmp_path):
    proxy = outage()
    spec = custom_job(tmp_path / "proj", script="import time; time.sleep(2)\n" + WRITE_MODEL,
                      extra=f"outputs:\n  model: s3://{s3_bucket}/models/pub/\n")
    env = {"FACEOPS_S3_UPLOAD_ATTEMPTS": "2", "FACEOPS_S3_UPLOAD_BACKOFF": "0.1"}
    result = cli("job", "submit", str(spec), "--detach", env=env)
    assert result.returncode == 0, result.stderr
    wait_for(lambda: Store().get("fault-job", 1)["status"] == "running")
    proxy.down()
    record = wait_for(lambda: (r := Store().get("fault-job", 1))["status"] in TERMINAL and r, timeout=90)
    assert record["status"] == "failed" and "cannot reach S3 endpoint" in record["failure_reason"]
    proxy.up()
    published = cli("job", "publish", "fault-job:1", env=env)
    assert published.returncode == 0 and f"published s3://{s3_bucket}/models/pub/" in published.stdout, published.stderr
    assert storage.exists(f"s3://{s3_bucket}/models/pub/{storage.MANIFEST}")
    assert Store().versions("fault-job") == [Store().get("fault-job", 1)]


def test_upload_retries_are_logged_with_their_cause(s3_bucket, s3_env, outage, tmp_path):
    """Item 13 of the second fault run: the job log tells each retry of an upload and why."""
    proxy = outage()
    spec = custom_job(tmp_path / "proj", script="import time; time.sleep(1)\n" + WRITE_MODEL,
                      extra=f"outputs:\n  model: s3://{s3_bucket}/models/retried/\n")
    env = {"FACEOPS_S3_UPLOAD_ATTEMPTS": "8", "FACEOPS_S3_UPLOAD_BACKOFF": "0.5", "FACEOPS_S3_ATTEMPTS": "1"}
    assert cli("job", "submit", str(spec), "--detach", env=env).returncode == 0
    wait_for(lambda: Store().get("fault-job", 1)["status"] == "running")
    proxy.down()
    wait_for(lambda: Store().get("fault-job", 1)["status"] == "uploading")
    threading.Timer(3, proxy.up).start()
    record = wait_for(lambda: (r := Store().get("fault-job", 1))["status"] in TERMINAL and r, timeout=120)
    assert record["status"] == "done", record["failure_reason"]
    log = cli("job", "logs", "fault-job:1").stdout
    retries = [line for line in log.splitlines() if "retrying in" in line]
    assert retries and all("cannot reach S3 endpoint" in line for line in retries), log
