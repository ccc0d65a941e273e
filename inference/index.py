"""The gallery's search index: the kinds of faiss inner-product index a gallery can use, the one
factory that builds them, and how to measure an approximate one's recall. faiss is imported
inside the functions and numpy loads on first use (:mod:`jobs.core.lazy`), so the CLI can offer
:data:`INDEX_KINDS` as choices at start-up.
"""
from __future__ import annotations

from typing import Any, Callable

from jobs.core.errors import DataError
from jobs.core.lazy import numpy as np

INDEX_KINDS = ("flat", "hnsw", "ivf")  # flat is exact; hnsw and ivf are approximate


def _flat(dim: int, vectors: Any) -> Any:
    import faiss

    index = faiss.IndexFlatIP(dim)
    index.add(vectors)
    return index


def _hnsw(dim: int, vectors: Any) -> Any:
    import faiss

    index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efSearch = 128
    index.add(vectors)
    return index


def _ivf(dim: int, vectors: Any) -> Any:
    import faiss

    nlist = max(1, min(4096, int(4 * np.sqrt(len(vectors)))))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.nprobe = max(1, nlist // 16)
    index.add(vectors)
    return index


INDEXES: dict[str, Callable[[int, Any], Any]] = dict(zip(INDEX_KINDS, (_flat, _hnsw, _ivf)))


def check_kind(kind: str) -> str:
    """``kind`` when it is one of :data:`INDEX_KINDS`, else a :class:`DataError` listing them."""
    if kind not in INDEXES:
        raise DataError(f"unknown index type '{kind}'; expected one of {', '.join(INDEX_KINDS)}")
    return kind


def make_index(kind: str, vectors: Any) -> Any:
    """A faiss inner-product index of ``kind`` (flat = exact; hnsw, ivf = approximate) over ``vectors``."""
    return INDEXES[check_kind(kind)](vectors.shape[1], np.ascontiguousarray(vectors, dtype=np.float32))


def index_recall(index: Any, vectors: Any, queries: int = 1000, seed: int = 0) -> float:
    """Recall@1 of ``index`` against exact search, for noisy copies of up to ``queries`` stored
    vectors (a stored vector would trivially find itself)."""
    rng = np.random.default_rng(seed)
    picked = vectors[rng.choice(len(vectors), size=min(queries, len(vectors)), replace=False)]
    probe = picked + rng.normal(0, 0.5 / np.sqrt(vectors.shape[1]), picked.shape).astype(np.float32)
    probe /= np.linalg.norm(probe, axis=1, keepdims=True)
    exact = (probe @ vectors.T).argmax(axis=1)
    _, found = index.search(probe, 1)
    return float(np.mean(found[:, 0] == exact))
