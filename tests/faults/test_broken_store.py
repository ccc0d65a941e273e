"""Item 7 of the fault run: a store that is damaged, emptied or lost is detected, never read
as healthy, and a version folder is never reused."""
from __future__ import annotations

import sqlite3

from jobs.store import Store
from tests.faults.helpers import cli, custom_job


def _one_done_version(tmp_path):
    spec = custom_job(tmp_path / "proj")
    result = cli("job", "submit", str(spec))
    assert result.returncode == 0, result.stderr
    return spec


def test_damaged_store_is_an_error_on_every_command(tmp_path, faceops_home):
    spec = _one_done_version(tmp_path)
    store = faceops_home / "store.sqlite"
    data = bytearray(store.read_bytes())
    data[:16] = b"garbage garbage!"
    store.write_bytes(bytes(data))
    for args in (("job", "list"), ("job", "show", "fault-job"), ("job", "submit", str(spec), "--detach"), ("doctor",)):
        result = cli(*args)
        assert result.returncode == 2 and "not a SQLite database" in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_emptied_store_does_not_restart_numbering(tmp_path, faceops_home):
    spec = _one_done_version(tmp_path)
    log = faceops_home / "jobs" / "fault-job" / "1" / "job.log"
    before = log.read_text()
    (faceops_home / "store.sqlite").write_bytes(b"")
    for suffix in ("-wal", "-shm"):
        (faceops_home / f"store.sqlite{suffix}").unlink(missing_ok=True)
    for args in (("job", "list"), ("job", "submit", str(spec), "--detach")):
        result = cli(*args)
        assert result.returncode == 2 and "store was lost" in result.stderr, (args, result.stderr)
    assert log.read_text() == before


def test_version_folder_that_exists_is_never_reused(tmp_path, faceops_home):
    spec = custom_job(tmp_path / "proj")
    leftover = faceops_home / "jobs" / "fault-job" / "1"
    Store().upgrade()
    leftover.mkdir(parents=True)
    (leftover / "job.log").write_text("an older run\n")
    result = cli("job", "submit", str(spec), "--detach")
    assert result.returncode == 2 and "already exists" in result.stderr
    assert (leftover / "job.log").read_text() == "an older run\n"
    doctor = cli("doctor")
    assert doctor.returncode == 1 and "version folder without a record" in doctor.stdout


def test_damaged_record_and_schema_change_backup(tmp_path, faceops_home):
    _one_done_version(tmp_path)
    path = faceops_home / "store.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("UPDATE versions SET record = '{not json' WHERE version = 1")
        db.execute("PRAGMA user_version = 0")  # as an older faceops left it
    db.close()
    result = cli("job", "show", "fault-job:1")
    assert result.returncode == 2 and "run faceops store upgrade" in result.stderr, result.stderr
    assert not (faceops_home / "store.sqlite.bak-v0").exists(), "a read command never changes the schema"
    doctor = cli("doctor")
    assert doctor.returncode == 1 and "an upgrade is due" in doctor.stdout, doctor.stdout
    upgraded = cli("store", "upgrade")
    assert upgraded.returncode == 0 and "applied schema 1" in upgraded.stdout, upgraded.stderr
    assert (faceops_home / "store.sqlite.bak-v0").exists()
    result = cli("job", "show", "fault-job:1")
    assert result.returncode == 2 and "damaged" in result.stderr and "Traceback" not in result.stderr
    doctor = cli("doctor")
    assert doctor.returncode == 1 and "fault-job:1: record is not readable JSON" in doctor.stdout
    listing = cli("job", "list")
    assert listing.returncode == 2 and "bak-v0" in listing.stderr
