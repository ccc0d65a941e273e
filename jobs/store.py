"""The version store: one record per job version, in SQLite (WAL) under ``$FACEOPS_HOME`` by
default, or in a PostgreSQL database a team shares (``store.url`` / ``FACEOPS_STORE_URL`` =
``postgresql://USER@HOST:PORT/DB``, see :class:`PostgresStore`).

A record is a JSON document (see :func:`new_record`) with a few columns pulled out for queries.
Records change only while a job is live: once a version reaches a terminal state the store refuses
every update, so what ``job show`` prints is what ran. Several processes (the CLI, the local
backend's supervisors, other machines on a shared store) use the store at once; each write is one
transaction that takes its lock up front (SQLite's ``BEGIN IMMEDIATE``, a PostgreSQL lock per job).

The schema is versioned (:data:`MIGRATIONS`); only ``faceops store upgrade`` moves it forward,
so a read command never alters a store and a store at an older schema is an error that says to
run it. A personal store is created at the current schema by its first submit; reading a home
that has none creates nothing.

Opening the store checks it cheaply (the SQLite header, and that an empty or missing store is not
hiding version folders that exist), so a damaged file is an error that says what to do instead of
a traceback or a silent restart at v1; :meth:`Store.check` (``faceops doctor``) reads everything.
Before a schema change a SQLite file is copied to ``store.sqlite.bak-vN``.
"""
from __future__ import annotations

import getpass
import json
import secrets
import socket
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from jobs.core.config import home, home_path, setting
from jobs.core.errors import FaceopsError, NotFoundError, SpecError
from jobs.core.files import atomic_write, write_once
from jobs.core.retry import retrying

TERMINAL = ("done", "failed", "stopped")
STATUSES = ("queued", "staging", "running", "uploading", *TERMINAL)

FACEOPS_VERSION = "0.1.0"
SQLITE_HEADER = b"SQLite format 3\x00"
COLUMNS = ("name", "version", "parent", "status", "created", "record", "user_name", "host")
# The schema's steps, in order: MIGRATIONS[i] takes a store from schema i to i + 1. ``{float}``
# is the dialect's double type (SQLite's REAL is one; PostgreSQL's REAL is single precision).
MIGRATIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("the versions table", (
        """CREATE TABLE IF NOT EXISTS versions (
            name    TEXT NOT NULL,
            version INTEGER NOT NULL,
            parent  INTEGER,
            status  TEXT NOT NULL,
            created {float} NOT NULL,
            record  TEXT NOT NULL,
            PRIMARY KEY (name, version))""",
    )),
    ("who and where: user and host columns, an index for newest-first listing", (
        "ALTER TABLE versions ADD COLUMN user_name TEXT",
        "ALTER TABLE versions ADD COLUMN host TEXT",
        "CREATE INDEX IF NOT EXISTS versions_created ON versions (created DESC, version DESC)",
    )),
)
SCHEMA_VERSION = len(MIGRATIONS)
# The stores (by where) this process found at the current schema; only an upgrade changes that.
_READY: set[str] = set()
# How many versions `job list` shows unless asked for more: a team store holds many thousands.
LIST_LIMIT = 50
LOCK_SECONDS = 30  # how long a command waits for another faceops process's write to the store
WAL_TRIES = 11  # waits of 0.02 s doubling: under 20.5 s in all, inside LOCK_SECONDS

LATEST = object()  # "the job's latest version", resolved inside the transaction that needs it


class StoreError(FaceopsError):
    """The version store is damaged or unreadable; the message says what to do."""


class StoreUnreachable(StoreError):
    """The store's database server did not answer (within :data:`CONNECT_SECONDS`)."""


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


def store_url() -> str:
    """Where the version store is: ``store.url`` / ``FACEOPS_STORE_URL``, by default the
    embedded SQLite file ``$FACEOPS_HOME/store.sqlite``."""
    return setting("store", "url", ("FACEOPS_STORE_URL",)) or f"sqlite:///{home_path() / 'store.sqlite'}"


def is_shared(url: str) -> bool:
    """True for a store other machines use too (a database server), False for a SQLite file."""
    return url.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


