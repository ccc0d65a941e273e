"""Item 8 of the second fault run: what a killed submit or a lost folder leaves is found: stale
temporary bundles are removed by the next submit and by ``doctor``, ``doctor`` reports a version
whose folder is gone, and ``job logs`` of that version says so instead of printing nothing."""
from __future__ import annotations

import os
import shutil
import time

from jobs.store import Store, workdir
from tests.faults.helpers import cli, custom_job


def _stale(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(1024))
    hours_ago = time.time() - 2 * 3600
    os.utime(path, (hours_ago, hours_ago))


def test_stale_temporary_bundles_are_removed(tmp_path, faceops_home):
    bundles = faceops_home / "bundles"
    killed, fresh = bundles / ".bundle.killed.tmp", bundles / ".bundle.live.tmp"
    _stale(killed)
    fresh.write_bytes(b"being written")  # a submit running now: kept
    spec = custom_job(tmp_path / "proj")
    assert cli("job", "submit", str(spec)).returncode == 0
    assert not killed.exists() and fresh.exists()
    _stale(killed)
    doctor = cli("doctor")
    assert doctor.returncode == 0 and f"removed {killed}" in doctor.stdout, doctor.stdout
    assert not killed.exists() and fresh.exists()


def test_a_missing_version_folder_is_reported(tmp_path):
    spec = custom_job(tmp_path / "proj")
    assert cli("job", "submit", str(spec)).returncode == 0
    folder = workdir(Store().get("fault-job", 1))
    shutil.rmtree(folder)
    doctor = cli("doctor")
    assert doctor.returncode == 1 and f"fault-job:1: its version folder {folder} is missing" in doctor.stdout
    logs = cli("job", "logs", "fault-job:1")
    assert logs.returncode == 2 and "version folder" in logs.stderr and "Traceback" not in logs.stderr, logs.stderr
