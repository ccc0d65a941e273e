"""The MXNet RecordIO format of face datasets: locate, read (local or streamed from object storage),
unpack payloads and read the header and ``property`` files.

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
Writing lives in :mod:`train.pack`, describing a dataset in :mod:`train.inspection`. MXNet is
imported inside the functions that need it.
"""
from __future__ import annotations

import os
import struct
import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from jobs.core import storage
from jobs.core.errors import DataError, NotFoundError
from jobs.core.lazy import numpy as np

STEMS = ("train", "cele")
MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
LENGTH_MASK = (1 << 29) - 1
FACE_FIELDS = 20
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
                raise DataError(self._truncated(key, start, start + pos, 8, len(buf)))
            magic, word = struct.unpack_from("<II", buf, pos)
            if magic != MAGIC:
                raise DataError(f"{self.uri}: record {key} at byte {start + pos} has no RecordIO magic; "
                                f"{self.idx_uri} does not match this .rec")
            cflag, length = word >> 29, word & LENGTH_MASK
            if pos + 8 + length > len(buf):
                raise DataError(self._truncated(key, start, start + pos + 8, length, len(buf)))
            parts.append(buf[pos + 8:pos + 8 + length])
            pos += 8 + ((length + 3) & ~3)
            if cflag in (0, 3):
                return MAGIC_BYTES.join(parts)

    def _truncated(self, key: int, start: int, at: int, needed: int, span: int) -> str:
        """A record longer than the bytes it was read from. Only the last record's span ends at
        the end of the file; any other ends where the .idx puts the next record, so running past
        that is an index of another file, not a short upload."""
        if start + span < self.size:
            return (f"{self.uri}: record {key} needs {needed} bytes at byte {at}, past where {self.idx_uri} "
                    f"puts the next record (byte {start + span}): the .idx does not match this .rec")
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
        # Not jobs.core.parallel.bounded_map: this window is counted in bytes and grows with what was read.
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