def sqlite_path(url: str) -> Path:
    """The file of a ``sqlite:///PATH`` URL; any other scheme that is not PostgreSQL is a
    usage error naming the setting."""
    if not url.startswith("sqlite:///"):
        raise SpecError(f"store.url / FACEOPS_STORE_URL is {url.split('://')[0]}://...; expected sqlite:///PATH "
                        "or postgresql://USER@HOST:PORT/DB")
    return Path(url[len("sqlite:///"):]).expanduser()


def who() -> dict[str, str]:
    """Who submits from where, for a record: user name, host name and faceops version."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name (a container's anonymous uid)
        user = "unknown"
    return {"user": user, "host": socket.gethostname(), "faceops_version": FACEOPS_VERSION}


def is_here(record: dict[str, Any]) -> bool:
    """True when ``record`` was submitted from this machine (or before records said where), so
    its local processes can be checked here."""
    return record.get("host") in (None, socket.gethostname())


def _use_wal(db: sqlite3.Connection) -> None:
    """Put the store in WAL mode, so readers never wait for a writer.

    Two connections switching a new file's mode at once each hold the shared lock the other's
    switch must wait out, and SQLite answers the loser "locked" at once instead of calling its
    busy handler (two first submits at once failed this way). The switch is tried again with the
    project's backoff, WAL_TRIES times over at most 20 s; once the file is in WAL mode the pragma
    only reads the mode."""
    retrying(lambda: db.execute("PRAGMA journal_mode=WAL"),
             lambda exc: isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc),
             attempts=WAL_TRIES, delay=0.02)


def next_version(record: dict[str, Any], latest: int | None, parent_is_latest: bool) -> dict[str, Any]:
    """``record`` as the version after ``latest``: queued now, saying who submitted it."""
    now = time.time()
    record = {**who(), **record, "home_id": home_id(), "version": (latest or 0) + 1, "created": now, "status": "queued",
              "status_history": [{"status": "queued", "at": now}]}
    if parent_is_latest:
        record["parent"] = latest
    return record


def moved(record: dict[str, Any], status: str | None, reason: str | None, fields: dict[str, Any]) -> dict[str, Any]:
    """``record`` with ``fields`` merged and, with ``status``, moved to that state: the status
    history grows and the time spent in the state being left is added to ``timings`` (so
    staging/running/uploading durations need no extra bookkeeping). RecordFrozen once terminal."""
    if record["status"] in TERMINAL:
        raise RecordFrozen(f"{record['name']}:{record['version']} is {record['status']}; its record can no longer change")
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
    return record


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``NAME:V`` -> (NAME, V); ``NAME`` -> (NAME, None) meaning the latest version."""
    name, sep, version = ref.partition(":")
    if not sep:
        return name, None
    if not version.isdigit():
        raise NotFoundError(f"{ref}: expected NAME or NAME:VERSION with a number, like recog:3")
    return name, int(version)


