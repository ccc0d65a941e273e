"""Packing photos into RecordIO: one folder per identity into insightface's recognition layout,
``images/`` + ``label.txt`` into detection records (the format is :mod:`train.recordio`).

Photos are listed by the face toolkit's one image listing (:func:`inference.sources.list_images`)
and decoded by its one decoder, so a pack and a gallery take the same files; ``--align`` uses the
toolkit's detector and aligner (onnxruntime and insightface are imported only then). MXNet is
imported inside the functions that need it; numpy and OpenCV load on first use (:mod:`jobs.core.lazy`).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from inference.faces import align_main_face, decode_image, read_file
from inference.models import load_detector
from inference.sources import list_images
from jobs.core import storage
from jobs.core.errors import DataError, NotFoundError
from jobs.core.lazy import cv2
from jobs.core.lazy import numpy as np
from jobs.core.parallel import bounded_map
from train.detection_data import parse_label_txt


@dataclass
class PackReport:
    """What a pack wrote and what it skipped (``skipped``: 'path: reason' lines)."""

    uri: str
    records: int = 0
    images: int = 0
    identities: int = 0
    faces: int = 0
    image_size: tuple[int, int] | None = None
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """Human-readable lines for the end of a pack."""
        what = (f"{self.images} images of {self.identities} identities" if self.identities
                else f"{self.images} images with {self.faces} faces")
        lines = [f"packed {what} into {self.uri}"]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)}:")
            lines += [f"  {line}" for line in self.skipped]
        return "\n".join(lines)


def parse_size(text: str) -> tuple[int, int]:
    """``"112"`` or ``"112x96"`` (H x W) -> ``(112, 112)`` / ``(112, 96)``."""
    parts = text.lower().split("x")
    try:
        size = tuple(int(p) for p in parts)
        if len(size) not in (1, 2) or min(size) <= 0:
            raise ValueError
    except ValueError:
        raise DataError(f"--resize: expected SIZE or HxW in pixels, got {text!r}") from None
    return (size[0], size[-1])


def face_aligner(model: str | Path | bool, size: int = 112) -> Callable[[np.ndarray], np.ndarray]:
    """A function that returns the main face of an image 5-point aligned to ``size`` x ``size``
    (the face toolkit's :func:`inference.faces.align_main_face`). ``model`` is a detector ONNX
    file or a model folder holding one; True means the pretrained detector (the models extra)."""
    detector = load_detector(None if model is True else model)
    return lambda img: align_main_face(detector, img, size)


def encode_image(path: Path, resize: tuple[int, int] | None = None,
                 align: Callable[[np.ndarray], np.ndarray] | None = None, quality: int = 95) -> tuple[bytes, tuple[int, int]]:
    """The bytes to store for one photo and its ``(H, W)``. Untouched photos keep their original
    bytes (lossless, no re-encode); aligned or resized ones are JPEG-encoded at ``quality``.
    Every :class:`DataError` names the photo."""
    raw = read_file(path)
    img = decode_image(raw, path)
    if align is None and resize is None:
        return raw, img.shape[:2]
    if align is not None:
        try:
            img = align(img)
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from None
    if resize is not None and img.shape[:2] != resize:
        img = cv2.resize(img, (resize[1], resize[0]), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise DataError(f"{path}: could not encode the image as JPEG")
    return buf.tobytes(), img.shape[:2]


def _encoded(items: list[Path], encode: Callable[[Path], tuple[bytes, tuple[int, int]]], workers: int,
             desc: str, progress: bool) -> Iterator[tuple[Path, tuple[bytes, tuple[int, int]] | DataError]]:
    """Encode ``items`` on a thread pool (OpenCV and onnxruntime release the GIL), yielding results
    in input order with a bounded window so memory stays flat on big datasets."""
    from tqdm import tqdm

    def safe(path: Path) -> tuple[bytes, tuple[int, int]] | DataError:
        try:
            return encode(path)
        except DataError as exc:
            return exc

    with tqdm(total=len(items), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for path, result in zip(items, bounded_map(safe, items, workers, ahead=4 * workers, name=desc)):
            yield path, result
            bar.update()


def _writer(folder: Path):
    from mxnet import recordio

    return recordio.MXIndexedRecordIO(str(folder / "train.idx"), str(folder / "train.rec"), "w")


def identity_images(src_dir: Path) -> tuple[list[tuple[str, list[Path]]], list[str]]:
    """Identity folders (sorted) with their photos (sorted), and the skipped lines to report: empty
    identity folders and files that are not photos in an identity folder. Photos are what the face
    toolkit lists (:func:`inference.sources.list_images`), so a pack takes what a gallery takes."""
    if not src_dir.is_dir():
        raise NotFoundError(f"{src_dir}: no such folder (expected one sub-folder of photos per identity)")
    listing = list_images(src_dir, labels=True)
    photos: dict[str, list[Path]] = {}
    for item in listing.items:
        photos.setdefault(item.label, []).append(item.path)
    skipped = [f"{src_dir / name}: not an image in an identity folder, skipped" for name in listing.skipped]
    folders = sorted(p.name for p in src_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    skipped += [f"{src_dir / name}: empty identity folder (no photos), skipped" for name in folders if name not in photos]
    if not photos:
        raise DataError(f"{src_dir}: no identity folders with photos (expected SRC_DIR/<person>/<photo>.jpg)")
    return sorted(photos.items()), skipped


@dataclass
class Sample:
    """One image to write: its identity (samples of an identity arrive together), its name in the
    ``.lst``, the encoded bytes and ``(H, W)``."""

    identity: str
    name: str
    data: bytes
    shape: tuple[int, int]


def write_recognition(folder: Path, samples: Iterable[Sample]) -> tuple[int, int, tuple[int, int], int]:
    """Write insightface's recognition layout into ``folder`` (``train.rec/.idx/.lst``, ``property``).

    Image records get keys 1..N with their identity's number as label; identity records follow
    with the key range of their images; header record 0 (written last, key 0) points at the
    identity records, exactly as insightface's ``face2rec`` lays it out. Returns the number of
    images and identities, the image size written to ``property`` (the smallest seen) and how many
    different sizes there were."""
    from mxnet import recordio

    writer = _writer(folder)
    sizes: set[tuple[int, int]] = set()
    ranges: list[tuple[int, int]] = []
    key, current = 1, None
    try:
        with open(folder / "train.lst", "w") as lst:
            for sample in samples:
                if sample.identity != current:
                    current = sample.identity
                    ranges.append((key, key))
                label = len(ranges) - 1
                writer.write_idx(key, recordio.pack(recordio.IRHeader(0, float(label), key, 0), sample.data))
                lst.write(f"{key}\t{label}\t{sample.name}\n")
                ranges[-1] = (ranges[-1][0], key + 1)
                sizes.add(tuple(sample.shape))
                key += 1
        if not ranges:
            return 0, 0, (0, 0), 0
        first_identity = key
        for a, b in ranges:
            writer.write_idx(key, recordio.pack(recordio.IRHeader(0, [float(a), float(b)], key, 0), b""))
            key += 1
        writer.write_idx(0, recordio.pack(recordio.IRHeader(0, [float(first_identity), float(key)], 0, 0), b""))
    finally:
        writer.close()
    shape = sorted(sizes)[0]
    (folder / "property").write_text(f"{len(ranges)},{shape[0]},{shape[1]}\n")
    return first_identity - 1, len(ranges), shape, len(sizes)


def pack_recognition(src_dir: str | Path, out_uri: str, resize: str | None = None, align: str | Path | bool | None = None,
                     workers: int | None = None, quality: int = 95, progress: bool = True) -> PackReport:
    """Pack one-folder-per-identity photos into insightface's recognition RecordIO at ``out_uri``
    (``train.rec``, ``train.idx``, ``train.lst``, ``property``; see :func:`write_recognition`),
    replacing what is there. Unreadable photos, and photos without a face when aligning, are
    skipped and listed; identities left without photos are dropped."""
    src = Path(src_dir)
    identities, skipped = identity_images(src)
    size = parse_size(resize) if resize else None
    aligner = face_aligner(align) if align else None
    report = PackReport(str(out_uri), skipped=skipped)
    owner = {photo: name for name, photos in identities for photo in photos}
    photos = [photo for _, photos in identities for photo in photos]

    def samples() -> Iterator[Sample]:
        for photo, result in _encoded(photos, lambda p: encode_image(p, size, aligner, quality),
                                      workers or os.cpu_count() or 1, "pack", progress):
            if isinstance(result, DataError):
                report.skipped.append(str(result))
            else:
                yield Sample(owner[photo], photo.relative_to(src).as_posix(), *result)

    with tempfile.TemporaryDirectory(prefix="faceops-pack-") as tmp:
        folder = Path(tmp)
        report.images, report.identities, shape, kinds = write_recognition(folder, samples())
        if not report.images:
            raise DataError(f"{src}: no readable photos to pack\n" + "\n".join(report.skipped))
        if kinds > 1:
            report.skipped.append(f"note: photos have {kinds} different sizes; property says {shape[0]}x{shape[1]}, "
                                  "use --resize so insightface's loader sees one size")
        report.records, report.image_size = report.images + report.identities + 1, shape
        # One step for readers: a local folder is renamed in, S3 gets its manifest written last.
        storage.upload(folder, out_uri, progress=progress)
    return report



def pack_detection(src_dir: str | Path, out_uri: str, workers: int | None = None,
                   progress: bool = True) -> PackReport:
    """Pack ``SRC_DIR/images/`` + ``SRC_DIR/label.txt`` into an indexed RecordIO at ``out_uri``
    (``train.rec``, ``train.idx``, ``train.lst``). Each record holds the original image bytes and
    the label ``[n, faces...]`` so it round-trips exactly; unreadable or missing images are skipped
    and listed."""
    from mxnet import recordio

    src = Path(src_dir)
    label_file = src / "label.txt"
    if not label_file.is_file():
        raise NotFoundError(f"{label_file}: no such file (expected SRC_DIR/label.txt and SRC_DIR/images/)")
    entries = dict(parse_label_txt(label_file))
    report = PackReport(str(out_uri))
    images = src / "images"
    paths = [images / name for name in entries]
    with tempfile.TemporaryDirectory(prefix="faceops-pack-") as tmp:
        folder = Path(tmp)
        writer = _writer(folder)
        key = 0
        with open(folder / "train.lst", "w") as lst:
            for path, result in _encoded(paths, encode_image,
                                         workers or os.cpu_count() or 1, "pack", progress):
                if isinstance(result, DataError):
                    report.skipped.append(str(result))
                    continue
                name = path.relative_to(images).as_posix()
                faces = entries[name]
                label = np.concatenate([[float(len(faces))], faces.reshape(-1)]).astype(np.float32)
                writer.write_idx(key, recordio.pack(recordio.IRHeader(0, label, key, 0), result[0]))
                lst.write(f"{key}\t{len(faces)}\t{name}\n")
                report.faces += len(faces)
                key += 1
        writer.close()
        if key == 0:
            raise DataError(f"{src}: no readable images to pack\n" + "\n".join(report.skipped))
        report.records = report.images = key
        storage.upload(folder, out_uri, progress=progress)
    return report
