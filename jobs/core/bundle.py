"""Code bundles: the job's code shipped as a small hash-addressed tarball instead of being baked
into a multi-GB image, so changing one line of training code never rebuilds or pushes an image.

The tarball is deterministic (sorted names, zeroed times and owners), so the same code always has
the same hash and a version record's ``code.hash`` says exactly what ran.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from jobs.core.config import home

EXCLUDED_DIRS = {".git", "__pycache__", ".venv", "venv", ".pytest_cache", "node_modules", "build", "dist"}
EXCLUDED_SUFFIXES = (".pyc", ".pyo", ".egg-info", ".swp")
# The faceops packages a built-in task's entry point needs (`python -m train.recognition`, ...).
FACEOPS_CODE = ("cli.py", "jobs", "train", "inference", "images")


@dataclass(frozen=True)
class Bundle:
    """A stored bundle: its tarball, content hash (sha256 of the tarball), size and file count."""

    path: Path
    sha256: str
    size: int
    files: int


def faceops_root() -> Path:
    """The folder that holds the faceops packages (the source tree, or site-packages)."""
    return Path(__file__).resolve().parents[2]


def build_bundle(root: Path, include: Sequence[str] | None = None, store: bool = True) -> Bundle:
    """Pack ``root`` (or only its entries named in ``include``) into a deterministic tarball.

    With ``store`` the tarball is kept as ``$FACEOPS_HOME/bundles/<sha256>.tar.gz`` (written once,
    reused by every version with the same code); without it, it goes to a temporary file, for
    ``--dry-run`` which must not touch the state folder."""
    root = Path(root).resolve()
    if not root.is_dir():
        from jobs.core.errors import SpecError

        raise SpecError(f"code folder {root} does not exist")
    raw = io.BytesIO()
    count = 0
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in _files(root, include):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(root).as_posix())
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            info.mode = 0o755 if info.mode & 0o111 else 0o644
            with open(path, "rb") as fh:
                tar.addfile(info, fh)
            count += 1
    packed = io.BytesIO()
    with gzip.GzipFile(fileobj=packed, mode="wb", mtime=0, compresslevel=6) as gz:
        gz.write(raw.getvalue())
    data = packed.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    if store:
        folder = home() / "bundles"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{digest}.tar.gz"
    else:
        target = Path(tempfile.mkdtemp(prefix="faceops-bundle-")) / f"{digest}.tar.gz"
    if not target.exists():
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
    return Bundle(path=target, sha256=digest, size=len(data), files=count)


def stored_bundle(sha256: str) -> Bundle:
    """The bundle with hash ``sha256`` from the state folder (``job rerun`` reuses the parent's)."""
    path = home() / "bundles" / f"{sha256}.tar.gz"
    if not path.exists():
        from jobs.core.errors import NotFoundError

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


def _files(root: Path, include: Sequence[str] | None) -> Iterator[Path]:
    tops = [root / name for name in include] if include else [root]
    for top in tops:
        if top.is_file():
            yield top
        elif top.is_dir():
            for path in sorted(top.rglob("*")):
                rel = path.relative_to(root).parts
                if any(part in EXCLUDED_DIRS or part.endswith(EXCLUDED_SUFFIXES) for part in rel):
                    continue
                if path.is_file() and not path.is_symlink():
                    yield path
