"""The face toolkit's image work: decode an image, detect faces, align them, embed them, fast on a CPU.

It serves every part of faceops that touches faces: galleries and identify, the packer's
``--align``, the detection teacher and the demo (models come from :mod:`inference.models`, image
lists from :mod:`inference.sources`). Why :func:`analyse` is faster than a plain
``FaceAnalysis.get()`` loop: one thread per core takes images through every step on one-thread
onnxruntime sessions (OpenCV, libjpeg-turbo and onnxruntime release the GIL; no core is
oversubscribed), the faces of each image are embedded in pieces any core can take, so no core
idles at the end; the detector runs at the image's own size (up to ``det_size``) instead of
letterboxing every photo into 640x640; JPEGs are decoded by libjpeg-turbo through simplejpeg,
which gives OpenCV's pixels in 0.6 of its time on a phone photo; and each photo is decoded once
and halved down to the detector's size (:func:`pyramid`), each face aligned from the coarsest
level its crop does not enlarge.
"""
from __future__ import annotations

import math
import os
import threading
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from inference.models import Models
from inference.sources import ImageItem
from jobs.core.config import setting
from jobs.core.errors import DataError
from jobs.core.lazy import cv2
from jobs.core.lazy import numpy as np
from jobs.core.parallel import bounded_start

STRIDE = 32  # SCRFD's coarsest feature stride: detector inputs are multiples of it
MAX_PIXELS = 100_000_000  # a 100-megapixel photo decodes to 300 MB; bigger is a mistake or a bomb
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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
    size: tuple[int, int] | None = None  # (width, height) as decoded (reduced only past images.max_pixels)


# OpenCV's flag names per decode reduction (libjpeg's DCT scaling factors), read at decode time
# because OpenCV loads on first use.
REDUCED = {1: "IMREAD_COLOR", 2: "IMREAD_REDUCED_COLOR_2", 4: "IMREAD_REDUCED_COLOR_4",
           8: "IMREAD_REDUCED_COLOR_8"}
# JPEG start-of-frame markers (they carry the size); C4, C8 and CC are other segments.
SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
START_OF_SCAN = 0xDA  # the entropy-coded image follows: no header segment comes after it
EXIF_HEADER = b"Exif\x00\x00"
ORIENTATION_TAG = 0x0112


def decode_image(data: bytes, source: str | Path, reduce: int = 1) -> np.ndarray:
    """BGR uint8 image from encoded bytes: the one image decoder of faceops. Grey, CMYK, 16-bit and
    alpha images become 3-channel BGR, and a JPEG is turned upright by its EXIF orientation, as
    OpenCV does; ``reduce`` (2, 4 or 8) decodes a JPEG at that fraction of its size (other
    formats are decoded, then resized). :class:`DataError` names ``source`` (a file or a record)
    and says why it is not an image."""
    if not data:
        raise DataError(f"{source}: empty file (0 bytes)")
    check_pixels(data, source, reduce)
    image = _decode_jpeg(data, reduce) if data[:2] == b"\xff\xd8" else None
    if image is None:
        try:
            image = cv2.imdecode(np.frombuffer(data, np.uint8), getattr(cv2, REDUCED[reduce]))
        except cv2.error:
            image = None
    if image is None or image.size == 0:
        raise DataError(f"{source}: not a decodable image")
    return image