class Store:
    """Access to the version store. Cheap to create; every method opens its own transaction.

    ``Store()`` is the store :func:`store_url` names: this class for a SQLite file, a
    :class:`PostgresStore` for a PostgreSQL URL. The queries below are written once
    for both (named parameters, standard SQL); a subclass supplies connections and locks."""

    # Appended to a SELECT whose row the transaction then rewrites (SQLite's lock is the whole file).
    FOR_UPDATE = ""
    shared = False

    def __new__(cls, path: Path | None = None) -> "Store":
        if cls is Store and path is None and is_shared(store_url()):
            return object.__new__(PostgresStore)
        return object.__new__(cls)

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or sqlite_path(store_url())
        self.where = str(self.path)
        self._check_file()

    def _unborn(self) -> bool:
        """True while no store file exists yet (a new home): reads see an empty store and create
        nothing; the first submit (or ``store upgrade``) creates it at the current schema."""
        try:
            return self.path.stat().st_size == 0
        except FileNotFoundError:
            return True

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

    # -- schema ---------------------------------------------------------------------------------

    def schema_version(self) -> int:
        """The schema the store is at (0: nothing yet)."""
        with self._connect() as db:
            return db.execute("PRAGMA user_version").fetchone()[0]

    def pending(self) -> list[str]:
        """What ``faceops store upgrade`` would do, one line per migration; a store written by a
        newer faceops is an error."""
        current = self.schema_version()
        if current > SCHEMA_VERSION:
            raise StoreError(f"{self.where} was written by a newer faceops (schema {current}, this one "
                             f"knows {SCHEMA_VERSION}); upgrade faceops")
        return [f"schema {i + 1}: {MIGRATIONS[i][0]}" for i in range(current, SCHEMA_VERSION)]

    def _ready(self) -> None:
        """Refuse to use a store at another schema: only ``faceops store upgrade`` changes it.
        Checked once per store and process (an extra round trip otherwise on every call)."""
        if self.where in _READY:
            return
        due = self.pending()
        if due:
            raise StoreError(f"{self.where} is at schema {SCHEMA_VERSION - len(due)}, this faceops needs "
                             f"{SCHEMA_VERSION}; run faceops store upgrade")
        if not self._unborn():  # an empty store read from memory is not the file a submit creates
            _READY.add(self.where)

    def upgrade(self) -> list[str]:
        """Apply every pending migration, each in its own transaction, after copying an existing
        store aside (``store.sqlite.bak-vN``); returns what was done."""
        if self._unborn():
            return self._create()
        due = self.pending()
        if not due:
            return []
        with self._connect(write=True) as db:  # SQLite cannot back up from inside a write transaction
            current = db.execute("PRAGMA user_version").fetchone()[0]
            if self._columns(db):
                self._backup(db, self.path.with_name(f"{self.path.name}.bak-v{current}"))
        for step in range(SCHEMA_VERSION - len(due), SCHEMA_VERSION):
            with self._transaction() as db:
                if db.execute("PRAGMA user_version").fetchone()[0] != step:
                    continue  # another process took this step meanwhile
                for statement in MIGRATIONS[step][1]:
                    if not self._has_column(db, statement):
                        db.execute(statement.format(float="REAL"))
                db.execute(f"PRAGMA user_version = {step + 1}")
        return due

    def _create(self) -> list[str]:
        """Create a new store at the current schema in one transaction, so two first submits at
        once agree (the second finds it made); a file that already holds a table is left to
        :meth:`upgrade`. Returns the steps taken."""
        with self._transaction() as db:
            if db.execute("PRAGMA user_version").fetchone()[0] or self._columns(db):
                return []
            _create_schema(db)
        return [f"schema {i + 1}: {text}" for i, (text, _) in enumerate(MIGRATIONS)]

    def _has_column(self, db: sqlite3.Connection, statement: str) -> bool:
        """True when ``statement`` adds a column the table already has (a store whose schema
        number was lost), so the migration goes on instead of failing."""
        words = statement.split()
        return words[:4] == ["ALTER", "TABLE", "versions", "ADD"] and words[5] in self._columns(db)

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

    # -- connections ----------------------------------------------------------------------------

    def _locked(self, exc: Exception) -> StoreError:
        """The error for a store another process kept locked past our bound."""
        return StoreError(f"{self.path}: the store stayed locked by another faceops process (waited up to "
                          f"{LOCK_SECONDS} s: {exc}); try again")

    def _read_only(self, exc: Exception, write: bool) -> sqlite3.Connection:
        """A read-only connection for a full disk, where SQLite cannot create the WAL index a
        reader needs. That index is missing only when no connection is open, and the last one to
        close folded the WAL into the file, so reading the file alone reads everything."""
        if "locked" in str(exc):
            raise self._locked(exc) from None
        if "disk I/O error" not in str(exc) and "full" not in str(exc):
            raise StoreError(f"{self.path}: cannot open the store: {exc}") from None
        if write:
            raise StoreError(f"{self.path}: no space left on the disk holding $FACEOPS_HOME ({exc}); "
                             "free some space and run the command again") from None
        return sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro&immutable=1", uri=True, isolation_level=None)

    @contextmanager
    def _connect(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection; SQLite's errors about a damaged or full store become a StoreError. A
        reader of a store not created yet gets an empty one in memory, so reading creates nothing."""
        try:
            if not write and self._unborn():
                db = _empty_store()
            else:
                if write:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, timeout=LOCK_SECONDS, isolation_level=None)
                db.execute(f"PRAGMA busy_timeout={LOCK_SECONDS * 1000}")
                _use_wal(db)
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
                raise self._locked(exc) from None
            raise StoreError(f"{self.path}: the store cannot be read ({exc}); {self._advice()}") from None
        finally:
            db.close()

    @contextmanager
    def _transaction(self, name: str | None = None) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the lock up front, so read-modify-write is atomic
        across processes (SQLite locks the whole file, whatever job ``name`` it is about)."""
        with self._connect(write=True) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @staticmethod
    def _rows(db: Any, sql: str, **params: Any) -> list[tuple]:
        """Run ``sql`` (named ``:parameters``) and return every row."""
        return db.execute(sql, params).fetchall()

    # -- records --------------------------------------------------------------------------------

    def create(self, record: dict[str, Any], parent_is_latest: bool = False) -> dict[str, Any]:
        """Store ``record`` as the next version of its job (status queued) and return it.

        With ``parent_is_latest`` the parent is the job's latest version, read in this same
        transaction so parallel submits never share or skip a parent. The version's folder is
        created here too: one that already exists (left by a store that lost its records) is
        never reused, since its log and outputs belong to another run."""
        if self.where not in _READY and (self._unborn() or self.schema_version() == 0):
            self._create()  # a personal store's first version: nothing to keep, nothing to start
        self._ready()
        with self._transaction(record["name"]) as db:
            ((latest,),) = self._rows(db, "SELECT MAX(version) FROM versions WHERE name = :name", name=record["name"])
            record = next_version(record, latest, parent_is_latest)
            folder = workdir(record)
            folder.parent.mkdir(parents=True, exist_ok=True)
            try:
                folder.mkdir()
            except FileExistsError:
                raise StoreError(f"{folder} already exists but {record['name']}:{record['version']} is not in "
                                 f"{self.where}: the store has lost records; run faceops doctor") from None
            self._insert(db, record)
        return record

    def _insert(self, db: Any, *records: dict[str, Any]) -> None:
        """Write ``records`` as new rows (inside the caller's transaction), in one batch."""
        self._many(db, "INSERT INTO versions (name, version, parent, status, created, record, user_name, host) "
                       "VALUES (:name, :version, :parent, :status, :created, :record, :user, :host)",
                   [{"name": r["name"], "version": r["version"], "parent": r["parent"], "status": r["status"],
                     "created": r["created"], "record": json.dumps(r), "user": r.get("user"), "host": r.get("host")}
                    for r in records])

    @staticmethod
    def _many(db: Any, sql: str, params: list[dict[str, Any]]) -> None:
        """Run ``sql`` once per parameter set, as one batch."""
        db.executemany(sql, params)

    def get(self, name: str, version: int | None = None) -> dict[str, Any]:
        """The record of ``name:version`` (latest when version is None); NotFoundError otherwise."""
        self._ready()
        with self._connect() as db:
            if version is None:
                rows = self._rows(db, "SELECT record FROM versions WHERE name = :name ORDER BY version DESC LIMIT 1",
                                  name=name)
            else:
                rows = self._rows(db, "SELECT record FROM versions WHERE name = :name AND version = :version",
                                  name=name, version=version)
        if not rows:
            raise NotFoundError(self._missing(name, version))
        return self._decode(rows[0][0])

    def _decode(self, text: str) -> dict[str, Any]:
        try:
            record = json.loads(text)
        except ValueError as exc:
            raise StoreError(f"{self.where}: a record is damaged ({exc}); {self._advice()}") from None
        if not isinstance(record, dict) or "spec" not in record:
            raise StoreError(f"{self.where}: a record is damaged (not a version record); {self._advice()}")
        return record

    def resolve(self, ref: str) -> dict[str, Any]:
        """The record a ``NAME[:V]`` reference points at."""
        return self.get(*parse_ref(ref))

    def list(self, name: str | None = None, status: str | None = None, user: str | None = None,
             host: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Records, newest first, optionally filtered by job name, status, user and host, at most
        ``limit`` of them."""
        self._ready()
        query, args = "SELECT record FROM versions WHERE 1=1", {}
        for column, value in (("name", name), ("status", status), ("user_name", user), ("host", host)):
            if value:
                query, args = query + f" AND {column} = :{column}", {**args, column: value}
        query += " ORDER BY created DESC, version DESC"
        if limit is not None:
            query, args = query + " LIMIT :limit", {**args, "limit": limit}
        with self._connect() as db:
            rows = self._rows(db, query, **args)
        return [self._decode(r[0]) for r in rows]

    def versions(self, name: str) -> list[dict[str, Any]]:
        """Every version of job ``name``, oldest first; NotFoundError for an unknown job."""
        self._ready()
        with self._connect() as db:
            rows = self._rows(db, "SELECT record FROM versions WHERE name = :name ORDER BY version", name=name)
        if not rows:
            raise NotFoundError(self._missing(name, None))
        return [self._decode(r[0]) for r in rows]

    def update(self, name: str, version: int, status: str | None = None, reason: str | None = None,
               **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into a live record and, with ``status``, move it to that state (see
        :func:`moved`). Raises :class:`RecordFrozen` once the record is terminal."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        self._ready()
        with self._transaction(name) as db:
            rows = self._rows(db, "SELECT record FROM versions WHERE name = :name AND version = :version"
                              + self.FOR_UPDATE, name=name, version=version)
            if not rows:
                raise NotFoundError(self._missing(name, version))
            record = moved(self._decode(rows[0][0]), status, reason, fields)
            self._rows(db, "UPDATE versions SET status = :status, record = :record WHERE name = :name AND version = :version",
                       status=record["status"], record=json.dumps(record), name=name, version=version)
        return record

    def check(self) -> list[str]:
        """The full check behind ``faceops doctor``: a migration that is due, the database's own
        integrity check, every record readable and consistent with its row, and every version
        folder backed by a record."""
        due = self.pending()
        if due:
            return [f"{self.where}: an upgrade is due ({'; '.join(due)}); run faceops store upgrade"]
        problems = self._integrity()
        with self._connect() as db:
            rows = self._rows(db, "SELECT name, version, status, record FROM versions")
        known = set()
        for name, version, status, text in rows:
            known.add(home() / "jobs" / name / str(version))
            try:
                record = self._decode(text)
            except StoreError:
                problems.append(f"{name}:{version}: record is not readable JSON")
                continue
            known.add(workdir(record))
            if (record.get("name"), record.get("version"), record.get("status")) != (name, version, status):
                problems.append(f"{name}:{version}: record disagrees with its row")
            elif is_here(record) and not workdir(record).is_dir():
                problems.append(f"{name}:{version}: its version folder {workdir(record)} is missing "
                                "(log, checkpoints and local outputs are gone)")
        for folder in _version_folders(home()):
            if folder not in known:
                problems.append(f"{folder}: version folder without a record")
        return problems

    def _integrity(self) -> list[str]:
        """The database engine's own consistency check."""
        with self._connect() as db:
            return [f"sqlite: {row[0]}" for row in db.execute("PRAGMA integrity_check") if row[0] != "ok"]

    def _missing(self, name: str, version: int | None) -> str:
        with self._connect() as db:
            known = [r[0] for r in self._rows(db, "SELECT version FROM versions WHERE name = :name ORDER BY version",
                                              name=name)]
        if not known:
            return f"no job named '{name}' (see: faceops job list)"
        return f"{name}:{version} does not exist; versions of {name}: {', '.join(map(str, known))}"


# -- PostgreSQL (SQLAlchemy Core and psycopg 3, imported only when a store.url names a server) ---------

# Bounded waits on the server: to connect, and for a statement (a lock held by another machine).
CONNECT_SECONDS = 5
STATEMENT_SECONDS = 30
_ENGINES: dict[str, Any] = {}
_ENGINES_LOCK = threading.Lock()


def shown(url: str) -> str:
    """``url`` with any password masked, for messages."""
    scheme, sep, rest = url.partition("://")
    credentials, at, place = rest.rpartition("@")
    if at and ":" in credentials:
        credentials = credentials.split(":", 1)[0] + ":***"
    return f"{scheme}{sep}{credentials}{at}{place}"


def engine(url: str) -> Any:
    """One SQLAlchemy engine per URL and process (a small pool, connections checked before use)."""
    with _ENGINES_LOCK:
        if url not in _ENGINES:
            try:
                import sqlalchemy  # heavy (~0.5 s): only a team store loads it, never `faceops --help`
            except ImportError:
                raise FaceopsError("a PostgreSQL store needs SQLAlchemy and psycopg 3: "
                                   "pip install 'faceops[team]'") from None
            driver = "postgresql+psycopg://" + url.split("://", 1)[1]
            _ENGINES[url] = sqlalchemy.create_engine(
                driver, pool_size=2, max_overflow=4, pool_pre_ping=True,
                connect_args={"connect_timeout": CONNECT_SECONDS,
                              "options": f"-c statement_timeout={STATEMENT_SECONDS * 1000}",
                              "application_name": "faceops"})
        return _ENGINES[url]


class PostgresStore(Store):
    """The version store on a PostgreSQL server a team shares, through SQLAlchemy Core and the
    psycopg 3 driver (imported here only, lazily, so ``faceops --help`` stays fast).

    The queries are :class:`Store`'s; this class gives them connections and locks: a write takes
    a transaction-scoped advisory lock on the job's name first, so two machines submitting the
    same job at once are serialised and each reads the other's latest version (dense, unique
    numbers and the right parents) while other jobs go on in parallel. The schema's number lives
    in a ``schema_version`` table, moved only by ``faceops store upgrade``. A password never
    appears in a message: keep it in ``~/.pgpass`` or ``PGPASSWORD`` (libpq reads both) rather
    than in the URL, which is shown with it masked anyway."""

    FOR_UPDATE = " FOR UPDATE"
    shared = True

    def __init__(self, url: str | None = None) -> None:
        self.url = url or store_url()
        self.where = shown(self.url)

    def _advice(self) -> str:
        return "run faceops doctor for details"

    def _unborn(self) -> bool:
        return False  # the database exists on the server; only `faceops store upgrade` makes its tables

    def _create(self) -> list[str]:
        return []  # a team's schema is made by `faceops store upgrade` alone, never by a submit

    @contextmanager
    def _connect(self, write: bool = False) -> Iterator[Any]:
        """A connection in a transaction (committed when the block ends); the driver's errors
        become a StoreError that says which server and what to do."""
        from sqlalchemy import exc as errors  # heavy (~0.5 s): only a team store loads it

        try:
            with engine(self.url).begin() as db:
                yield db
        except errors.OperationalError as exc:
            if _is_connect_failure(exc):
                raise StoreUnreachable(f"the store database {self.where} did not answer within {CONNECT_SECONDS}s "
                                       f"({_first_line(exc)}); start it or check store.url / FACEOPS_STORE_URL, "
                                       "then run the command again") from None
            raise StoreError(f"{self.where}: {_first_line(exc)}") from None
        except errors.DBAPIError as exc:
            raise StoreError(f"{self.where}: {_first_line(exc)}") from None

    @contextmanager
    def _transaction(self, name: str | None = None) -> Iterator[Any]:
        """A write transaction holding the job's lock (or, without ``name``, the schema's) until
        it ends, so read-modify-write is atomic across machines."""
        from sqlalchemy import text

        with self._connect(write=True) as db:
            db.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"faceops:{name or ''}"})
            yield db

    @staticmethod
    def _rows(db: Any, sql: str, **params: Any) -> list[tuple]:
        from sqlalchemy import text

        result = db.execute(text(sql), params)
        return [tuple(row) for row in result.fetchall()] if result.returns_rows else []

    @staticmethod
    def _many(db: Any, sql: str, params: list[dict[str, Any]]) -> None:
        from sqlalchemy import text

        db.execute(text(sql), params)

    def schema_version(self) -> int:
        with self._connect() as db:
            present = self._rows(db, "SELECT to_regclass('schema_version') IS NOT NULL")[0][0]
            if not present:
                return 0
            return self._rows(db, "SELECT COALESCE(MAX(version), 0) FROM schema_version")[0][0]

    def upgrade(self) -> list[str]:
        """Apply every pending migration in one transaction under the schema lock (other
        machines' upgrades wait, then find nothing to do)."""
        due = self.pending()
        if not due:
            return []
        with self._transaction() as db:
            self._rows(db, "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
                           "applied DOUBLE PRECISION NOT NULL)")
            (current,) = self._rows(db, "SELECT COALESCE(MAX(version), 0) FROM schema_version")[0]
            for step in range(current, SCHEMA_VERSION):
                for statement in MIGRATIONS[step][1]:
                    self._rows(db, statement.format(float="DOUBLE PRECISION"))
                self._rows(db, "INSERT INTO schema_version VALUES (:version, extract(epoch from now()))",
                           version=step + 1)
        return due

    def _integrity(self) -> list[str]:
        """PostgreSQL checks its own pages; here: versions whose parent is missing."""
        with self._connect() as db:
            rows = self._rows(db, "SELECT v.name, v.version, v.parent FROM versions v WHERE v.parent IS NOT NULL "
                                  "AND NOT EXISTS (SELECT 1 FROM versions p WHERE p.name = v.name "
                                  "AND p.version = v.parent)")
        return [f"{name}:{version}: parent {parent} is not in the store" for name, version, parent in rows]


