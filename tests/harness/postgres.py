"""A real PostgreSQL server for tests and benchmarks: Debian's ``postgresql`` package, a cluster
initialised in a temporary folder, listening on a loopback port (and a private socket folder),
trust authentication for loopback only. PostgreSQL refuses to run as root, so under root the
cluster belongs to ``nobody`` and its programs run through ``setpriv`` (which execs, so the
process the harness stops is the server itself)."""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tests.harness.net import free_port
from tests.harness.process import running

# How long initdb and the server's start may take on a loaded machine.
INITDB_SECONDS = 120
START_SECONDS = 60
USER = "faceops"


@dataclass(frozen=True)
class PostgresServer:
    """Where the test server listens; :meth:`database` makes a fresh database for one test."""

    host: str
    port: int

    def url(self, database: str = "postgres") -> str:
        """The ``store.url`` of ``database`` on this server."""
        return f"postgresql://{USER}@{self.host}:{self.port}/{database}"

    def database(self) -> str:
        """A new empty database's URL (each test its own, so state never leaks between tests)."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(host=self.host, port=self.port, user=USER, dbname="postgres", autocommit=True,
                             connect_timeout=10) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def postgres_bin() -> Path | None:
    """The newest installed ``/usr/lib/postgresql/N/bin`` (Debian's layout), if any."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def _as_owner(owner: str | None) -> list[str]:
    """The prefix that runs a program as the cluster's owner (nothing when that is us)."""
    if owner is None:
        return []
    return ["setpriv", f"--reuid={owner}", f"--regid={pwd.getpwnam(owner).pw_gid}", "--clear-groups"]


@contextmanager
def running_postgres(root: Path | None = None, port: int | None = None) -> Iterator[PostgresServer]:
    """A PostgreSQL server on 127.0.0.1 (``port``, or a free one) with its cluster in a new
    temporary folder (under ``root`` if given), removed afterwards. RuntimeError saying why when
    PostgreSQL is not installed or does not start."""
    bindir = postgres_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql; see scripts/setup-dev.sh)")
    owner = "nobody" if os.geteuid() == 0 else None
    if owner and not shutil.which("setpriv"):
        raise RuntimeError("running as root and setpriv (util-linux) is missing, so postgres cannot drop to nobody")
    folder = Path(tempfile.mkdtemp(prefix="faceops-pg-", dir=root))
    try:
        data, sockets = folder / "data", folder / "sockets"
        sockets.mkdir()
        if owner:
            folder.chmod(0o755)
            for path in (folder, sockets):
                shutil.chown(path, owner)
        init = subprocess.run([*_as_owner(owner), str(bindir / "initdb"), "-D", str(data), "-U", USER,
                               "--auth=trust", "-E", "UTF8", "--no-sync"],
                              capture_output=True, text=True, timeout=INITDB_SECONDS)
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {(init.stderr or init.stdout)[-1000:]}")
        port = port or free_port()
        command = [*_as_owner(owner), str(bindir / "postgres"), "-D", str(data), "-p", str(port),
                   "-k", str(sockets), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                   "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=200"]
        server = PostgresServer("127.0.0.1", port)
        with running(command, folder / "postgres.log", lambda: _answers(server), timeout=START_SECONDS, grace=10):
            yield server
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _answers(server: PostgresServer) -> bool:
    """True once the server accepts a query."""
    import psycopg

    with psycopg.connect(host=server.host, port=server.port, user=USER, dbname="postgres", connect_timeout=2) as db:
        return db.execute("SELECT 1").fetchone() == (1,)
