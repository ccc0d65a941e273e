"""A labelled detection set made from plain face photos, with a pretrained detector as the teacher.

Each photo is labelled once by the teacher (any insightface detector ONNX, e.g. SCRFD-500M),
then several photos are pasted at random scales onto each canvas and the teacher's boxes and
landmarks are carried along. The result is the seed's layout (``images/`` + RetinaFace
``label.txt``), so it feeds ``task: detection`` and ``faceops data pack-detection`` unchanged.
Used by the learning test and the benchmark, and handy for a smoke run of a new image.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from inference.faces import detect, read_image
from inference.models import load_detector
from jobs.core.errors import DataError
from jobs.core.lazy import cv2
from train.detection_data import Faces, read_rgb


def teacher_faces(detector_path: Path, photos: Sequence[Path], threshold: float = 0.5) -> dict[Path, Faces]:
    """Faces the teacher finds in each photo (photos without any, or unreadable, are left out),
    found with the face toolkit at a 640x640 detector input."""
    teacher = load_detector(detector_path)
    found = {}
    for photo in photos:
        try:
            img = read_image(photo)
        except DataError:
            continue
        faces = detect(teacher, img, 640, threshold, upscale=True)
        if faces:
            found[photo] = Faces(np.stack([f.box for f in faces]), np.stack([f.landmarks for f in faces]),
                                 np.ones(len(faces), np.float32))
    return found


def background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth random colour gradient with noise: nothing face-like for the detector to learn."""
    corners = rng.uniform(0, 255, (2, 2, 3)).astype(np.float32)
    t = np.linspace(0, 1, size, dtype=np.float32)
    top = corners[0, 0] + t[:, None] * (corners[0, 1] - corners[0, 0])
    bottom = corners[1, 0] + t[:, None] * (corners[1, 1] - corners[1, 0])
    img = top[None] + t[:, None, None] * (bottom - top)[None]
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def paste_canvas(labelled: dict[Path, Faces], size: int, per_canvas: int, rng: np.random.Generator,
                 scale: tuple[float, float] = (0.25, 0.55)) -> tuple[np.ndarray, Faces]:
    """One ``size x size`` RGB canvas with up to ``per_canvas`` photos pasted without overlap,
    each scaled to ``scale`` of the canvas side; returns the canvas and its faces."""
    canvas = background(size, rng)
    photos = list(labelled)
    placed: list[tuple[int, int, int, int]] = []
    boxes, points, valid = [], [], []
    for _ in range(per_canvas):
        photo = photos[int(rng.integers(len(photos)))]
        img = read_rgb(photo)
        side = int(rng.uniform(*scale) * size)
        factor = side / max(img.shape[:2])
        w, h = int(img.shape[1] * factor), int(img.shape[0] * factor)
        for _ in range(20):
            x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
            if all(x + w <= px or px + pw <= x or y + h <= py or py + ph <= y for px, py, pw, ph in placed):
                break
        else:
            continue
        placed.append((x, y, w, h))
        canvas[y:y + h, x:x + w] = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        faces = labelled[photo]
        offset = np.asarray([x, y], np.float32)
        boxes.append(np.clip(faces.boxes * factor + np.tile(offset, 2), [x, y, x, y], [x + w, y + h, x + w, y + h]))
        points.append(faces.landmarks * factor + offset)
        valid.append(faces.landmark_valid)
    if not boxes:
        return canvas, Faces.empty()
    return canvas, Faces(np.concatenate(boxes), np.concatenate(points), np.concatenate(valid))


def write_split(folder: Path, labelled: dict[Path, Faces], count: int, size: int, per_canvas: int,
                seed: int, negatives: int = 0) -> Path:
    """``folder/images/*.jpg`` + ``folder/label.txt`` with ``count`` canvases (the last
    ``negatives`` of them without faces)."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        if i >= count - negatives:
            img, faces = background(size, rng), Faces.empty()
        else:
            img, faces = paste_canvas(labelled, size, per_canvas, rng)
        name = f"canvas_{i:04d}.jpg"
        cv2.imwrite(str(folder / "images" / name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        lines.append(f"# {name}")
        lines.extend(" ".join(f"{v:.2f}" for v in row) for row in faces.to_label())
    (folder / "label.txt").write_text("\n".join(lines) + "\n")
    return folder
