"""Batch jobs that scale out: the gallery and identify tasks on ``instance_count: N`` instances.

Each instance takes its share of the images and writes a *part* of the output under
``<output>/parts/<part>/`` (what one instance would write for those images, plus ``part.json``
with its summary); a merge then makes the parts one output, one summary and one set of metrics,
as a single instance over all the images would have made them (:func:`inference.gallery.merge_galleries`,
:func:`inference.identify.merge_reports`).

Which share is decided without the instances talking to each other: an item belongs to shard
``index`` of ``count`` when the SHA-256 of its stable key (the image's name relative to the
input, the same on every instance) is ``index`` modulo ``count``. The backend says the shard
through the contract's ``FACEOPS_SHARD_INDEX``/``COUNT``/``PART`` (:func:`jobs.core.contract.shard_from_env`):
the local backend and ModelArts give every instance the whole input and an index; SageMaker's
``ShardedByS3Key`` gives each instance its own objects, so there index 0 of 1 keeps them all.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from jobs.core.contract import PARTS, Shard
from jobs.core.errors import DataError

T = TypeVar("T")
PART_FILE = "part.json"


def _bucket(key: str, count: int) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % count


def shard(items: Iterable[T], index: int, count: int, key: Callable[[T], str] = lambda item: item.name) -> list[T]:
    """The items of shard ``index`` of ``count``, in their given order, chosen by the hash of
    ``key(item)`` (default: an ImageItem's name), so every instance agrees without talking and a
    file added to the input moves no other file between shards."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {index} of {count}: expected 0 <= index < count")
    return [item for item in items if count == 1 or _bucket(key(item), count) == index]


def share(items: list[T], at: Shard | None, key: Callable[[T], str] = lambda item: item.name) -> list[T]:
    """``items`` for the instance of ``at`` (all of them when the job is not sharded)."""
    return items if at is None else shard(items, at.index, at.count, key)


def part_folder(out: Path, at: Shard) -> Path:
    """Where the instance of ``at`` writes its part of the output folder ``out``."""
    return Path(out) / PARTS / at.part


def write_part(folder: Path, **info: Any) -> None:
    """Record a finished part: its summary and what the merge needs (written last, so a part
    without it is one whose instance did not finish)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PART_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")


def read_parts(out: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The finished parts under the output folder ``out`` (folder, part.json), by part name; a
    DataError when there are none or one did not finish."""
    root = Path(out) / PARTS
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not folders:
        raise DataError(f"{out}: no parts to merge under {PARTS}/ (did every instance fail?)")
    unfinished = [p.name for p in folders if not (p / PART_FILE).is_file()]
    if unfinished:
        raise DataError(f"{out}: parts {', '.join(unfinished)} have no {PART_FILE}; their instances did not finish")
    return [(p, json.loads((p / PART_FILE).read_text())) for p in folders]
