"""Code bundles: the job's code shipped as a small hash-addressed tarball instead of being baked
into a multi-GB image, so changing one line of training code never rebuilds or pushes an image.

The tarball is deterministic (sorted names, zeroed times and owners), so the same code always has
the same hash and a version record's ``code.hash`` says exactly what ran. It is streamed to disk
(memory stays bounded whatever the folder holds), honours ``.gitignore`` and ``.faceopsignore``,
skips virtual environments, caches and faceops state folders (`$FACEOPS_HOME`), and a folder over ``bundle.max_bytes`` is refused before
a byte of it is read. YAML files go in with the values of secret-looking keys blanked out.
"""
from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator, Sequence

from jobs.core.config import home, is_state_folder, setting
from jobs.core.errors import NotFoundError, SpecError, StorageError
from jobs.core.secrets import redact_yaml

EXCLUDED_DIRS = {".git", "__pycache__", ".venv", "venv", ".pytest_cache", "node_modules", "build", "dist",
                 ".mypy_cache", ".ruff_cache", ".tox", ".nox", ".cache", ".ipynb_checkpoints", ".hg", ".svn"}
EXCLUDED_SUFFIXES = (".pyc", ".pyo", ".egg-info", ".swp")
IGNORE_FILES = (".gitignore", ".faceopsignore")
DEFAULT_MAX_BYTES = 200 * 1024 * 1024
STALE_SECONDS = 3600.0  # a temporary bundle this old belongs to a submit that was killed
YAML_SUFFIXES = (".yaml", ".yml")
# The faceops packages a built-in task's entry point needs (`python -m train.recognition`, ...).
FACEOPS_CODE = ("cli.py", "jobs", "train", "inference", "images")


@dataclass(frozen=True)
class Bundle:
    """A bundle: its tarball (where it is, or would be, stored), content hash (sha256 of the
    tarball), size, file count, and the biggest folders of what was packed (for --dry-run)."""

    path: Path
    sha256: str
    size: int
    files: int
    source_bytes: int = 0
    biggest: tuple[tuple[str, int], ...] = field(default=())
    vanished: tuple[str, ...] = field(default=())


def faceops_root() -> Path:
    """The folder that holds the faceops packages (the source tree, or site-packages)."""
    return Path(__file__).resolve().parents[2]


def faceops_pythonpath() -> str:
    """``PYTHONPATH`` for a process of ours (a supervisor, a reaper) that imports faceops from
    :func:`faceops_root` wherever the caller found it, keeping the caller's own entries."""
    return os.pathsep.join(p for p in (str(faceops_root()), os.environ.get("PYTHONPATH")) if p)


def max_bytes() -> int:
    """The largest code folder faceops packs (``bundle.max_bytes`` / ``FACEOPS_BUNDLE_MAX_BYTES``)."""
    return int(setting("bundle", "max_bytes", ("FACEOPS_BUNDLE_MAX_BYTES",), DEFAULT_MAX_BYTES))


def build_bundle(root: Path, include: Sequence[str] | None = None, store: bool = True) -> Bundle:
    """Pack ``root`` (or only its entries named in ``include``) into a deterministic tarball.

    With ``store`` the tarball is kept as ``$FACEOPS_HOME/bundles/<sha256>.tar.gz`` (written once,
    reused by every version with the same code); without it, it goes to a temporary folder the
    caller owns. Concurrent builders write uniquely named temporary files, so none trips over
    another's. Raises SpecError (naming the size and the biggest folders) for a folder over
    :func:`max_bytes`, before reading any file."""
    root, files, total, biggest = _survey(root, include)
    folder = home() / "bundles" if store else Path(tempfile.mkdtemp(prefix="faceops-bundle-"))
    folder.mkdir(parents=True, exist_ok=True)
    if store:
        remove_stale_temporaries()
    fd, name = tempfile.mkstemp(dir=folder, prefix=".bundle.", suffix=".tmp")
    tmp = Path(name)
    vanished: list[str] = []
    try:
        with os.fdopen(fd, "wb") as out:
            digest, size = _pack(root, files, out, vanished)
        target = folder / f"{digest}.tar.gz"
        if target.exists():
            tmp.unlink()
        else:
            os.replace(tmp, target)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(folder).free
            raise StorageError(f"no space left on device (ENOSPC) writing the code bundle of {root} in {folder} "
                               f"({free} bytes free on that disk); free space there or set FACEOPS_HOME to a "
                               "bigger disk") from None
        raise
    return Bundle(path=target, sha256=digest, size=size, files=len(files) - len(vanished), source_bytes=total,
                  biggest=biggest, vanished=tuple(vanished))


