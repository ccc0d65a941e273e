"""Item 2 of the second fault run: an S3 endpoint that accepts connections and never answers
(the loopback :class:`tests.harness.net.OutageProxy` with ``freeze``). Every command that waits
on it fails within the bound its message states: ``s3.attempts`` x (``s3.connect_timeout`` +
``s3.read_timeout``) plus botocore's backoff, with no second round of retries on top; a dry run
probes it once and plans without it, naming the checks it skipped."""
from __future__ import annotations

import re
import time

import pytest

from tests.faults.helpers import cli, custom_job

FROZEN = {"FACEOPS_S3_READ_TIMEOUT": "2", "FACEOPS_S3_CONNECT_TIMEOUT": "1", "FACEOPS_S3_ATTEMPTS": "2",
          "FACEOPS_S3_UPLOAD_ATTEMPTS": "6", "FACEOPS_S3_UPLOAD_BACKOFF": "1"}
BOUND = 2 * (1 + 2) + 1  # what storage.request_bound() gives for FROZEN
STARTUP = 30  # seconds a CLI process may need to start on a busy machine, beyond the stated bound


def _fails_within_its_bound(*args: str, cwd=None) -> str:
    started = time.monotonic()
    result = cli(*args, timeout=120, env=FROZEN, cwd=cwd)
    took = time.monotonic() - started
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    stated = re.search(r"no answer within 2s \(s3\.read_timeout\) on each of 2 tries, (\d+(?:\.\d+)?)s in all",
                       result.stderr)
    assert stated and float(stated.group(1)) == BOUND, result.stderr
    assert took < BOUND + STARTUP, f"{args} took {took:.0f}s against a stated bound of {BOUND}s"
    return result.stderr


@pytest.mark.parametrize("where", ["inputs:\n  train: s3://frozen/data/\n", "outputs:\n  model: s3://frozen/models/\n"])
def test_job_submit(tmp_path, outage, where):
    outage(freeze=True)
    spec = custom_job(tmp_path / "proj", extra=where)
    _fails_within_its_bound("job", "submit", str(spec), "--detach")
    planned = cli("job", "submit", str(spec), "--dry-run", timeout=120, env=FROZEN)  # one quick probe, then the plan
    assert planned.returncode == 0, planned.stderr
    assert "no answer within 2s (s3.probe_timeout, one try); planned without it" in planned.stdout, planned.stdout
    assert "  skipped: " + ("inputs.train: s3://frozen/data/ exists" if "inputs" in where else
                            "outputs.model: s3://frozen/models/ is writable") in planned.stdout, planned.stdout


def test_data_inspect(outage):
    outage(freeze=True)
    _fails_within_its_bound("data", "inspect", "s3://frozen/train/train.rec")


def test_storage_gc(outage):
    outage(freeze=True)
    _fails_within_its_bound("storage", "gc", "s3://frozen/models/")
