"""MXNet RecordIO face datasets: locate, read (local or streamed from object storage), pack and inspect.

Two kinds share the indexed RecordIO files (``train.rec`` + ``train.idx``, or the seed's
``cele.rec`` + ``cele.idx``):

- recognition, insightface's layout: record 0 is a header whose ``IRHeader.flag > 0`` and
  ``label = (first_identity_record, end)``; records ``1 .. first_identity_record - 1`` are images
  labelled with their identity; each identity record carries ``label = (first_image, end)`` of its
  images. ``property`` holds ``num_classes,H,W``.
- detection: every record is an image whose label is ``[n, face_0 (20 floats), ...]``, a face being
  the RetinaFace/WIDER line ``x y w h lx0 ly0 v0 ... lx4 ly4 v4 blur``.

Reading goes through :class:`RecordFile`, which parses the small ``.idx`` and reads record spans
with ``storage.read_range`` (an open file for local paths), so a multi-GB ``.rec`` on S3 is read
by ranged GETs while training runs, with read-ahead in background threads and bounded memory.
MXNet, OpenCV and insightface are imported inside the functions that need them.
"""
from __future__ import annotations

import os
import struct
import tempfile
import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from jobs.core import storage
from jobs.core.errors import DataError, NotFoundError

STEMS = ("train", "cele")
MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
LENGTH_MASK = (1 << 29) - 1
FACE_FIELDS = 20
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
CHUNK_BYTES = 8 * 1024 * 1024
FIRST_CHUNK = 256 * 1024
BUFFER_BYTES = 64 * 1024 * 1024
READERS = 4


# --- locating and reading -----------------------------------------------------------------------

@dataclass(frozen=True)
class RecordSet:
    """The URIs of one dataset's files; ``lst`` and ``property`` may not exist."""

    rec: str
    idx: str
    lst: str
    property: str


def locate(uri: str | Path) -> RecordSet:
    """Find the RecordIO files of ``uri``: a ``.rec`` file, or a folder/prefix holding
    ``train.rec`` or ``cele.rec`` (with its ``.idx`` beside it)."""
    text = str(uri).rstrip("/")
    if text.endswith(".rec"):
        folder = text.rsplit("/", 1)[0] if "/" in text else "."
        stems = [text[:-4]]
    else:
        folder, stems = text, [storage.join(text, s) for s in STEMS]
    stem = next((s for s in stems if storage.exists(f"{s}.rec")), None)
    if stem is None:
        raise NotFoundError(f"{uri}: no train.rec or cele.rec found (expected a RecordIO folder or a .rec file)")
    rec, idx = f"{stem}.rec", f"{stem}.idx"
    if not storage.exists(idx):
        raise NotFoundError(f"{idx}: the index of {rec} is missing (pack with an indexed writer or rebuild it)")
    return RecordSet(rec, idx, f"{stem}.lst", storage.join(folder, "property"))


def parse_index(text: str, name: str) -> tuple[list[int], list[int]]:
    """Keys and byte offsets of an ``.idx`` (``KEY<TAB>OFFSET`` lines), in file order."""
    keys, offsets = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        try:
            key, offset = int(parts[0]), int(parts[1])
            if len(parts) != 2 or offset < 0:
                raise ValueError
        except (ValueError, IndexError):
            raise DataError(f"{name}:{lineno}: expected 'KEY<TAB>OFFSET' with integers, got {line!r}") from None
        keys.append(key)
        offsets.append(offset)
    if not keys:
        raise DataError(f"{name}: empty index")
    return keys, offsets


@dataclass
class _Chunk:
    """One ranged read: ``[start, start+length)`` of the .rec holding ``items`` (key, offset in chunk, length)."""

    start: int
    length: int
    items: list[tuple[int, int, int]] = field(default_factory=list)