def remove_stale_temporaries(older_than: float = STALE_SECONDS) -> list[Path]:
    """Remove the ``bundles/.bundle.*.tmp`` files that submits killed while packing left more
    than ``older_than`` seconds ago (a live submit's file is younger); returns what was removed."""
    folder = home() / "bundles"
    removed = []
    cutoff = time.time() - older_than
    for leftover in folder.glob(".bundle.*.tmp") if folder.is_dir() else []:
        try:
            if leftover.stat().st_mtime < cutoff:
                leftover.unlink()
                removed.append(leftover)
        except FileNotFoundError:
            continue  # another process removed it first
    return removed


def plan_bundle(root: Path, include: Sequence[str] | None = None) -> Bundle:
    """What :func:`build_bundle` would store, computed without writing anything (for --dry-run):
    the tarball is streamed into a hash only, and ``path`` is where it would be kept."""
    root, files, total, biggest = _survey(root, include)
    vanished: list[str] = []
    digest, size = _pack(root, files, None, vanished)
    return Bundle(path=home() / "bundles" / f"{digest}.tar.gz", sha256=digest, size=size,
                  files=len(files) - len(vanished), source_bytes=total, biggest=biggest, vanished=tuple(vanished))


def _survey(root: Path, include: Sequence[str] | None) -> tuple[Path, list[Path], int, tuple[tuple[str, int], ...]]:
    """The files to pack, their total size and the biggest top-level folders, from names and
    sizes only; a folder over the limit is refused here."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise SpecError(f"code folder {root} does not exist")
    files: list[Path] = []
    per_top: dict[str, int] = {}
    total, limit = 0, max_bytes()
    for path, size in _files(root, include):
        files.append(path)
        total += size
        rel = path.relative_to(root).parts
        top = rel[0] + "/" if len(rel) > 1 else "."
        per_top[top] = per_top.get(top, 0) + size
    biggest = tuple(sorted(per_top.items(), key=lambda item: -item[1])[:5])
    if total > limit:
        folders = ", ".join(f"{name} {_mb(size)}" for name, size in biggest)
        raise SpecError(f"code folder {root} holds {_mb(total)} to pack, over the {_mb(limit)} limit "
                        f"(biggest: {folders}); add what the job does not need to .faceopsignore or "
                        f".gitignore, point code: at a smaller folder, or raise bundle.max_bytes "
                        f"(FACEOPS_BUNDLE_MAX_BYTES)")
    return root, files, total, biggest


def _mb(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB"


class _HashingWriter:
    """A file-like sink that hashes (and optionally writes) what passes through it."""

    def __init__(self, out: IO[bytes] | None) -> None:
        self.out, self.hash, self.size = out, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        if self.out is not None:
            self.out.write(data)
        return len(data)

    def flush(self) -> None:
        if self.out is not None:
            self.out.flush()


def _pack(root: Path, files: list[Path], out: IO[bytes] | None, vanished: list[str]) -> tuple[str, int]:
    """Stream the deterministic tar.gz of ``files`` into ``out`` (or nowhere): (sha256, size).
    A file that disappears after the folder was surveyed (another process's temporary file) is
    left out and its relative name added to ``vanished``, so the caller can say so."""
    sink = _HashingWriter(out)
    with gzip.GzipFile(fileobj=sink, mode="wb", mtime=0, compresslevel=6, filename="") as gz:
        with tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for path in files:
                rel = path.relative_to(root).as_posix()
                try:
                    info = tar.gettarinfo(str(path), arcname=rel)
                    content = _content(path, info.size)
                except FileNotFoundError:
                    vanished.append(rel)
                    continue
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                info.mode = 0o755 if info.mode & 0o111 else 0o644
                with content:
                    info.size = _size_of(content, info.size)
                    tar.addfile(info, content)
    return sink.hash.hexdigest(), sink.size


def _content(path: Path, size: int) -> IO[bytes]:
    """What a file contributes to the tarball: a YAML file's text with secrets blanked, any
    other file opened as it is (opened before its header is written, so a file that vanished
    is noticed before anything of it went into the tarball)."""
    if path.suffix in YAML_SUFFIXES and size < 1024 * 1024:
        return io.BytesIO(redact_yaml(path.read_bytes()))
    return open(path, "rb")


def _size_of(content: IO[bytes], stated: int) -> int:
    """The size to put in the tar header: a blanked YAML text's own length, else the stat size."""
    return len(content.getvalue()) if isinstance(content, io.BytesIO) else stated


def stored_bundle(sha256: str) -> Bundle:
    """The bundle with hash ``sha256`` from the state folder (``job rerun`` reuses the parent's)."""
    path = home() / "bundles" / f"{sha256}.tar.gz"
    if not path.exists():
        raise NotFoundError(f"code bundle {sha256[:12]} is no longer in {path.parent}; rerun with --new-code")
    with tarfile.open(path) as tar:
        count = sum(1 for m in tar.getmembers() if m.isfile())
    return Bundle(path=path, sha256=sha256, size=path.stat().st_size, files=count)


def extract_bundle(bundle: Path, dest: Path) -> None:
    """Unpack a bundle into ``dest`` (emptied first)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    with tarfile.open(bundle) as tar:
        tar.extractall(dest, filter="data")


def git_state(root: Path) -> dict[str, object]:
    """Commit and dirty flag of the git tree holding ``root``, or empty when it is not in one."""
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return {}
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {"git_commit": commit.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}


class _Ignore:
    """The ignore rules of one folder (``.gitignore`` and ``.faceopsignore`` lines): ``#``
    comments, ``!`` to re-include, a leading ``/`` anchors to the folder, a trailing ``/``
    matches folders only, ``*``, ``?`` and ``**`` as git reads them."""

    def __init__(self, base: Path, lines: list[str]) -> None:
        self.base = base
        self.rules: list[tuple[re.Pattern[str], bool, bool]] = []
        for line in lines:
            line = line.rstrip("\n").rstrip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            line = line[1:] if negate else line
            dir_only = line.endswith("/")
            line = line.strip("/") if dir_only else line
            anchored = "/" in line.lstrip("/") or line.startswith("/")
            pattern = _glob_regex(line.lstrip("/"))
            regex = re.compile(pattern if anchored else f"(?:.*/)?{pattern}")
            self.rules.append((regex, negate, dir_only))

    def decide(self, path: Path, is_dir: bool) -> bool | None:
        """True: ignored, False: re-included, None: these rules say nothing."""
        rel = path.relative_to(self.base).as_posix()
        verdict = None
        for regex, negate, dir_only in self.rules:
            if dir_only and not is_dir:
                continue
            if regex.fullmatch(rel):
                verdict = not negate
        return verdict


def _glob_regex(pattern: str) -> str:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return out


def _read_ignores(folder: Path) -> _Ignore | None:
    lines: list[str] = []
    for name in IGNORE_FILES:
        try:
            lines += (folder / name).read_text(errors="replace").splitlines()
        except OSError:
            continue
    return _Ignore(folder, lines) if lines else None


def _ignored(path: Path, is_dir: bool, rules: list[_Ignore]) -> bool:
    name = path.name
    if is_dir and (name in EXCLUDED_DIRS or (path / "pyvenv.cfg").exists() or (path / "CACHEDIR.TAG").exists()):
        return True
    if name.endswith(EXCLUDED_SUFFIXES):
        return True
    verdict = False
    for rule in rules:  # outer folders first, so a nested file's rules win
        decided = rule.decide(path, is_dir)
        if decided is not None:
            verdict = decided
    return verdict


def _walk(folder: Path, rules: list[_Ignore]) -> Iterator[tuple[Path, int]]:
    """(file, size) under ``folder`` in sorted order, pruning ignored folders without entering them."""
    local = _read_ignores(folder)
    rules = [*rules, local] if local else rules
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        path = Path(entry.path)
        try:
            if entry.is_symlink():
                continue
            is_dir = entry.is_dir()
            if _ignored(path, is_dir, rules) or (is_dir and is_state_folder(path)):
                continue
            if is_dir:
                yield from _walk(path, rules)
            elif entry.is_file():
                yield path, entry.stat().st_size
        except FileNotFoundError:
            continue  # gone while the folder was walked; _pack reports what vanishes later



def _files(root: Path, include: Sequence[str] | None) -> Iterator[tuple[Path, int]]:
    rules = [r for r in [_read_ignores(root)] if r]
    tops = [root / name for name in include] if include else [root]
    for top in tops:
        if top.is_file():
            yield top, top.stat().st_size
        elif top.is_dir():
            yield from (_walk(top, []) if top == root else _walk(top, rules))