def _decode_jpeg(data: bytes, reduce: int) -> np.ndarray | None:
    """A JPEG decoded by libjpeg-turbo through simplejpeg at 1/``reduce`` of its size and turned
    upright, the same pixels as ``cv2.imdecode`` gives; None for what simplejpeg refuses (CMYK,
    a damaged stream), which OpenCV then decodes or rejects as before. Why not OpenCV alone: its
    decoder takes 64 ms for a 12-megapixel photo where simplejpeg takes 37 ms, and identify
    decodes such photos twice when their faces are small (benchmarks/identify.py)."""
    import simplejpeg  # a small C extension; imported with the first photo, not with faceops

    try:
        height, width = simplejpeg.decode_jpeg_header(data)[:2]
        image = simplejpeg.decode_jpeg(data, colorspace="BGR", min_height=-(-height // reduce),
                                       min_width=-(-width // reduce))
    except ValueError:
        return None
    return upright(image, jpeg_orientation(data))


def upright(image: np.ndarray, orientation: int) -> np.ndarray:
    """``image`` turned as its EXIF ``orientation`` (1-8) asks, the way OpenCV's decoder turns it."""
    if orientation >= 5:
        image = cv2.transpose(image)
    flip = {2: 1, 3: -1, 4: 0, 6: 1, 7: -1, 8: 0}.get(orientation)
    return image if flip is None else cv2.flip(image, flip)


def jpeg_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) of a JPEG, 1 when it has none or it cannot be read."""
    for marker, start, end in _jpeg_segments(data):
        if marker == 0xE1 and data[start:start + 6] == EXIF_HEADER:
            return _tiff_orientation(data[start + 6:end])
    return 1


def _tiff_orientation(tiff: bytes) -> int:
    """The orientation tag of an EXIF block's first image directory (a TIFF header), 1 if absent."""
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1
    directory = int.from_bytes(tiff[4:8], order)
    count = int.from_bytes(tiff[directory:directory + 2], order)
    for entry in range(directory + 2, min(len(tiff) - 11, directory + 2 + 12 * count), 12):
        if int.from_bytes(tiff[entry:entry + 2], order) == ORIENTATION_TAG:
            value = int.from_bytes(tiff[entry + 8:entry + 10], order)
            return value if 1 <= value <= 8 else 1
    return 1


def _jpeg_segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(marker, payload start, payload end) of each header segment of a JPEG, up to the image
    data; nothing when ``data`` is not a JPEG, and the walk stops at a damaged header."""
    if data[:2] != b"\xff\xd8":
        return
    i = 2
    while i + 3 < len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF or marker == 0x01 or 0xD0 <= marker <= 0xD8:  # fill byte, TEM, RSTn, SOI: no length
            i += 1 if marker == 0xFF else 2
            continue
        end = i + 2 + int.from_bytes(data[i + 2:i + 4], "big")
        yield marker, i + 4, min(end, len(data))
        if marker == START_OF_SCAN:
            return
        i = end


def max_pixels() -> int:
    """The most pixels faceops decodes one image to (``images.max_pixels``, ``FACEOPS_MAX_PIXELS``)."""
    return int(setting("images", "max_pixels", ("FACEOPS_MAX_PIXELS",), MAX_PIXELS))


def check_pixels(data: bytes, source: str | Path, reduce: int = 1) -> None:
    """Refuse, from its header and before any decoding, an image whose decode (at ``reduce``)
    would hold more than :func:`max_pixels` pixels: a 30000x30000 PNG would take gigabytes.
    Formats whose size :func:`image_size` cannot read are left to OpenCV's own pixel limit."""
    size = image_size(data)
    if size is None:
        return
    pixels = size[0] * size[1] // (reduce * reduce)
    if pixels > max_pixels():
        raise DataError(f"{source}: {size[0]}x{size[1]} is {pixels} pixels to decode, over the {max_pixels()} "
                        "limit (images.max_pixels, FACEOPS_MAX_PIXELS); shrink the photo or raise the limit")


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's start-of-frame header without decoding it; None when ``data``
    is not a JPEG or has no readable header."""
    for marker, start, end in _jpeg_segments(data):
        if marker in SOF_MARKERS and end - start >= 5:
            return int.from_bytes(data[start + 3:start + 5], "big"), int.from_bytes(data[start + 1:start + 3], "big")
    return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a JPEG or PNG from its header, without decoding it (so a server can
    refuse a decompression bomb first); None for other formats or an unreadable header."""
    if data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return jpeg_size(data)


def reduction(data: bytes, det_size: int) -> int:
    """The largest JPEG decode reduction (1, 2, 4 or 8) that still leaves the long side at least
    ``det_size``, so the detector sees the same pixels it would after a full decode."""
    size = jpeg_size(data)
    if size is None:
        return 1
    return next((r for r in (8, 4, 2) if max(size) / r >= det_size), 1)


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
    if min(width, height) * min(size[0] / width, size[1] / height) < 1:
        return []  # a strip that insightface's letterbox shrinks to no rows (OpenCV would raise) has no face
    boxes, kps = detector.detect(image, input_size=size, det_thresh=det_thresh)
    faces = [Face(boxes[i, :4].astype(np.float32), float(boxes[i, 4]), kps[i].astype(np.float32))
             for i in range(boxes.shape[0])]
    return sorted(faces, key=lambda f: -f.area)


def alignment(landmarks: np.ndarray, side: int = 112) -> np.ndarray:
    """The 2x3 similarity transform that maps 5 ``landmarks`` onto insightface's ArcFace template
    in a ``side`` x ``side`` crop."""
    from insightface.utils import face_align

    return face_align.estimate_norm(landmarks, image_size=side)


def align(image: np.ndarray, landmarks: np.ndarray, side: int = 112) -> np.ndarray:
    """The ``side`` x ``side`` crop of the face with 5 ``landmarks``, similarity-transformed onto
    insightface's ArcFace template (what recognizers are trained and run on)."""
    return cv2.warpAffine(image, alignment(landmarks, side), (side, side), borderValue=0.0)


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


def _finest(zoom: float, scale: int) -> int:
    """The coarsest reduction (at most ``scale``) from which a face whose crop zooms the
    1/``scale`` image by ``zoom`` is aligned without enlarging (1 = full size when none is)."""
    return next((r for r in (8, 4, 2) if r <= scale and zoom * r / scale <= 1), 1)


def halve(image: np.ndarray) -> np.ndarray:
    """``image`` at half size, each pixel the mean of a 2x2 block (an odd last row or column is
    dropped), as libjpeg's 1/2 scaled decode averages; at least one pixel on each side."""
    height, width = image.shape[:2]
    even = image[:max(1, height - height % 2), :max(1, width - width % 2)]
    return cv2.resize(even, (max(1, width // 2), max(1, height // 2)), interpolation=cv2.INTER_AREA)


def pyramid(data: bytes, source: str | Path, det_size: int) -> dict[int, np.ndarray]:
    """The image at each reduction (1, 2, 4, 8) from full size down to the one the detector needs
    (:func:`reduction`), keyed by reduction: decoded once, then halved. Full size unless that is
    over :func:`max_pixels`, then the finest reduction under it. Why not a reduced decode for the
    detector and a second one for small faces: entropy decoding, which libjpeg pays at every
    scale, is most of a decode (a 12 MP photo: 23-31 ms at 1/4, 36 ms in full, 5 ms to halve the
    full image twice), so two decodes cost near twice one."""
    scale = reduction(data, det_size)
    size = image_size(data)
    top = scale if size is None else next(
        r for r in (1, 2, 4, 8) if r == scale or size[0] * size[1] // (r * r) <= max_pixels())
    levels = {top: decode_image(data, source, top)}
    while top < scale:
        levels[top * 2] = halve(levels[top])
        top *= 2
    return levels


def _prepare(models: Models, item: ImageItem, det_size: int,
             det_thresh: float) -> tuple[ImageResult, list[np.ndarray]]:
    """Read, decode (:func:`pyramid`), detect on the coarsest level and align one image (runs in
    a pool thread). Each face is aligned from the coarsest level its crop does not enlarge, so a
    large face is averaged down rather than sampled. Boxes and landmarks are returned in
    full-size pixels. Any failure becomes the image's ``error`` so one bad file never stops a
    run."""
    try:
        data = item.data if item.data is not None else read_file(item.path, item.name)
        levels = pyramid(data, item.name, det_size)
    except DataError as exc:
        return ImageResult(item, error=str(exc)), []
    scale, top = max(levels), min(levels)
    image = levels[scale]
    faces = detect(models.detector, image, det_size, det_thresh)
    side = models.recognizer.input_size[0]
    crops = []
    for face in faces:
        matrix = alignment(face.landmarks, side)
        # The zoom (crop pixels per detection-image pixel) says the coarsest level the face needs.
        level = max(top, _finest(math.sqrt(abs(np.linalg.det(matrix[:, :2]))), scale))
        # A pixel i of the image at 1/s covers full pixels [i*s, (i+1)*s), centred on i*s + (s-1)/2:
        # this maps the level's pixels to the detection image's, where the landmarks are.
        ratio = level / scale
        to_source = np.array([[ratio, 0, (ratio - 1) / 2], [0, ratio, (ratio - 1) / 2], [0, 0, 1]])
        crops.append(cv2.warpAffine(levels[level], matrix @ to_source, (side, side), borderValue=0.0))
        face.box[:] = face.box * scale + (scale - 1) / 2
        face.landmarks[:] = face.landmarks * scale + (scale - 1) / 2
    height, width = levels[top].shape[:2]
    return ImageResult(item, faces, size=(width * top, height * top)), crops


AHEAD_PER_WORKER = 4  # images in flight per worker: room to go on past a slow photo at the head


def analyse(models: Models, items: Iterable[ImageItem], det_size: int = 640, det_thresh: float = 0.5,
            batch_size: int = 16, workers: int | None = None) -> Iterator[ImageResult]:
    """Yield one :class:`ImageResult` per item, in input order, with embeddings filled in.

    ``workers`` threads (default: one per core) take the images one at a time (read, decode,
    detect, align: :func:`_prepare`); each image's aligned faces are then embedded in up to
    ``workers`` pieces of at most ``batch_size`` crops, each piece a task of its own, so the faces
    of the last photos are embedded by every core rather than by the one that found them (on a
    one-thread session a recognizer call costs the same per face at batch 1 or 16). At most
    :data:`AHEAD_PER_WORKER` images per worker are in flight, so memory stays flat on millions of
    images. Parallel images use the cores better than parallel operators: with one-thread
    onnxruntime sessions (:func:`inference.models.load_models`) nothing waits for a straggling
    operator thread and no core is oversubscribed."""
    workers = workers or os.cpu_count() or 1
    return bounded_start(lambda pool, item: _Flight(pool, models, item, det_size, det_thresh, batch_size,
                                                    workers).done,
                         items, workers, ahead=AHEAD_PER_WORKER * workers, name="faces")


def pieces(crops: list[np.ndarray], batch_size: int, count: int) -> list[list[np.ndarray]]:
    """``crops`` in at most ``count`` near-equal pieces of at most ``batch_size`` each."""
    if not crops:
        return []
    size = min(max(1, batch_size), math.ceil(len(crops) / max(1, count)))
    return [crops[i:i + size] for i in range(0, len(crops), size)]


class _Flight:
    """One image on its way through the pool: one task prepares it, then one task per piece of
    its faces embeds them; ``done`` is set with the finished :class:`ImageResult` (or the error of
    a task) when the last piece is in. Tasks chain through callbacks, which run on the thread
    that finished the previous task, so no pool thread ever waits for another."""

    def __init__(self, pool: Executor, models: Models, item: ImageItem, det_size: int, det_thresh: float,
                 batch_size: int, workers: int) -> None:
        self.pool, self.models, self.batch_size, self.workers = pool, models, batch_size, workers
        self.done: Future = Future()
        self.lock = threading.Lock()
        pool.submit(_prepare, models, item, det_size, det_thresh).add_done_callback(self._prepared)

    def _prepared(self, future: Future) -> None:
        try:
            self.result, crops = future.result()
            parts = pieces(crops, self.batch_size, self.workers)
            if not parts:
                self.done.set_result(self.result)
                return
            self.left = len(parts)
            self.parts = [self.pool.submit(embed, self.models, part) for part in parts]
        except BaseException as exc:  # a bug in a task, or a pool shut down by a reader that stopped
            self.done.set_exception(exc)
            return
        for part in self.parts:
            part.add_done_callback(self._embedded)

    def _embedded(self, _: Future) -> None:
        with self.lock:
            self.left -= 1
            if self.left:
                return
        try:
            embeddings = np.concatenate([part.result() for part in self.parts])
        except BaseException as exc:
            self.done.set_exception(exc)
            return
        for face, embedding in zip(self.result.faces, embeddings):
            face.embedding = embedding
        self.done.set_result(self.result)
