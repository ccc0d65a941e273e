"""``faceops store migrate --to URL``: copy a personal history (every finished version's record,
and with a team store its files under the artifact root) into another store, typically the
team's PostgreSQL.

Each job's versions are appended after the versions the target already has, oldest first, so a
copied version may get a new number; its parent is renumbered with it and its record keeps
``origin`` (this home's id and the old number) and ``folder`` (where its files still are here,
untouched). ``origin`` is what makes running it again change nothing: a version already copied
is found and skipped. A version still running is skipped with a note, to be copied by a later
run once it has ended (its supervisor writes to the store it started with).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from jobs import artifacts
from jobs.core import storage
from jobs.core.config import home
from jobs.core.errors import NotFoundError, SpecError
from jobs.store import (TERMINAL, PostgresStore, Store, sqlite_path, home_id, is_shared, shown, who, workdir)


@dataclass
class Migration:
    """What a migration did: ``copied`` (old ref -> new ref), ``present`` (already there),
    ``skipped`` (still running)."""

    copied: list[tuple[str, str]] = field(default_factory=list)
    present: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def open_store(url: str) -> Store:
    """The store at ``url`` (a SQLite file is created at the current schema if new)."""
    return PostgresStore(url) if is_shared(url) else Store(sqlite_path(url))


def migrate(source: Store, url: str, say: Callable[[str], None] = lambda _: None) -> Migration:
    """Copy every finished version of ``source`` into the store at ``url`` (see the module)."""
    target = open_store(url)
    if getattr(target, "where", None) == source.where:
        raise SpecError(f"--to {shown(url)} is the store faceops uses now; give the team store's URL")
    target._ready()
    records = sorted(source.list(), key=lambda r: (r["name"], r["version"]))
    base = artifacts.root()
    if target.shared and base is None and any(r["backend"] == "local" for r in records):
        artifacts.require(target.where)
    done = Migration()
    for name in dict.fromkeys(r["name"] for r in records):
        _copy_job(target, [r for r in records if r["name"] == name], base if target.shared else None, done, say)
    return done


def _copy_job(target: Store, records: list[dict[str, Any]], base: str | None, done: Migration,
              say: Callable[[str], None]) -> None:
    """Append one job's versions to ``target`` in one transaction holding the job's lock."""
    here, name = home_id(), records[0]["name"]
    shared = []  # the target records of this home's versions, to have their files shared
    with target._transaction(name) as db:
        rows = target._rows(db, "SELECT version, record FROM versions WHERE name = :name ORDER BY version", name=name)
        latest = rows[-1][0] if rows else 0
        origins = {}
        for _, text in rows:
            stored = target._decode(text)
            origin = stored.get("origin") or {}
            origins[(origin.get("home_id"), origin.get("version"))] = stored
        numbers: dict[int, int] = {}
        for record in records:
            ref = f"{name}:{record['version']}"
            if (here, record["version"]) in origins:
                stored = origins[(here, record["version"])]
                numbers[record["version"]] = stored["version"]
                done.present.append((ref, f"{name}:{stored['version']}"))
                shared.append(stored)
                continue
            if record["status"] not in TERMINAL:
                done.skipped.append(ref)
                say(f"skipped {ref}: it is {record['status']}; migrate again once it has ended")
                continue
            latest += 1
            numbers[record["version"]] = latest
            copy = {**{k: v for k, v in who().items() if k != "faceops_version"}, **record, "version": latest,
                    "parent": numbers.get(record["parent"]) if record["parent"] is not None else None,
                    "home_id": here, "folder": workdir(record).relative_to(home()).as_posix(),
                    "origin": {"home_id": here, "version": record["version"]}}
            target._insert(db, copy)
            shared.append(copy)
            done.copied.append((ref, f"{name}:{latest}"))
            say(f"copied {ref} -> {name}:{latest}")
    for record in shared if base else []:
        _share_files(record, base)


def _share_files(record: dict[str, Any], base: str) -> None:
    """Upload a copied version's files and code bundle, unless a previous run already did."""
    try:
        storage.list(artifacts.version_uri(record, base))
        return
    except NotFoundError:
        pass
    bundle = home() / "bundles" / f"{record['code']['hash']}.tar.gz"
    if bundle.exists():
        artifacts.upload_bundle(bundle, record["code"]["hash"], base)
    artifacts.upload(record, base=base)
