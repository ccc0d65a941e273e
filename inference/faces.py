"""Decode, detect, align and embed faces, fast on a CPU.

Why it is faster than a plain ``FaceAnalysis.get()`` loop: a thread pool decodes, detects and
aligns several images at once (OpenCV and onnxruntime release the GIL), the detector runs at the
image's own size (up to ``det_size``) instead of upscaling every photo to 640x640, and aligned
crops are embedded in batches by the recognizer while the pool works on the next images.
"""
from __future__ import annotations

import math
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import cv2
import numpy as np

from inference.models import Models
from inference.sources import ImageItem

STRIDE = 32  # SCRFD's coarsest feature stride: detector inputs are multiples of it


@dataclass
class Face:
    """One detected face: box (x1, y1, x2, y2), detection score, 5 landmarks, unit embedding."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray
    embedding: np.ndarray | None = None

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))


@dataclass
class ImageResult:
    """What one image gave: its faces (largest first) or the reason it gave none."""

    item: ImageItem
    faces: list[Face] = field(default_factory=list)
    error: str | None = None
    size: tuple[int, int] | None = None  # (width, height)


def decode(data: bytes) -> np.ndarray:
    """BGR uint8 image from file bytes. Grey, CMYK, 16-bit and alpha images become 3-channel BGR.
    ``ValueError`` says why a file is not an image."""
    if not data:
        raise ValueError("empty file (0 bytes)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise ValueError("not a decodable image")
    return image


def detector_size(width: int, height: int, det_size: int) -> tuple[int, int]:
    """Detector input (w, h): the image scaled so its long side is at most ``det_size``, never
    upscaled, rounded up to the stride. Small photos are not blown up to 640x640 (a 250x250
    photo costs 6x less) and huge ones are downscaled for detection only."""
    scale = min(1.0, det_size / max(width, height))
    return (max(STRIDE, math.ceil(width * scale / STRIDE) * STRIDE),
            max(STRIDE, math.ceil(height * scale / STRIDE) * STRIDE))


def detect(models: Models, image: np.ndarray, det_size: int = 640, det_thresh: float = 0.5) -> list[Face]:
    """Faces in ``image``, largest first, with boxes and landmarks in image pixels."""
    height, width = image.shape[:2]
    boxes, kps = models.detector.detect(image, input_size=detector_size(width, height, det_size),
                                        det_thresh=det_thresh)
    faces = [Face(boxes[i, :4].astype(np.float32), float(boxes[i, 4]), kps[i].astype(np.float32))
             for i in range(boxes.shape[0])]
    return sorted(faces, key=lambda f: -f.area)


def align(models: Models, image: np.ndarray, faces: list[Face]) -> list[np.ndarray]:
    """The recognizer's input crops (5-point similarity transform, insightface's ArcFace template)."""
    from insightface.utils import face_align

    side = models.recognizer.input_size[0]
    return [face_align.norm_crop(image, landmark=f.landmarks, image_size=side) for f in faces]


def embed(models: Models, crops: list[np.ndarray]) -> np.ndarray:
    """L2-normalised float32 embeddings (N, D) of aligned crops, in one recognizer call."""
    feats = np.asarray(models.recognizer.get_feat(crops), dtype=np.float32)
    return feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)


def _prepare(models: Models, item: ImageItem, det_size: int,
             det_thresh: float) -> tuple[ImageResult, list[np.ndarray]]:
    """Read, decode, detect and align one image (runs in a pool thread). Any failure becomes the
    image's ``error`` so one bad file never stops a run."""
    try:
        image = decode(item.path.read_bytes())
    except (OSError, ValueError, cv2.error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return ImageResult(item, error=reason), []
    faces = detect(models, image, det_size, det_thresh)
    return ImageResult(item, faces, size=(image.shape[1], image.shape[0])), align(models, image, faces)


def analyse(models: Models, items: Iterable[ImageItem], det_size: int = 640, det_thresh: float = 0.5,
            batch_size: int = 16, workers: int = 2) -> Iterator[ImageResult]:
    """Yield one :class:`ImageResult` per item, in input order, with embeddings filled in.

    A pool of ``workers`` threads prepares images ahead (bounded, so memory stays flat on millions
    of images) while this thread embeds their crops ``batch_size`` at a time."""
    pending: deque[Future] = deque()
    items = iter(items)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="faces") as pool:
        def fill() -> None:
            while len(pending) < 4 * max(1, workers):
                item = next(items, None)
                if item is None:
                    return
                pending.append(pool.submit(_prepare, models, item, det_size, det_thresh))

        fill()
        while pending:
            ready: list[ImageResult] = []
            crops: list[np.ndarray] = []
            while pending and len(crops) < batch_size:
                result, image_crops = pending.popleft().result()
                ready.append(result)
                crops.extend(image_crops)
                fill()
            if crops:
                embeddings = iter(embed(models, crops))
                for result in ready:
                    for face in result.faces:
                        face.embedding = next(embeddings)
            yield from ready
