"""Detection splits as the detector sees them: images plus faces as boxes and landmarks.

A split is the seed's ``images/`` + ``label.txt`` folder (read with the one label parser,
:func:`parse_label_txt`) or a packed RecordIO (``train.data.DetectionDataset``),
local or on ``s3://``. Boxes reaching outside their image are clipped and counted, faces left with
no area are dropped and counted, and images without faces stay in as negatives.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from inference.faces import read_image
from jobs.core.errors import DataError, NotFoundError
from jobs.core.lazy import cv2
from jobs.core.lazy import numpy as np
from train.recordio import FACE_FIELDS

# RetinaFace landmark order: left eye, right eye, nose, left mouth corner, right mouth corner.
FLIP_ORDER = (1, 0, 2, 4, 3)


@dataclass
class Faces:
    """The faces of one image: ``boxes (n, 4)`` x1 y1 x2 y2, ``landmarks (n, 5, 2)`` and
    ``landmark_valid (n,)`` (0 where label.txt gave -1)."""

    boxes: np.ndarray
    landmarks: np.ndarray
    landmark_valid: np.ndarray

    @classmethod
    def from_label(cls, faces: np.ndarray) -> "Faces":
        """From label.txt rows ``x y w h lx0 ly0 v0 ... lx4 ly4 v4 blur`` (``(n, 20)``)."""
        faces = np.asarray(faces, np.float32).reshape(-1, 20)
        boxes = np.concatenate([faces[:, :2], faces[:, :2] + faces[:, 2:4]], axis=1)
        points = faces[:, 4:19].reshape(-1, 5, 3)
        valid = (points[:, :, :2] >= 0).all(axis=(1, 2)).astype(np.float32)
        return cls(boxes, points[:, :, :2].copy(), valid)

    @classmethod
    def empty(cls) -> "Faces":
        return cls(np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32), np.zeros(0, np.float32))

    def __len__(self) -> int:
        return len(self.boxes)

    def select(self, keep: np.ndarray) -> "Faces":
        return Faces(self.boxes[keep], self.landmarks[keep], self.landmark_valid[keep])

    def to_label(self) -> np.ndarray:
        """Back to label.txt rows (blur 0), landmarks -1 where invalid."""
        rows = np.full((len(self), 20), -1.0, np.float32)
        rows[:, :2] = self.boxes[:, :2]
        rows[:, 2:4] = self.boxes[:, 2:] - self.boxes[:, :2]
        points = np.concatenate([self.landmarks, np.ones((len(self), 5, 1), np.float32)], axis=2)
        rows[:, 4:19] = np.where(self.landmark_valid[:, None, None] > 0, points, -1.0).reshape(-1, 15)
        rows[:, 19] = 0
        return rows


@dataclass
class CleanReport:
    """What :func:`clip_faces` changed over a split, for the job log and record."""

    images: int = 0
    faces: int = 0
    negatives: int = 0
    clipped: int = 0
    dropped: int = 0
    examples: list[str] = field(default_factory=list)

    def summary(self, name: str) -> str:
        text = (f"{name}: {self.images} images, {self.faces} faces, {self.negatives} images without faces "
                f"(kept as negatives), {self.clipped} boxes clipped to their image, {self.dropped} "
                "boxes dropped (no area inside the image)")
        return text + "".join(f"\n  {e}" for e in self.examples)


def clip_faces(faces: Faces, height: int, width: int) -> tuple[Faces, int, int]:
    """Clip boxes to the image; drop those left with no area. Returns ``(faces, clipped, dropped)``."""
    limit = np.asarray([width, height, width, height], np.float32)
    clipped_boxes = np.clip(faces.boxes, 0, limit)
    changed = (np.abs(clipped_boxes - faces.boxes) > 1e-3).any(axis=1)
    alive = (clipped_boxes[:, 2] - clipped_boxes[:, 0] > 1) & (clipped_boxes[:, 3] - clipped_boxes[:, 1] > 1)
    out = Faces(clipped_boxes, faces.landmarks, faces.landmark_valid).select(alive)
    return out, int((changed & alive).sum()), int((~alive).sum())


class DetectionSplit:
    """One split: ``(image RGB HxWx3 uint8, Faces)`` per index, faces clipped to their image.

    ``read(i)`` gives an image and its label rows; clipping is counted the first time each image
    is read, so :attr:`report` is complete after one pass (an epoch or an evaluation)."""

    def __init__(self, name: str, count: int, read: Callable[[int], tuple[np.ndarray, np.ndarray]],
                 names: Callable[[int], str], sampler: Callable[[bool], Any] | None = None) -> None:
        self.name = name
        self._count = count
        self._read, self._names, self._sampler = read, names, sampler
        self._seen: set[int] = set()
        self.report = CleanReport(images=count)

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, idx: int) -> tuple[np.ndarray, Faces]:
        img, rows = self._read(idx)
        faces, clipped, dropped = clip_faces(Faces.from_label(rows), *img.shape[:2])
        if idx not in self._seen:
            self._seen.add(idx)
            report = self.report
            report.faces += len(faces)
            report.negatives += len(faces) == 0
            report.clipped += clipped
            report.dropped += dropped
            if (clipped or dropped) and len(report.examples) < 5:
                report.examples.append(f"{self._names(idx)}: {clipped} clipped, {dropped} dropped")
        return img, faces

    def sampler(self, shuffle: bool, seed: Any = None) -> Any:
        """A Gluon sampler for one epoch: RecordIO splits stream records ahead of use (see
        train.data); folder splits are shuffled from ``seed`` (e.g. ``(run seed, epoch)``), so a
        seeded or resumed run sees the same order again."""
        if self._sampler is not None:
            return self._sampler(shuffle)
        return np.random.default_rng(seed).permutation(len(self)).tolist() if shuffle else list(range(len(self)))


def read_rgb(path: Path) -> np.ndarray:
    """An image file as RGB uint8, read by the face toolkit's one decoder (its :class:`DataError`
    names the file)."""
    return cv2.cvtColor(read_image(path), cv2.COLOR_BGR2RGB)


def open_folder(folder: Path, name: str) -> DetectionSplit:
    """``folder/images/`` + ``folder/label.txt``; images listed but missing are an error naming them."""
    entries = parse_label_txt(folder / "label.txt")
    paths = [folder / "images" / rel for rel, _ in entries]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise DataError(f"{folder / 'label.txt'}: lists images that do not exist: {', '.join(missing[:3])}{more}")
    return DetectionSplit(name, len(paths), lambda i: (read_rgb(paths[i]), entries[i][1]), lambda i: entries[i][0])


def open_records(uri: str, name: str) -> DetectionSplit:
    """A packed detection RecordIO (``faceops data pack-detection``), local or ``s3://``."""
    from train.data import DetectionDataset  # an MXNet dataset: folders of photos need no MXNet

    data = DetectionDataset(uri)

    def read(i: int) -> tuple[np.ndarray, np.ndarray]:
        img, rows = data[i]
        return img.asnumpy(), rows

    return DetectionSplit(name, len(data), read, lambda i: f"{uri} record {data.keys[i]}",
                          lambda shuffle: data.sampler(shuffle=shuffle))


