"""Gluon datasets over RecordIO face data, local or streamed from object storage with no code change.

``RecognitionDataset(uri)`` yields ``(image, label)`` like insightface's MXNet loader (RGB ``HxWx3``
uint8 NDArray, identity as float); ``DetectionDataset(uri)`` yields ``(image, faces)`` with faces
an ``(n, 20)`` float32 array of ``x y w h lx0 ly0 v0 ... lx4 ly4 v4 blur``. ``uri`` is a folder, a
``.rec`` file or an ``s3://`` prefix.

Random access to an S3 object costs a request per sample, so pass ``dataset.sampler(shuffle=True)``
to the DataLoader: it shuffles windows of contiguous blocks and streams each window with large
ranged reads ahead of the consumer, so an epoch from S3 runs about as fast as from a local file.
The read-ahead is shared by ``num_workers=0`` and ``thread_pool=True`` loaders; forked workers
fall back to one ranged read per sample.
"""
from __future__ import annotations

import random
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from mxnet import gluon, image, nd

from jobs.core.errors import DataError
from train.recordio import (RecordFile, faces_of, locate, property_problems, read_layout, read_property,
                            unpack)


class RecordDataset(gluon.data.Dataset):
    """Images of an indexed RecordIO file by position, with a read-ahead stash fed by :meth:`sampler`."""

    kind = ""

    def __init__(self, uri: str | Path, transform: Callable[..., Any] | None = None, **read_options: Any):
        self.uri = str(uri)
        self.files = locate(uri)
        self.file = RecordFile(self.files.rec, self.files.idx, **read_options)
        self.layout = read_layout(self.file)
        if self.layout.kind != self.kind:
            raise DataError(f"{uri}: holds {self.layout.kind} records, not {self.kind} records")
        self.keys = self.layout.image_keys
        self._transform = transform
        self._stash: OrderedDict[int, bytes] = OrderedDict()
        self._stash_records = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.keys)

    def __getstate__(self) -> dict[str, Any]:
        """Picklable for DataLoader worker processes, which start with an empty stash."""
        return {**self.__dict__, "_stash": OrderedDict(), "_lock": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    def payload(self, idx: int) -> bytes:
        """Record bytes of sample ``idx``: from the read-ahead stash when a sampler put them there."""
        key = self.keys[idx]
        with self._lock:
            data = self._stash.pop(key, None)
        return data if data is not None else self.file.read_idx(key)

    def stash(self, key: int, data: bytes) -> None:
        """Keep a read-ahead record for the next ``__getitem__``; the oldest go first when full."""
        with self._lock:
            self._stash[key] = data
            while len(self._stash) > self._stash_records:
                self._stash.popitem(last=False)

    def decode(self, payload: bytes) -> tuple[Any, Any]:
        """``(image, target)`` of one record payload; each kind of dataset says how."""
        raise NotImplementedError

    def __getitem__(self, idx: int) -> tuple[Any, Any]:
        sample = self.decode(self.payload(idx))
        return self._transform(*sample) if self._transform is not None else sample

    def sampler(self, shuffle: bool = False, seed: int | None = None, block: int = 64,
                window: int = 16) -> "ReadAheadSampler":
        """A Gluon sampler that streams records ahead of use (see :class:`ReadAheadSampler`)."""
        return ReadAheadSampler(self, shuffle, seed, block, window)


class ReadAheadSampler(gluon.data.Sampler):
    """Yields sample positions while streaming their records into the dataset's stash.

    With ``shuffle`` the positions are cut into blocks of ``block`` contiguous samples; block order
    is random and samples are shuffled within each window of (up to) ``window`` blocks. Each window is read
    in file order (large ranged reads), so randomness costs no extra requests; a new ``seed`` per
    epoch comes from ``random`` unless ``seed`` is fixed."""

    def __init__(self, dataset: RecordDataset, shuffle: bool, seed: int | None, block: int, window: int):
        self.dataset, self.shuffle, self.seed = dataset, shuffle, seed
        self.block, self.window = max(1, block), max(1, window)
        # Two windows: the one being consumed and the next, for loaders that sample a batch ahead.
        dataset._stash_records = max(dataset._stash_records, 2 * self.block * self.window)

    def __len__(self) -> int:
        return len(self.dataset)

    def windows(self) -> list[list[int]]:
        """The epoch's positions, grouped in the windows they are read and yielded by."""
        n = len(self.dataset)
        blocks = [list(range(i, min(i + self.block, n))) for i in range(0, n, self.block)]
        rng = random.Random(self.seed)
        if self.shuffle:
            rng.shuffle(blocks)
        # Windows grow 2, 4, 8 ... blocks up to ``window`` so the first batch waits for little data.
        groups, i, size = [], 0, min(2, self.window)
        while i < len(blocks):
            groups.append(sorted(p for b in blocks[i:i + size] for p in b))
            i, size = i + size, min(2 * size, self.window)
        if self.shuffle:
            for group in groups:
                rng.shuffle(group)
        return groups

    def __iter__(self) -> Iterator[int]:
        data, keys = self.dataset, self.dataset.keys
        groups = self.windows()
        fetch = [keys[p] for group in groups for p in sorted(group)]
        stream = data.file.read_many(fetch)
        for group in groups:
            for _ in group:
                data.stash(*next(stream))
            yield from group


class RecognitionDataset(RecordDataset):
    """insightface recognition RecordIO: ``(image RGB HxWx3 uint8 NDArray, label float32)``.

    ``num_classes`` and ``image_size`` come from the data; a ``property`` file that disagrees is an
    error, since training would size the classifier wrongly."""

    kind = "recognition"

    def __init__(self, uri: str | Path, transform: Callable[..., Any] | None = None, **options: Any):
        super().__init__(uri, transform, **options)
        ranges = self.layout.id_ranges
        prop = read_property(self.files.property)
        self.num_classes = len(ranges) if ranges is not None else (prop[0] if prop else None)
        first = self.decode(self.file.read_idx(self.keys[0]))[0]
        self.image_size = tuple(first.shape[:2])
        problems = property_problems(prop, len(ranges) if ranges is not None else None, list(self.image_size),
                                     self.files.property)
        if problems:
            raise DataError("; ".join(problems))

    def decode(self, payload: bytes) -> tuple[nd.NDArray, float]:
        header, img = unpack(payload)
        label = header.label if np.isscalar(header.label) else np.asarray(header.label).reshape(-1)[0]
        return image.imdecode(img), float(label)


class DetectionDataset(RecordDataset):
    """Detection RecordIO from ``pack-detection``: ``(image RGB HxWx3 uint8 NDArray, faces (n, 20))``."""

    kind = "detection"

    def decode(self, payload: bytes) -> tuple[nd.NDArray, np.ndarray]:
        header, img = unpack(payload)
        return image.imdecode(img), faces_of(header.label)