class RecordFile:
    """An indexed RecordIO file, local or on object storage, read by record spans.

    ``keys`` are in ``.idx`` order, like ``mx.recordio.MXIndexedRecordIO.keys``; ``read_idx(key)``
    returns the same bytes MXNet's reader does. ``read_many(keys)`` streams many records with
    read-ahead: contiguous spans are merged into ranged reads of up to ``chunk_bytes``, fetched by
    ``readers`` background threads, never more than ``buffer_bytes`` ahead of the consumer.
    """

    def __init__(self, rec: str, idx: str, chunk_bytes: int = CHUNK_BYTES, buffer_bytes: int = BUFFER_BYTES,
                 readers: int = READERS):
        self.uri, self.idx_uri = rec, idx
        self.size = storage.stat(rec).size
        self.keys, offsets = parse_index(storage.read_bytes(idx).decode(errors="replace"), idx)
        self.offsets = dict(zip(self.keys, offsets))
        if len(self.offsets) != len(self.keys):
            raise DataError(f"{idx}: a key appears more than once")
        ends = sorted(set(offsets)) + [max(self.size, max(offsets))]
        self._ends = dict(zip(ends, ends[1:]))
        self.chunk_bytes, self.buffer_bytes, self.readers = chunk_bytes, buffer_bytes, readers
        self._path = storage.parse(rec).path
        self._fd: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Picklable for DataLoader workers: the open file is not, each process opens its own."""
        return {**self.__dict__, "_fd": None}

    def _read(self, start: int, length: int) -> bytes:
        """``length`` bytes at ``start``: a ranged GET, or pread on a file kept open (pread has no
        shared position, so the read-ahead threads can share it)."""
        if self._path is None:
            return storage.read_range(self.uri, start, length)
        if self._fd is None:
            self._fd = os.open(self._path, os.O_RDONLY)
            weakref.finalize(self, os.close, self._fd)
        return os.pread(self._fd, length, start)

    def __len__(self) -> int:
        return len(self.keys)

    def span(self, key: int) -> tuple[int, int]:
        """Byte offset and length of record ``key`` (up to the next record or the end of the file)."""
        if key not in self.offsets:
            raise KeyError(f"{self.idx_uri}: no record with key {key}")
        start = self.offsets[key]
        return start, self._ends[start] - start

    def read_idx(self, key: int) -> bytes:
        """The payload of record ``key`` (what ``mx.recordio.unpack`` takes)."""
        start, length = self.span(key)
        return self.unframe(self._read(start, length), key, start)

    def unframe(self, buf: bytes, key: int, start: int) -> bytes:
        """Strip RecordIO framing (magic, length/flag word, 4-byte padding) from the bytes of record
        ``key`` read at ``start``; multi-part records are joined the way dmlc's reader does."""
        pos, parts = 0, []
        while True:
            if pos + 8 > len(buf):
                raise DataError(self._truncated(key, start + pos, 8))
            magic, word = struct.unpack_from("<II", buf, pos)
            if magic != MAGIC:
                raise DataError(f"{self.uri}: record {key} at byte {start + pos} has no RecordIO magic; "
                                f"{self.idx_uri} does not match this .rec")
            cflag, length = word >> 29, word & LENGTH_MASK
            if pos + 8 + length > len(buf):
                raise DataError(self._truncated(key, start + pos + 8, length))
            parts.append(buf[pos + 8:pos + 8 + length])
            pos += 8 + ((length + 3) & ~3)
            if cflag in (0, 3):
                return MAGIC_BYTES.join(parts)

    def _truncated(self, key: int, at: int, needed: int) -> str:
        return (f"{self.uri}: record {key} is truncated: it needs {needed} bytes at byte {at} but the file "
                f"ends at byte {self.size} (incomplete upload or copy?)")

    def _plan(self, keys: Iterable[int]) -> Iterator[_Chunk]:
        """Merge runs of contiguous records into reads. Reads start at FIRST_CHUNK bytes and double
        up to ``chunk_bytes`` so the first records arrive at once while later reads stay large."""
        chunk: _Chunk | None = None
        limit = min(FIRST_CHUNK, self.chunk_bytes)
        for key in keys:
            start, length = self.span(key)
            if chunk is not None and start == chunk.start + chunk.length and chunk.length + length <= limit:
                chunk.items.append((key, chunk.length, length))
                chunk.length += length
                continue
            if chunk is not None:
                yield chunk
                limit = min(2 * limit, self.chunk_bytes)
            chunk = _Chunk(start, length, [(key, 0, length)])
        if chunk is not None:
            yield chunk

    def read_many(self, keys: Iterable[int]) -> Iterator[tuple[int, bytes]]:
        """Yield ``(key, payload)`` for ``keys`` in the given order, reading ahead in the background.

        Reading in file order gives the fewest, largest ranged reads; a failed range is retried by
        the storage layer before it raises. The read-ahead grows with what was consumed (up to
        ``buffer_bytes``) so a burst of background reads does not slow the first batch down."""
        plan = self._plan(keys)
        pending: deque = deque()
        ahead = consumed = 0
        with ThreadPoolExecutor(self.readers, thread_name_prefix="recordio-read") as pool:
            try:
                while True:
                    while not pending or ahead < min(self.buffer_bytes, FIRST_CHUNK + consumed):
                        chunk = next(plan, None)
                        if chunk is None:
                            break
                        pending.append((chunk, pool.submit(self._read, chunk.start, chunk.length)))
                        ahead += chunk.length
                    if not pending:
                        return
                    chunk, future = pending.popleft()
                    data = future.result()
                    ahead -= chunk.length
                    consumed += chunk.length
                    for key, offset, length in chunk.items:
                        yield key, self.unframe(data[offset:offset + length], key, chunk.start + offset)
            finally:
                for _, future in pending:
                    future.cancel()


