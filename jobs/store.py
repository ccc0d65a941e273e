"""The version store: one record per job version in SQLite (WAL) under ``$FACEOPS_HOME``.

A record is a JSON document (see :func:`new_record`) with a few columns pulled out for queries.
Records change only while a job is live: once a version reaches a terminal state the store refuses
every update, so what ``job show`` prints is what ran. Several processes (the CLI, the local
backend's supervisors) use the store at once; WAL and ``BEGIN IMMEDIATE`` keep them consistent.
"""
from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from jobs.core.config import home
from jobs.core.errors import FaceopsError, NotFoundError

TERMINAL = ("done", "failed", "stopped")
STATUSES = ("queued", "staging", "running", "uploading", *TERMINAL)

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    name    TEXT NOT NULL,
    version INTEGER NOT NULL,
    parent  INTEGER,
    status  TEXT NOT NULL,
    created REAL NOT NULL,
    record  TEXT NOT NULL,
    PRIMARY KEY (name, version)
)
"""


LATEST = object()  # "the job's latest version", resolved inside the transaction that needs it


class StoreError(FaceopsError):
    """The version store is damaged or unreadable; the message says what to do."""


class RecordFrozen(FaceopsError):
    """An update was attempted on a version that already reached a terminal state."""


def new_record(spec: dict[str, Any], *, parent: int | None, code: dict[str, Any],
               inputs: dict[str, Any], image: dict[str, Any] | None) -> dict[str, Any]:
    """A fresh record for ``spec`` (a resolved spec dict); the store assigns the version."""
    return {
        "name": spec["name"],
        "version": None,
        "parent": parent,
        "task": spec["task"],
        "backend": spec["backend"],
        "spec": spec,
        "image": image or {"ref": spec.get("image"), "digest": None},
        "code": code,
        "inputs": inputs,
        "outputs": dict(spec.get("outputs") or {}),
        "status": "queued",
        "status_history": [],
        "timings": {},
        "metrics": {},
        "failure_reason": None,
        "backend_info": {},
        "created": None,
    }


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``NAME:V`` -> (NAME, V); ``NAME`` -> (NAME, None) meaning the latest version."""
    name, sep, version = ref.partition(":")
    if not sep:
        return name, None
    if not version.isdigit():
        raise NotFoundError(f"{ref}: expected NAME or NAME:VERSION with a number, like recog:3")
    return name, int(version)


class Store:
    """Access to ``store.sqlite``. Cheap to create; every method opens its own transaction."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or home() / "store.sqlite"
        with self._connect() as db:
            db.execute(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=30000")
            yield db
        finally:
            db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the lock up front, so read-modify-write is atomic
        across processes."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def create(self, record: dict[str, Any], parent_is_latest: bool = False) -> dict[str, Any]:
        """Store ``record`` as the next version of its job (status queued) and return it.

        With ``parent_is_latest`` the parent is the job's latest version, read in this same
        transaction so parallel submits never share or skip a parent. The version's folder is
        created here too: one that already exists (left by a store that lost its records) is
        never reused, since its log and outputs belong to another run."""
        with self._transaction() as db:
            (latest,) = db.execute("SELECT MAX(version) FROM versions WHERE name = ?", (record["name"],)).fetchone()
            now = time.time()
            record = {**record, "version": (latest or 0) + 1, "created": now, "status": "queued",
                      "status_history": [{"status": "queued", "at": now}]}
            if parent_is_latest:
                record["parent"] = latest
            folder = workdir(record)
            folder.parent.mkdir(parents=True, exist_ok=True)
            try:
                folder.mkdir()
            except FileExistsError:
                raise StoreError(f"{folder} already exists but {record['name']}:{record['version']} is not in "
                                 f"{self.path}: the store has lost records; run faceops doctor") from None
            db.execute("INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?)",
                       (record["name"], record["version"], record["parent"], "queued", now, json.dumps(record)))
        return record

    def get(self, name: str, version: int | None = None) -> dict[str, Any]:
        """The record of ``name:version`` (latest when version is None); NotFoundError otherwise."""
        with self._connect() as db:
            if version is None:
                row = db.execute("SELECT record FROM versions WHERE name = ? ORDER BY version DESC LIMIT 1", (name,)).fetchone()
            else:
                row = db.execute("SELECT record FROM versions WHERE name = ? AND version = ?", (name, version)).fetchone()
        if row is None:
            raise NotFoundError(self._missing(name, version))
        return json.loads(row[0])

    def resolve(self, ref: str) -> dict[str, Any]:
        """The record a ``NAME[:V]`` reference points at."""
        return self.get(*parse_ref(ref))

    def list(self, name: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """Records, newest first, optionally filtered by job name and status."""
        query, args = "SELECT record FROM versions WHERE 1=1", []
        if name:
            query, args = query + " AND name = ?", [*args, name]
        if status:
            query, args = query + " AND status = ?", [*args, status]
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY created DESC, version DESC", args).fetchall()
        return [json.loads(r[0]) for r in rows]

    def versions(self, name: str) -> list[dict[str, Any]]:
        """Every version of job ``name``, oldest first; NotFoundError for an unknown job."""
        records = sorted(self.list(name=name), key=lambda r: r["version"])
        if not records:
            raise NotFoundError(self._missing(name, None))
        return records

    def update(self, name: str, version: int, status: str | None = None, reason: str | None = None,
               **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into a live record and, with ``status``, move it to that state.

        Moving state appends to the status history and adds the time spent in the state being
        left to ``timings`` (so staging/running/uploading durations need no extra bookkeeping).
        Raises :class:`RecordFrozen` once the record is terminal."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        with self._transaction() as db:
            row = db.execute("SELECT record FROM versions WHERE name = ? AND version = ?", (name, version)).fetchone()
            if row is None:
                raise NotFoundError(self._missing(name, version))
            record = json.loads(row[0])
            if record["status"] in TERMINAL:
                raise RecordFrozen(f"{name}:{version} is {record['status']}; its record can no longer change")
            record.update(fields)
            if status is not None:
                now = time.time()
                last = record["status_history"][-1]
                record["timings"][last["status"]] = round(record["timings"].get(last["status"], 0) + now - last["at"], 3)
                entry = {"status": status, "at": now}
                if reason:
                    entry["reason"] = reason
                record["status_history"].append(entry)
                record["status"] = status
                if status in ("failed", "stopped") and reason:
                    record["failure_reason"] = reason
            db.execute("UPDATE versions SET status = ?, record = ? WHERE name = ? AND version = ?",
                       (record["status"], json.dumps(record), name, version))
        return record

    def _missing(self, name: str, version: int | None) -> str:
        with self._connect() as db:
            known = [r[0] for r in db.execute("SELECT version FROM versions WHERE name = ? ORDER BY version", (name,))]
        if not known:
            return f"no job named '{name}' (see: faceops job list)"
        return f"{name}:{version} does not exist; versions of {name}: {', '.join(map(str, known))}"


def workdir(record: dict[str, Any]) -> Path:
    """The local folder of a version: logs, the container-contract folders, local outputs."""
    return home() / "jobs" / record["name"] / str(record["version"])