def open_split(uri: str | Path, name: str) -> DetectionSplit:
    """The split at ``uri``: a local folder with ``label.txt``, else a RecordIO folder or file
    (local or ``s3://``); neither is an error naming what was expected."""
    text = str(uri)
    local = Path(text[7:] if text.startswith("file://") else text)
    if "://" not in text or text.startswith("file://"):
        if (local / "label.txt").is_file():
            return open_folder(local, name)
        if local.is_dir() and not any(local.glob("*.rec")):
            raise NotFoundError(f"{local}: no label.txt (with images/) and no .rec file; expected the "
                                "detection layout images/ + label.txt or a packed RecordIO")
    return open_records(text, name)


def find_splits(root: str | Path) -> dict[str, Any]:
    """``train`` and ``val`` under the seed's ``detection_train_data/`` layout; ``root`` itself is
    the train split when it holds ``label.txt`` or RecordIO directly. ``val`` is None when absent."""
    root = Path(root)
    train = root / "train" if (root / "train").is_dir() else root
    val = root / "val" if (root / "val").is_dir() else None
    return {"train": train, "val": val}


def parse_label_txt(path: str | Path) -> list[tuple[str, np.ndarray]]:
    """Read a RetinaFace/WIDER ``label.txt``: ``# relative/path.jpg`` then one line per face,
    ``x y w h lx0 ly0 v0 ... lx4 ly4 v4 blur`` (20 numbers) or just ``x y w h`` (landmarks and blur
    become -1). Returns ``(path, faces (n, 20) float32)`` per image."""
    entries: list[tuple[str, list[list[float]]]] = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            if line.startswith("#"):
                name = line[1:].strip()
                if not name:
                    raise DataError(f"{path}:{lineno}: '#' line without an image path")
                entries.append((name, []))
                continue
            if not entries:
                raise DataError(f"{path}:{lineno}: face line before the first '# image/path.jpg' line")
            fields = line.split()
            if len(fields) not in (4, FACE_FIELDS):
                raise DataError(f"{path}:{lineno}: expected {FACE_FIELDS} fields (x y w h, 5 landmarks as lx ly v, "
                                f"blur) or 4 (x y w h), got {len(fields)}")
            try:
                values = [float(v) for v in fields]
            except ValueError:
                raise DataError(f"{path}:{lineno}: expected numbers, got {line!r}") from None
            entries[-1][1].append(values + [-1.0] * (FACE_FIELDS - len(values)))
    if not entries:
        raise DataError(f"{path}: no '# image/path.jpg' lines")
    return [(name, np.asarray(faces, np.float32).reshape(-1, FACE_FIELDS)) for name, faces in entries]