def open_record_file(uri: str | Path, **options: Any) -> RecordFile:
    """A :class:`RecordFile` for a ``.rec`` or a dataset folder/prefix, local or ``s3://``."""
    files = locate(uri)
    return RecordFile(files.rec, files.idx, **options)


# --- record payloads ------------------------------------------------------------------------------

def unpack(payload: bytes) -> tuple[Any, bytes]:
    """``(IRHeader, image bytes)`` of a record payload (MXNet's own decoder)."""
    from mxnet import recordio

    return recordio.unpack(payload)


def faces_of(label: Any) -> np.ndarray:
    """The ``(n, 20)`` float32 face array of a detection record label ``[n, faces...]``."""
    label = np.asarray(label, np.float32).reshape(-1)
    count = int(label[0]) if label.size else -1
    if count < 0 or label.size != 1 + count * FACE_FIELDS:
        raise DataError(f"detection label of {label.size} floats is not [n, n x {FACE_FIELDS} face fields]")
    return label[1:].reshape(count, FACE_FIELDS)


def is_detection(header: Any) -> bool:
    """True when a record header carries the detection label ``[n, n x 20 floats]``."""
    label = np.asarray(header.label, np.float32).reshape(-1)
    return header.flag > 0 and label.size == 1 + int(label[0]) * FACE_FIELDS


@dataclass(frozen=True)
class Layout:
    """What record 0 says: the kind, which keys hold images, and each identity's image key range
    when an insightface header gives them."""

    kind: str
    image_keys: list[int]
    id_ranges: list[tuple[int, int]] | None = None


def read_layout(file: RecordFile) -> Layout:
    """Tell detection from recognition by record 0 and read insightface's header and identity
    records (contiguous, so one ranged read). A recognition file without a header (flag 0 at
    record 0) is all images, as in insightface's loader."""
    first_key = 0 if 0 in file.offsets else min(file.keys)
    header, _ = unpack(file.read_idx(first_key))
    if is_detection(header):
        return Layout("detection", list(file.keys))
    if first_key != 0 or header.flag <= 0:
        return Layout("recognition", list(file.keys))
    first, end = (int(v) for v in np.asarray(header.label).reshape(-1)[:2])
    missing = [k for k in range(1, max(first, end)) if k not in file.offsets]
    if missing or end <= first:
        raise DataError(f"{file.uri}: header record says images 1..{first - 1} and identities {first}..{end - 1} "
                        f"but {file.idx_uri} has no key {missing[0] if missing else end}")
    ranges = []
    for key, payload in file.read_many(range(first, end)):
        ident, _ = unpack(payload)
        a, b = (int(v) for v in np.asarray(ident.label).reshape(-1)[:2])
        if not 1 <= a <= b <= first:
            raise DataError(f"{file.uri}: identity record {key} gives images {a}..{b - 1}, outside 1..{first - 1}")
        ranges.append((a, b))
    return Layout("recognition", list(range(1, first)), ranges)