def _is_connect_failure(exc: Exception) -> bool:
    """True when the server could not be reached at all (as opposed to a query's failure)."""
    text = str(exc).lower()
    return any(part in text for part in ("connection refused", "could not connect", "timeout expired",
                                         "connection failed", "server closed the connection",
                                         "terminating connection", "could not receive data",
                                         "no route to host", "name or service not known"))


def _first_line(exc: Exception) -> str:
    """The driver's own message without SQLAlchemy's statement dump and links."""
    original = getattr(exc, "orig", None) or exc
    return str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__


class Outbox:
    """Updates of a running version that could not reach the store, kept in order in its folder
    (``outbox.jsonl``) and delivered when the store answers again, as the MLflow delivery does:
    a job keeps running through a lost database connection, and its final state is recorded
    once the database is back (by its supervisor, or by the next command on this machine)."""

    NAME = "outbox.jsonl"

    def __init__(self, record: dict[str, Any]) -> None:
        self.name, self.version = record["name"], record["version"]
        self.path = workdir(record) / self.NAME

    def pending(self) -> bool:
        return self.path.exists()

    def update(self, store: "Store", status: str | None = None, reason: str | None = None,
               **fields: Any) -> dict[str, Any] | None:
        """Deliver this update (after any kept before it) and return the stored record, or keep
        it and return None while the store is unreachable."""
        if not self.pending():
            try:
                return store.update(self.name, self.version, status=status, reason=reason, **fields)
            except StoreUnreachable:
                pass
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"status": status, "reason": reason, "fields": fields}, default=str) + "\n")
        return store.get(self.name, self.version) if self.flush(store) else None

    def flush(self, store: "Store") -> bool:
        """Deliver every kept update in order; True when none is left. A frozen record takes
        no more (it ended meanwhile), so those are dropped."""
        if not self.path.exists():
            return True
        entries = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        for done, entry in enumerate(entries):
            try:
                store.update(self.name, self.version, status=entry["status"], reason=entry["reason"], **entry["fields"])
            except RecordFrozen:
                pass
            except StoreUnreachable:  # keep what is left, so nothing is delivered twice
                atomic_write(self.path, "".join(json.dumps(e) + "\n" for e in entries[done:]))
                return False
        self.path.unlink(missing_ok=True)
        return True


