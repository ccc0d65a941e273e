"""Which digest each pushed image reference had, so a job version can name its image by digest
(``REF@sha256:...``) even after the tag moves. Kept as one small JSON file under
``$FACEOPS_HOME``; this module imports nothing heavy because job submission calls :func:`lookup`."""
from __future__ import annotations

import json
import time
from pathlib import Path

from images.registry import split_ref
from jobs.core.config import home
from jobs.core.errors import FaceopsError
from jobs.core.files import atomic_write

FILE_NAME = "image-digests.json"


def _path() -> Path:
    return home() / FILE_NAME


def _key(ref: str) -> str:
    """One spelling per image: ``team/train`` and ``docker.io/team/train:latest`` are the same."""
    registry, repo, tag = split_ref(ref)
    return f"{registry}/{repo}:{tag}"


def load() -> dict[str, dict]:
    """Every recorded reference -> ``{"digest": ..., "pushed_at": epoch seconds}``."""
    path = _path()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise FaceopsError(f"{path}: not valid JSON; delete it and push the images again") from None
    return data if isinstance(data, dict) else {}


def record(ref: str, digest: str) -> None:
    """Remember that ``ref`` was pushed as ``digest`` (the newest push wins). The file is replaced
    atomically so a reader never sees half of it."""
    data = load()
    data[_key(ref)] = {"digest": digest, "pushed_at": round(time.time(), 3)}
    atomic_write(_path(), json.dumps(data, indent=2, sort_keys=True))


def lookup(ref: str) -> str | None:
    """The digest ``ref`` was last pushed as, or None when faceops never pushed it."""
    entry = load().get(_key(ref))
    return entry["digest"] if entry else None