def read_property(uri: str) -> tuple[int, int, int] | None:
    """``(num_classes, H, W)`` from a ``property`` file, None when there is none."""
    if not storage.exists(uri):
        return None
    text = storage.read_bytes(uri).decode(errors="replace").strip()
    try:
        values = tuple(int(v) for v in text.split(","))
        if len(values) != 3:
            raise ValueError
    except ValueError:
        raise DataError(f"{uri}: expected 'num_classes,H,W', got {text!r}") from None
    return values


def decode_size(image: bytes) -> tuple[int, int]:
    """``(H, W)`` of encoded image bytes; DataError when they do not decode."""
    import cv2

    img = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR) if image else None
    if img is None:
        raise DataError("image bytes do not decode")
    return img.shape[0], img.shape[1]


# --- packing --------------------------------------------------------------------------------------

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


def load_aligner(model: str | Path, size: int = 112) -> Callable[[np.ndarray], np.ndarray]:
    """A function that detects the main face and returns it 5-point aligned to ``size`` x ``size``
    (insightface's ``norm_crop``). ``model`` is a detector ONNX file, or a folder in which the first
    ONNX file insightface's model_zoo loads as a detector is used."""
    from insightface.model_zoo import get_model
    from insightface.utils.face_align import norm_crop

    path = Path(model)
    detector = None
    for onnx in ([path] if path.is_file() else sorted(path.glob("*.onnx"))):
        try:
            candidate = get_model(str(onnx), providers=["CPUExecutionProvider"])
        except Exception:  # model_zoo fails in many ways on graphs that are not insightface models
            continue
        if getattr(candidate, "taskname", None) == "detection":
            detector = candidate
            break
    if detector is None:
        raise DataError(f"--align {model}: no face detector ONNX model found (expected e.g. scrfd_500m_bnkps.onnx)")
    detector.prepare(ctx_id=-1, input_size=(640, 640))

    def align(img: np.ndarray) -> np.ndarray:
        _, kpss = detector.detect(img, max_num=1)
        if kpss is None or len(kpss) == 0:
            raise DataError("no face found")
        return norm_crop(img, kpss[0], image_size=size)

    return align


def encode_image(path: Path, resize: tuple[int, int] | None = None,
                 align: Callable[[np.ndarray], np.ndarray] | None = None, quality: int = 95) -> tuple[bytes, tuple[int, int]]:
    """The bytes to store for one photo and its ``(H, W)``. Untouched photos keep their original
    bytes (lossless, no re-encode); aligned or resized ones are JPEG-encoded at ``quality``."""
    import cv2

    if not path.is_file():
        raise DataError("no such file")
    raw = path.read_bytes()
    img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR) if raw else None
    if img is None:
        raise DataError("not a readable image")
    if align is None and resize is None:
        return raw, img.shape[:2]
    if align is not None:
        img = align(img)
    if resize is not None and img.shape[:2] != resize:
        img = cv2.resize(img, (resize[1], resize[0]), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise DataError("could not encode the image as JPEG")
    return buf.tobytes(), img.shape[:2]


def _encoded(items: list[Path], encode: Callable[[Path], tuple[bytes, tuple[int, int]]], workers: int,
             desc: str, progress: bool) -> Iterator[tuple[Path, tuple[bytes, tuple[int, int]] | DataError]]:
    """Encode ``items`` on a thread pool (OpenCV and onnxruntime release the GIL), yielding results
    in input order with a bounded window so memory stays flat on big datasets."""
    from tqdm import tqdm

    def safe(path: Path):
        try:
            return encode(path)
        except DataError as exc:
            return exc

    window = 4 * workers
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(items), desc=desc, unit="img",
                                                    disable=not progress, leave=False) as bar:
        pending: deque = deque()
        for path in items:
            pending.append((path, pool.submit(safe, path)))
            if len(pending) >= window:
                done_path, future = pending.popleft()
                yield done_path, future.result()
                bar.update()
        while pending:
            done_path, future = pending.popleft()
            yield done_path, future.result()
            bar.update()


