"""The version store: versions are numbered per job, updates keep history, terminal records freeze."""
from __future__ import annotations

import multiprocessing

import pytest

from jobs.core.errors import NotFoundError
from jobs.store import RecordFrozen, Store, new_record, parse_ref


def make(name: str = "recog", parent=None) -> dict:
    spec = {"name": name, "task": "custom", "backend": "local", "outputs": {}, "image": None}
    return new_record(spec, parent=parent, code={"hash": "abc"}, inputs={}, image=None)


def test_round_trip_and_numbering():
    store = Store()
    first = store.create(make())
    second = store.create(make(parent=1))
    other = store.create(make("detect"))
    assert (first["version"], second["version"], other["version"]) == (1, 2, 1)
    assert store.get("recog") == second
    assert store.resolve("recog:1") == first
    assert [r["version"] for r in store.versions("recog")] == [1, 2]
    assert {(r["name"], r["version"]) for r in store.list()} == {("recog", 1), ("recog", 2), ("detect", 1)}


def test_status_history_timings_and_freeze():
    store = Store()
    record = store.create(make())
    store.update("recog", 1, status="staging")
    store.update("recog", 1, status="running", backend_info={"pid": 1})
    done = store.update("recog", 1, status="failed", reason="exit code 3", metrics={"loss": 0.5})
    assert [h["status"] for h in done["status_history"]] == ["queued", "staging", "running", "failed"]
    assert set(done["timings"]) == {"queued", "staging", "running"}
    assert done["failure_reason"] == "exit code 3" and done["metrics"] == {"loss": 0.5}
    assert store.list(status="failed")[0]["version"] == record["version"]
    with pytest.raises(RecordFrozen, match="recog:1 is failed"):
        store.update("recog", 1, metrics={"loss": 0.1})
    assert store.get("recog", 1)["metrics"] == {"loss": 0.5}


def test_unknown_job_and_version_say_what_exists():
    store = Store()
    with pytest.raises(NotFoundError, match="no job named 'recog'"):
        store.resolve("recog")
    store.create(make())
    with pytest.raises(NotFoundError, match="recog:99 does not exist; versions of recog: 1"):
        store.resolve("recog:99")
    with pytest.raises(NotFoundError, match="expected NAME or NAME:VERSION"):
        parse_ref("recog:latest")


def _create_many(home: str, count: int) -> None:
    import os

    os.environ["FACEOPS_HOME"] = home
    store = Store()
    for _ in range(count):
        store.create(make())


def test_concurrent_creates_get_unique_versions(faceops_home):
    """Two processes submitting at once never get the same version number."""
    Store()
    procs = [multiprocessing.get_context("spawn").Process(target=_create_many, args=(str(faceops_home), 10)) for _ in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    assert [r["version"] for r in Store().versions("recog")] == list(range(1, 21))
