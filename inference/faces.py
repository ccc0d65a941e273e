"""The face toolkit's image work: decode an image, detect faces, align them, embed them, fast on a CPU.

It serves every part of faceops that touches faces: galleries and identify, the packer's
``--align``, the detection teacher and the demo (models come from :mod:`inference.models`, image
lists from :mod:`inference.sources`). Why :func:`analyse` is faster than a plain
``FaceAnalysis.get()`` loop: a thread pool decodes, detects and aligns several images at once
(OpenCV and onnxruntime release the GIL), the detector runs at the image's own size (up to
``det_size``) instead of upscaling every photo to 640x640, and aligned crops are embedded in
batches by the recognizer while the threads work on the next images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import cv2
import numpy as np

from inference.models import Models
from inference.sources import ImageItem
from jobs.core.errors import DataError
from jobs.core.parallel import bounded_map

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


def decode_image(data: bytes, source: str | Path) -> np.ndarray:
    """BGR uint8 image from encoded bytes: the one image decoder of faceops. Grey, CMYK, 16-bit and
    alpha images become 3-channel BGR. :class:`DataError` names ``source`` (a file or a record) and
    says why it is not an image."""
    if not data:
        raise DataError(f"{source}: empty file (0 bytes)")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        image = None
    if image is None or image.size == 0:
        raise DataError(f"{source}: not a decodable image")
    return image


def read_file(path: Path, name: str | Path | None = None) -> bytes:
    """The bytes of an image file; a missing or unreadable file is a :class:`DataError` naming it
    (as ``name`` when given, e.g. the name a report uses)."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{name or path}: no such file") from None
    except OSError as exc:
        raise DataError(f"{name or path}: {exc.strerror or exc}") from None


def read_image(path: Path, name: str | Path | None = None) -> np.ndarray:
    """The image file ``path`` read and decoded (:func:`read_file`, :func:`decode_image`)."""
    return decode_image(read_file(path, name), name or path)


def detector_size(width: int, height: int, det_size: int) -> tuple[int, int]:
    """Detector input (w, h): the image scaled so its long side is at most ``det_size``, never
    upscaled, rounded up to the stride. Small photos are not blown up to 640x640 (a 250x250
    photo costs 6x less) and huge ones are downscaled for detection only."""
    scale = min(1.0, det_size / max(width, height))
    return (max(STRIDE, math.ceil(width * scale / STRIDE) * STRIDE),
            max(STRIDE, math.ceil(height * scale / STRIDE) * STRIDE))


def detect(detector: Any, image: np.ndarray, det_size: int = 640, det_thresh: float = 0.5,
           upscale: bool = False) -> list[Face]:
    """Faces in ``image``, largest first, with boxes and landmarks in image pixels.

    ``detector`` is an insightface detector (:func:`inference.models.load_detector`, or
    ``Models.detector``). By default it runs at :func:`detector_size`; ``upscale`` letterboxes every
    image into ``det_size`` x ``det_size`` instead (insightface's own way, which enlarges small
    photos: the detection teacher, the packer's aligner and the demo label faces that way)."""
    height, width = image.shape[:2]
    size = (det_size, det_size) if upscale else detector_size(width, height, det_size)
    boxes, kps = detector.detect(image, input_size=size, det_thresh=det_thresh)
    faces = [Face(boxes[i, :4].astype(np.float32), float(boxes[i, 4]), kps[i].astype(np.float32))
             for i in range(boxes.shape[0])]
    return sorted(faces, key=lambda f: -f.area)


def align(image: np.ndarray, landmarks: np.ndarray, side: int = 112) -> np.ndarray:
    """The ``side`` x ``side`` crop of the face with 5 ``landmarks``, similarity-transformed onto
    insightface's ArcFace template (what recognizers are trained and run on)."""
    from insightface.utils import face_align

    return face_align.norm_crop(image, landmark=landmarks, image_size=side)


def align_main_face(detector: Any, image: np.ndarray, side: int = 112) -> np.ndarray:
    """The largest face of ``image`` aligned to ``side`` x ``side``; :class:`DataError` when there is none."""
    faces = detect(detector, image, upscale=True)
    if not faces:
        raise DataError("no face found")
    return align(image, faces[0].landmarks, side)


def embed(models: Models, crops: list[np.ndarray]) -> np.ndarray:
    """L2-normalised float32 embeddings (N, D) of aligned crops, in one recognizer call."""
    feats = np.asarray(models.recognizer.get_feat(crops), dtype=np.float32)
    return feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)


def _prepare(models: Models, item: ImageItem, det_size: int,
             det_thresh: float) -> tuple[ImageResult, list[np.ndarray]]:
    """Read, decode, detect and align one image (runs in a pool thread). Any failure becomes the
    image's ``error`` so one bad file never stops a run."""
    try:
        image = read_image(item.path, item.name)
    except DataError as exc:
        return ImageResult(item, error=str(exc)), []
    faces = detect(models.detector, image, det_size, det_thresh)
    side = models.recognizer.input_size[0]
    return ImageResult(item, faces, size=(image.shape[1], image.shape[0])), [align(image, f.landmarks, side) for f in faces]


def analyse(models: Models, items: Iterable[ImageItem], det_size: int = 640, det_thresh: float = 0.5,
            batch_size: int = 16, workers: int = 2) -> Iterator[ImageResult]:
    """Yield one :class:`ImageResult` per item, in input order, with embeddings filled in.

    ``workers`` threads prepare images ahead (bounded, so memory stays flat on millions of images)
    while this thread embeds their crops ``batch_size`` at a time."""
    ready: list[ImageResult] = []
    crops: list[np.ndarray] = []
    for result, image_crops in bounded_map(lambda item: _prepare(models, item, det_size, det_thresh), items,
                                           workers, ahead=4 * max(1, workers), name="faces"):
        ready.append(result)
        crops.extend(image_crops)
        if len(crops) >= batch_size:
            yield from _embedded(models, ready, crops)
            ready, crops = [], []
    yield from _embedded(models, ready, crops)


def _embedded(models: Models, ready: list[ImageResult], crops: list[np.ndarray]) -> list[ImageResult]:
    """``ready`` with the embeddings of ``crops`` (their faces' crops, in order) filled in."""
    if crops:
        embeddings = iter(embed(models, crops))
        for result in ready:
            for face in result.faces:
                face.embedding = next(embeddings)
    return ready
