"""Training augmentation for the detector (RetinaFace's recipe): a random square crop resized to
the training size, horizontal flip with the landmark order swapped, and photometric jitter.

Works on numpy RGB uint8 images and :class:`train.detection_data.Faces`; ``rng`` is a
``numpy.random.Generator`` so a seed reproduces a run.
"""
from __future__ import annotations

import numpy as np

from jobs.core.lazy import cv2
from train.detection_data import FLIP_ORDER, Faces

CROP_SCALES = (0.3, 0.45, 0.6, 0.8, 1.0)
CROP_TRIES = 50


def random_square_crop(img: np.ndarray, faces: Faces, rng: np.random.Generator,
                       min_scale: float = CROP_SCALES[0]) -> tuple[np.ndarray, Faces]:
    """A square crop of a random scale (from ``CROP_SCALES``, at least ``min_scale``) of the short
    side that keeps at least one face centre
    (faces whose centre falls outside are dropped, the rest clipped). Images without faces get
    any crop; when no try keeps a face the whole image is padded to a square instead."""
    height, width = img.shape[:2]
    centers = (faces.boxes[:, :2] + faces.boxes[:, 2:]) / 2
    scales = [s for s in CROP_SCALES if s >= min_scale] or [1.0]
    for _ in range(CROP_TRIES):
        side = int(rng.choice(scales) * min(height, width))
        x0 = int(rng.integers(0, width - side + 1))
        y0 = int(rng.integers(0, height - side + 1))
        inside = ((centers >= [x0, y0]) & (centers < [x0 + side, y0 + side])).all(axis=1)
        if inside.any() or len(faces) == 0:
            return img[y0:y0 + side, x0:x0 + side], shift(faces.select(inside), x0, y0, side)
    side = max(height, width)
    square = np.zeros((side, side, 3), img.dtype)
    square[:height, :width] = img
    return square, faces


def shift(faces: Faces, x0: float, y0: float, side: float) -> Faces:
    """Faces moved into a crop at ``(x0, y0)`` of size ``side``, boxes clipped to it."""
    offset = np.asarray([x0, y0], np.float32)
    boxes = np.clip(faces.boxes - np.tile(offset, 2), 0, side)
    return Faces(boxes, faces.landmarks - offset, faces.landmark_valid.copy())


def resize(img: np.ndarray, faces: Faces, size: int) -> tuple[np.ndarray, Faces]:
    """Square image -> ``size x size``, faces scaled with it."""
    scale = size / img.shape[0]
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    out = cv2.resize(img, (size, size), interpolation=interp)
    return out, Faces(faces.boxes * scale, faces.landmarks * scale, faces.landmark_valid)


def hflip(img: np.ndarray, faces: Faces) -> tuple[np.ndarray, Faces]:
    """Mirror the image; boxes mirrored, landmarks mirrored and re-ordered (left eye stays 0)."""
    width = img.shape[1]
    boxes = faces.boxes.copy()
    boxes[:, [0, 2]] = width - faces.boxes[:, [2, 0]]
    points = faces.landmarks[:, FLIP_ORDER].copy()
    points[:, :, 0] = width - points[:, :, 0]
    return img[:, ::-1], Faces(boxes, points, faces.landmark_valid)


def jitter(img: np.ndarray, rng: np.random.Generator, strength: float = 0.3) -> np.ndarray:
    """Random brightness, contrast and saturation, each by up to ``strength``."""
    out = img.astype(np.float32)
    out += rng.uniform(-strength, strength) * 128
    mean = out.mean()
    out = (out - mean) * (1 + rng.uniform(-strength, strength)) + mean
    grey = out.mean(axis=2, keepdims=True)
    out = (out - grey) * (1 + rng.uniform(-strength, strength)) + grey
    return np.clip(out, 0, 255).astype(np.uint8)


def augment(img: np.ndarray, faces: Faces, size: int, rng: np.random.Generator,
            flip: bool = True, photometric: float = 0.3, min_crop: float = CROP_SCALES[0]) -> tuple[np.ndarray, Faces]:
    """The whole training recipe: crop, resize to ``size``, maybe flip, jitter."""
    img, faces = random_square_crop(img, faces, rng, min_crop)
    img, faces = resize(img, faces, size)
    if flip and rng.random() < 0.5:
        img, faces = hflip(img, faces)
    if photometric > 0:
        img = jitter(img, rng, photometric)
    return np.ascontiguousarray(img), faces
