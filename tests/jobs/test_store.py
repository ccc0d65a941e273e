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


def test_reading_a_new_home_creates_no_store(faceops_home, runner):
    """Read commands never create a store (nor its schema); the first submit does."""
    assert runner("job", "list").output.strip() == "no jobs yet"
    assert runner("doctor").exit_code == 0 and Store().list() == []
    assert not (faceops_home / "store.sqlite").exists()
    Store().create(make())
    assert Store().schema_version() == 2 and [r["version"] for r in Store().list()] == [1]


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


def _first_submits(homes: list[str], barrier, errors) -> None:
    """Submit one version into each of ``homes`` in turn, starting together with the others."""
    import os

    for home in homes:
        os.environ["FACEOPS_HOME"] = home
        barrier.wait(30)
        try:
            Store().create(make())
        except Exception as exc:  # counted and shown by the test
            errors.put(f"{home}: {exc}")


def test_first_submits_at_once_all_create_the_store(tmp_path):
    """Four processes making their first submit into a new home at the same moment all succeed.

    Switching a new store file to WAL mode is the race: SQLite answers one of two processes doing
    it together "database is locked" at once, without waiting. Without the retry about a third of
    these 30 homes failed a submit (17 of 50 in a measured run), so a broken store fails here."""
    context = multiprocessing.get_context("fork")
    homes = [str(tmp_path / str(i)) for i in range(30)]
    barrier, errors = context.Barrier(4), context.Queue()
    procs = [context.Process(target=_first_submits, args=(homes, barrier, errors)) for _ in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert failures == [] and [proc.exitcode for proc in procs] == [0] * 4
    for home in homes:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("FACEOPS_HOME", home)
            assert [r["version"] for r in Store().versions("recog")] == [1, 2, 3, 4]


# The schema faceops 0.1.0 wrote (schema 1), before records said who and where.
SCHEMA_1 = """CREATE TABLE versions (name TEXT NOT NULL, version INTEGER NOT NULL, parent INTEGER,
    status TEXT NOT NULL, created REAL NOT NULL, record TEXT NOT NULL, PRIMARY KEY (name, version))"""


def test_a_store_of_the_previous_schema_is_upgraded_only_on_request(faceops_home, runner):
    """A user's existing store keeps its versions: reads say to upgrade (and change nothing), the
    upgrade copies the file aside first, and then every command reads the old versions."""
    import json
    import sqlite3

    (faceops_home / "jobs" / "recog" / "1").mkdir(parents=True)  # its version folder, as the old faceops left it
    old = {**make(), "version": 1, "created": 1.0, "status": "done", "status_history": [{"status": "done", "at": 1.0}]}
    with sqlite3.connect(faceops_home / "store.sqlite") as db:
        db.execute(SCHEMA_1)
        db.execute("INSERT INTO versions VALUES ('recog', 1, NULL, 'done', 1.0, ?)", (json.dumps(old),))
        db.execute("PRAGMA user_version = 1")
    db.close()
    before = _dump(faceops_home / "store.sqlite")
    listing = runner("job", "list")
    assert listing.exit_code == 2 and "is at schema 1, this faceops needs 2; run faceops store upgrade" in listing.output
    assert _dump(faceops_home / "store.sqlite") == before
    assert "schema 2: who and where" in runner("doctor").output
    upgraded = runner("store", "upgrade")
    assert upgraded.exit_code == 0 and "applied schema 2" in upgraded.output, upgraded.output
    assert _dump(faceops_home / "store.sqlite.bak-v1") == before
    assert "(up to date)" in runner("store", "upgrade").output
    assert Store().get("recog", 1) == old
    assert "recog:1" in runner("job", "list").output
    assert runner("doctor").exit_code == 0
    assert Store().create(make(parent=1))["version"] == 2


def test_records_say_who_and_where_and_list_filters_by_them(monkeypatch, runner):
    import socket

    monkeypatch.setenv("USER", "alice")
    monkeypatch.setenv("LOGNAME", "alice")
    first = Store().create(make())
    monkeypatch.setenv("USER", "bob")
    monkeypatch.setenv("LOGNAME", "bob")
    Store().create(make())
    assert (first["user"], first["host"], first["faceops_version"]) == ("alice", socket.gethostname(), "0.1.0")
    assert [r["version"] for r in Store().list(user="alice")] == [1]
    assert [r["version"] for r in Store().list(host=socket.gethostname())] == [2, 1]
    assert Store().list(host="elsewhere") == [] and [r["version"] for r in Store().list(limit=1)] == [2]
    listing = runner("job", "list", "--user", "bob")
    assert "recog:2" in listing.output and "recog:1" not in listing.output and f"bob@{socket.gethostname()}" in listing.output
    assert runner("job", "list", "--host", "elsewhere").output.strip() == "no versions from elsewhere"


def _dump(path) -> tuple[int, list[str]]:
    """A SQLite file's schema number and its content as SQL (the header's journal bytes aside)."""
    import sqlite3

    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0], list(db.iterdump())
    finally:
        db.close()