def _writer(folder: Path):
    from mxnet import recordio

    return recordio.MXIndexedRecordIO(str(folder / "train.idx"), str(folder / "train.rec"), "w")


def identity_images(src_dir: Path) -> tuple[list[tuple[str, list[Path]]], list[str]]:
    """Identity folders (sorted) with their photos (sorted), and the empty folders to report."""
    if not src_dir.is_dir():
        raise NotFoundError(f"{src_dir}: no such folder (expected one sub-folder of photos per identity)")
    identities, empty = [], []
    for folder in sorted(p for p in src_dir.iterdir() if p.is_dir()):
        photos = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if photos:
            identities.append((folder.name, photos))
        else:
            empty.append(f"{folder}: empty identity folder (no .jpg/.png photos), skipped")
    if not identities:
        raise DataError(f"{src_dir}: no identity folders with photos (expected SRC_DIR/<person>/<photo>.jpg)")
    return identities, empty


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


def pack_recognition(src_dir: str | Path, out_uri: str, resize: str | None = None, align: str | None = None,
                     workers: int | None = None, quality: int = 95, progress: bool = True) -> PackReport:
    """Pack one-folder-per-identity photos into insightface's recognition RecordIO at ``out_uri``
    (``train.rec``, ``train.idx``, ``train.lst``, ``property``; see :func:`write_recognition`),
    replacing what is there. Unreadable photos, and photos without a face when aligning, are
    skipped and listed; identities left without photos are dropped."""
    src = Path(src_dir)
    identities, skipped = identity_images(src)
    size = parse_size(resize) if resize else None
    aligner = load_aligner(align) if align else None
    report = PackReport(str(out_uri), skipped=skipped)
    owner = {photo: name for name, photos in identities for photo in photos}
    photos = [photo for _, photos in identities for photo in photos]

    def samples() -> Iterator[Sample]:
        for photo, result in _encoded(photos, lambda p: encode_image(p, size, aligner, quality),
                                      workers or os.cpu_count() or 1, "pack", progress):
            if isinstance(result, DataError):
                report.skipped.append(f"{photo}: {result}")
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
                    report.skipped.append(f"{path}: {result}")
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


# --- inspecting -----------------------------------------------------------------------------------

def _spread(counts: list[int]) -> dict[str, float]:
    return {"min": min(counts), "median": median(counts), "max": max(counts)} if counts else {}


def _first_bad_span(file: RecordFile) -> dict[str, Any] | None:
    """Cheap structural check: the first and last records in file order must frame correctly and
    no key may point past the end (what a truncated upload or a foreign .idx looks like)."""
    by_offset = sorted(file.keys, key=file.offsets.__getitem__)
    inside = [k for k in by_offset if file.offsets[k] < file.size]
    for key in dict.fromkeys([*inside[:1], *inside[-1:]]):
        try:
            file.read_idx(key)
        except DataError as exc:
            return {"key": key, "error": str(exc)}
    beyond = [k for k in by_offset if file.offsets[k] >= file.size]
    if beyond:
        key = beyond[0]
        return {"key": key, "error": f"{file.uri}: record {key} starts at byte {file.offsets[key]} but the file "
                                     f"ends at byte {file.size} (truncated .rec, or an .idx of another file)"}
    return None


def _scan(file: RecordFile, keys: list[int], progress: bool) -> tuple[dict[str, Any] | None, list[Any]]:
    """Read every record in file order, decoding each image; stop at the first bad one."""
    from tqdm import tqdm

    labels = []
    order = sorted(keys, key=file.offsets.__getitem__)
    stream = file.read_many(order)
    with tqdm(total=len(order), desc="scan", unit="rec", disable=not progress, leave=False) as bar:
        for key in order:
            try:
                _, payload = next(stream)
            except DataError as exc:
                return {"key": key, "error": str(exc)}, labels
            header, image = unpack(payload)
            try:
                decode_size(image)
            except DataError as exc:
                return {"key": key, "error": f"record {key}: {exc}"}, labels
            labels.append(header.label)
            bar.update()
    return None, labels


