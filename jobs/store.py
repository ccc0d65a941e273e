"""The version store: one record per job version in SQLite (WAL) under ``$FACEOPS_HOME``.

A record is a JSON document (see :func:`new_record`) with a few columns pulled out for queries.
Records change only while a job is live: once a version reaches a terminal state the store refuses
every update, so what ``job show`` prints is what ran. Several processes (the CLI, the local
backend's supervisors) use the store at once; WAL and ``BEGIN IMMEDIATE`` keep them consistent.

Opening the store checks it cheaply (the SQLite header, the table's columns, and that an empty or
missing store is not hiding version folders that exist), so a damaged file is an error that says
what to do instead of a traceback or a silent restart at v1; :meth:`Store.check` (``faceops
doctor``) reads everything. Before a schema change the file is copied to ``store.sqlite.bak-vN``.
"""
from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from jobs.core.config import STORE_NAME, home
from jobs.core.errors import FaceopsError, NotFoundError
from jobs.core.files import atomic_write

TERMINAL = ("done", "failed", "stopped")
STATUSES = ("queued", "staging", "running", "uploading", *TERMINAL)

SQLITE_HEADER = b"SQLite format 3\x00"
COLUMNS = ("name", "version", "parent", "status", "created", "record")
# The schema's version (SQLite's user_version); each step up is taken after a backup.
SCHEMA_VERSION = 1
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
        self.path = path or home() / STORE_NAME
        self._check_file()
        with self._connect() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version and not self._columns(db):
                # A store faceops wrote whose table is gone: making a new empty one would answer
                # "no jobs yet" over lost versions, so nothing is created or changed.
                raise StoreError(f"{self.path}: the versions table is missing from this store (schema {version}); "
                                 f"{self._advice()}")
            if version != SCHEMA_VERSION or not self._columns(db):
                self._migrate()
            elif self._columns(db) != COLUMNS:
                raise StoreError(f"{self.path}: the versions table has columns {', '.join(self._columns(db))}, "
                                 f"expected {', '.join(COLUMNS)}; {self._advice()}")

    def _check_file(self) -> None:
        """The cheap check on open: a real SQLite file, and not an empty one beside old versions."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size == 0:
            orphans = _version_folders(self.path.parent)
            if orphans:
                raise StoreError(f"{self.path} is missing or empty, but {len(orphans)} version folders exist under "
                                 f"{self.path.parent / 'jobs'} (e.g. {orphans[0]}): the store was lost; "
                                 f"{self._advice()}")
            return
        with open(self.path, "rb") as fh:
            header = fh.read(len(SQLITE_HEADER))
        if header != SQLITE_HEADER:
            raise StoreError(f"{self.path} is not a SQLite database (damaged or overwritten); {self._advice()}")

    def _advice(self) -> str:
        backups = sorted(self.path.parent.glob(self.path.name + ".bak-*"))
        restore = f"restore {backups[-1]} to {self.path}" if backups else f"move {self.path} aside"
        return f"{restore}, or run faceops doctor for details"

    @staticmethod
    def _columns(db: sqlite3.Connection) -> tuple[str, ...]:
        return tuple(row[1] for row in db.execute("PRAGMA table_info(versions)"))

    def _migrate(self) -> None:
        """Bring the schema to :data:`SCHEMA_VERSION`, copying an existing store aside first."""
        with self._connect() as db:  # SQLite cannot back up from inside a write transaction
            current = db.execute("PRAGMA user_version").fetchone()[0]
            if self._columns(db) and current < SCHEMA_VERSION:
                self._backup(db, self.path.with_name(f"{self.path.name}.bak-v{current}"))
        with self._transaction() as db:
            current = db.execute("PRAGMA user_version").fetchone()[0]
            if current > SCHEMA_VERSION:
                raise StoreError(f"{self.path} was written by a newer faceops (schema {current}, this one "
                                 f"knows {SCHEMA_VERSION}); upgrade faceops")
            db.execute(SCHEMA)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @staticmethod
    def _backup(db: sqlite3.Connection, target: Path) -> None:
        """A consistent copy of the store at ``target`` (written aside, then renamed in)."""
        def write(path: Path) -> None:
            copy = sqlite3.connect(path)
            try:
                db.backup(copy)
            finally:
                copy.close()

        atomic_write(target, write)

    def _read_only(self, exc: Exception, write: bool) -> sqlite3.Connection:
        """A read-only connection for a full disk, where SQLite cannot create the WAL index a
        reader needs. That index is missing only when no connection is open, and the last one to
        close folded the WAL into the file, so reading the file alone reads everything."""
        if "disk I/O error" not in str(exc) and "full" not in str(exc):
            raise StoreError(f"{self.path}: cannot open the store: {exc}") from None
        if write:
            raise StoreError(f"{self.path}: no space left on the disk holding $FACEOPS_HOME ({exc}); "
                             "free some space and run the command again") from None
        return sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro&immutable=1", uri=True, isolation_level=None)

    @contextmanager
    def _connect(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection; SQLite's errors about a damaged or full store become a StoreError."""
        try:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA busy_timeout=30000")
            db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:
            db = self._read_only(exc, write)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open the store: {exc}") from None
        try:
            yield db
        except sqlite3.DatabaseError as exc:
            if "full" in str(exc):
                raise StoreError(f"{self.path}: no space left on the disk holding $FACEOPS_HOME ({exc}); "
                                 "free some space and run the command again") from None
            if "locked" in str(exc) or "busy" in str(exc):
                raise StoreError(f"{self.path}: the store stayed locked by another faceops process ({exc}); "
                                 "try again") from None
            raise StoreError(f"{self.path}: the store cannot be read ({exc}); {self._advice()}") from None
        finally:
            db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the lock up front, so read-modify-write is atomic
        across processes."""
        with self._connect(write=True) as db:
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
        return self._decode(row[0])

    def _decode(self, text: str) -> dict[str, Any]:
        try:
            record = json.loads(text)
        except ValueError as exc:
            raise StoreError(f"{self.path}: a record is damaged ({exc}); {self._advice()}") from None
        if not isinstance(record, dict) or "spec" not in record:
            raise StoreError(f"{self.path}: a record is damaged (not a version record); {self._advice()}")
        return record

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
        return [self._decode(r[0]) for r in rows]

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
            record = self._decode(row[0])
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

    def check(self) -> list[str]:
        """The full check behind ``faceops doctor``: SQLite's own integrity check, every record
        readable and consistent with its row, and every version folder backed by a record."""
        problems: list[str] = []
        with self._connect() as db:
            problems += [f"sqlite: {row[0]}" for row in db.execute("PRAGMA integrity_check") if row[0] != "ok"]
            rows = db.execute("SELECT name, version, status, record FROM versions").fetchall()
        known = set()
        for name, version, status, text in rows:
            known.add((name, version))
            try:
                record = self._decode(text)
            except StoreError:
                problems.append(f"{name}:{version}: record is not readable JSON")
                continue
            if (record.get("name"), record.get("version"), record.get("status")) != (name, version, status):
                problems.append(f"{name}:{version}: record disagrees with its row")
            elif not workdir(record).is_dir():
                problems.append(f"{name}:{version}: its version folder {workdir(record)} is missing "
                                "(log, checkpoints and local outputs are gone)")
        for folder in _version_folders(self.path.parent):
            if (folder.parent.name, int(folder.name)) not in known:
                problems.append(f"{folder}: version folder without a record")
        return problems

    def _missing(self, name: str, version: int | None) -> str:
        with self._connect() as db:
            known = [r[0] for r in db.execute("SELECT version FROM versions WHERE name = ? ORDER BY version", (name,))]
        if not known:
            return f"no job named '{name}' (see: faceops job list)"
        return f"{name}:{version} does not exist; versions of {name}: {', '.join(map(str, known))}"


def _version_folders(root: Path) -> list[Path]:
    """Every ``jobs/NAME/VERSION`` folder under the state folder ``root``."""
    jobs = root / "jobs"
    if not jobs.is_dir():
        return []
    return sorted(v for job in jobs.iterdir() if job.is_dir() for v in job.iterdir() if v.name.isdigit())


def workdir(record: dict[str, Any]) -> Path:
    """The local folder of a version: logs, the container-contract folders, local outputs."""
    return home() / "jobs" / record["name"] / str(record["version"])
