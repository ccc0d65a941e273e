"""The face toolkit's image listing, for galleries, identify and the packer alike. Where the images
come from: a folder (one sub-folder per person when labels are wanted), a CSV of
``path,person`` rows, a text list of paths, or an object-storage prefix (fetched through
jobs.core.storage into a temporary folder first, then read like a folder).

Every listed file becomes an :class:`ImageItem`; files that cannot be images by their extension
(:data:`IMAGE_EXTENSIONS`, the one list) are counted (never silently dropped) and bad images are
reported later, one row each.
"""
from __future__ import annotations

import csv
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from jobs.core import storage
from jobs.core.errors import DataError, NotFoundError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jfif"}
LIST_EXTENSIONS = {".txt", ".lst"}


@dataclass(frozen=True)
class ImageItem:
    """One input image: where to read it, the name reports use, its person label (or None), and
    its bytes when it arrived in memory (an upload to ``faceops serve``) rather than as a file."""

    path: Path
    name: str
    label: str | None = None
    data: bytes | None = field(default=None, repr=False, compare=False)


@dataclass
class Listing:
    """The images of a source plus the files that were skipped for not being images."""

    items: list[ImageItem]
    skipped: list[str] = field(default_factory=list)


@contextmanager
def local(source: str | Path) -> Iterator[Path]:
    """A local path for ``source``: plain paths and ``file://`` as they are, object-storage URIs
    (``s3://bucket/prefix/``) downloaded through jobs.core.storage into a folder removed afterwards."""
    if not storage.is_remote(source):
        yield storage.parse(source).path
        return
    with tempfile.TemporaryDirectory(prefix="faceops-src-") as tmp:
        yield storage.download(source, Path(tmp) / "data", progress=False)


def list_images(path: Path, labels: bool = False) -> Listing:
    """List the images under ``path`` (folder, ``.csv`` or ``.txt`` list).

    With ``labels`` a folder must hold one sub-folder per person (the label is the first folder
    below ``path``); a CSV supplies ``path,person`` rows (paths relative to the CSV)."""
    if not path.exists():
        raise NotFoundError(f"image source not found: {path}")
    if path.is_dir():
        return _list_folder(path, labels)
    if path.suffix.lower() == ".csv":
        return Listing(_read_csv(path, labels))
    if path.suffix.lower() in LIST_EXTENSIONS:
        return Listing(_read_list(path))
    if path.suffix.lower() in IMAGE_EXTENSIONS and not labels:
        return Listing([ImageItem(path, path.name)])
    raise DataError(f"{path}: expected a folder of images, a .csv of path,person rows or a .txt list of paths")


def _list_folder(root: Path, labels: bool) -> Listing:
    items, skipped = [], []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            skipped.append(rel.as_posix())
            continue
        label = rel.parts[0] if len(rel.parts) > 1 else None
        if labels and label is None:
            skipped.append(rel.as_posix())
            continue
        items.append(ImageItem(path, rel.as_posix(), label))
    return Listing(items, skipped)


def _read_csv(path: Path, labels: bool) -> list[ImageItem]:
    """Rows ``path,person`` (a header line naming ``path`` is allowed); person may be empty when
    labels are not required."""
    items = []
    with open(path, newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh), 1):
            if not row or not row[0].strip() or (lineno == 1 and row[0].strip().lower() in ("path", "image")):
                continue
            person = row[1].strip() if len(row) > 1 and row[1].strip() else None
            if labels and person is None:
                raise DataError(f"{path}:{lineno}: expected 'path,person', got {','.join(row)!r}")
            image = (path.parent / row[0].strip())
            items.append(ImageItem(image, row[0].strip(), person))
    return items


def _read_list(path: Path) -> list[ImageItem]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [ImageItem(path.parent / line, line) for line in lines if line and not line.startswith("#")]


def read_truth(path: Path) -> dict[str, str]:
    """Ground truth from a ``path,person`` CSV, keyed by the path as written (reports use the same
    relative names) and by the file name, so either form matches."""
    truth = {}
    for item in _read_csv(path, labels=True):
        truth[item.name] = item.label
        truth.setdefault(Path(item.name).name, item.label)
    return truth