def inspect(uri: str | Path, scan: bool = False, progress: bool = True) -> dict[str, Any]:
    """Describe a RecordIO dataset: kind, records, images, identities and images per identity,
    faces, image size, bytes, ``property`` and whether it agrees, and the first corrupt record.

    Without ``scan`` only the index, the header/identity records and the first and last records are
    read (a few ranged reads on S3); ``scan`` reads and decodes every record (streamed, not saved)."""
    files = locate(uri)
    file = RecordFile(files.rec, files.idx)
    report: dict[str, Any] = {"uri": str(uri), "rec": files.rec, "kind": None, "bytes": file.size,
                              "records": len(file), "first_corrupt": _first_bad_span(file), "problems": []}
    if report["first_corrupt"] is not None:
        return report
    layout = read_layout(file)
    report.update(kind=layout.kind, images=len(layout.image_keys))
    _, image = unpack(file.read_idx(layout.image_keys[0]))
    try:
        report["image_size"] = list(decode_size(image))
    except DataError as exc:
        report["image_size"] = None
        report["first_corrupt"] = {"key": layout.image_keys[0], "error": f"record {layout.image_keys[0]}: {exc}"}
    labels: list[Any] = []
    if scan and report["first_corrupt"] is None:
        report["first_corrupt"], labels = _scan(file, layout.image_keys, progress)
    if layout.kind == "detection":
        report["faces"] = int(sum(faces_of(label).shape[0] for label in labels)) if labels else None
        return report
    counts = [b - a for a, b in layout.id_ranges] if layout.id_ranges is not None else _label_counts(labels)
    report["identities"] = len(counts) or None
    report["images_per_identity"] = _spread(counts) or None
    prop = read_property(files.property)
    report["property"] = list(prop) if prop else None
    report["problems"] = property_problems(prop, report["identities"], report["image_size"], files.property)
    return report


def _label_counts(labels: list[Any]) -> list[int]:
    ids = [int(np.asarray(label).reshape(-1)[0]) for label in labels]
    return list(np.bincount(ids)[np.unique(ids)]) if ids else []


def property_problems(prop: tuple[int, int, int] | None, identities: int | None,
                      image_size: list[int] | None, where: str) -> list[str]:
    """How a ``property`` file disagrees with the data (empty when it agrees or is absent)."""
    if prop is None:
        return []
    problems = []
    if identities is not None and prop[0] != identities:
        problems.append(f"{where}: says {prop[0]} classes but the records hold {identities} identities")
    if image_size is not None and list(prop[1:]) != list(image_size):
        problems.append(f"{where}: says images are {prop[1]}x{prop[2]} but they are {image_size[0]}x{image_size[1]}")
    return problems


def format_report(report: dict[str, Any]) -> str:
    """``faceops data inspect`` as aligned text lines."""
    rows = [("uri", report["uri"]), ("kind", report.get("kind")), ("records", report["records"]),
            ("bytes", report["bytes"]), ("images", report.get("images")),
            ("image size", "x".join(map(str, report["image_size"])) if report.get("image_size") else None)]
    if report.get("kind") == "recognition":
        spread = report.get("images_per_identity") or {}
        rows += [("identities", report.get("identities")),
                 ("images/identity", f"min {spread['min']}  median {spread['median']}  max {spread['max']}" if spread else None),
                 ("property", ",".join(map(str, report["property"])) if report.get("property") else None)]
    if report.get("kind") == "detection":
        rows.append(("faces", report.get("faces")))
    bad = report.get("first_corrupt")
    rows.append(("first corrupt", f"record {bad['key']}: {bad['error']}" if bad else "none found"))
    lines = [f"{name:<16} {'-' if value is None else value}" for name, value in rows]
    lines += [f"problem          {p}" for p in report.get("problems", [])]
    return "\n".join(lines)