def _empty_store() -> sqlite3.Connection:
    """An in-memory store at the current schema with no versions."""
    db = sqlite3.connect(":memory:", isolation_level=None)
    _create_schema(db)
    return db


def _create_schema(db: sqlite3.Connection) -> None:
    """Every migration at once, on a SQLite database that has none of them."""
    for _, statements in MIGRATIONS:
        for statement in statements:
            db.execute(statement.format(float="REAL"))
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _version_folders(root: Path) -> list[Path]:
    """Every ``jobs/NAME/VERSION`` folder under the state folder ``root``."""
    jobs = root / "jobs"
    if not jobs.is_dir():
        return []
    return sorted(v for job in jobs.iterdir() if job.is_dir() for v in job.iterdir() if v.name.isdigit())


def workdir(record: dict[str, Any]) -> Path:
    """The local folder of a version: logs, the container-contract folders, local outputs.

    A version this ``$FACEOPS_HOME`` created lives in ``jobs/NAME/V`` (or the folder its record
    names, for one whose number changed when ``store migrate`` copied it into a team store);
    another machine's version of a shared store gets ``shared/NAME/V``, where its files are
    fetched (:mod:`jobs.artifacts`), so it never mixes with a local folder of the same number."""
    if not is_ours(record):
        return home() / "shared" / record["name"] / str(record["version"])
    return home() / (record.get("folder") or f"jobs/{record['name']}/{record['version']}")


def is_ours(record: dict[str, Any]) -> bool:
    """True when this ``$FACEOPS_HOME`` made the version (or records did not say yet), so its
    folder is the original; another home's version has only a fetched copy here."""
    return record.get("home_id") in (None, home_id())


def home_id() -> str:
    """This ``$FACEOPS_HOME``'s random id (made on first use), which records carry so a shared
    store tells which versions have their folder here."""
    return write_once(home() / "home.id", secrets.token_hex(8).encode()).decode()
