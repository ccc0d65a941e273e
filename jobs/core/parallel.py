"""The one bounded thread-pool map: results in input order with at most ``ahead`` calls in
flight, so a long input list never piles up decoded images or downloaded records in memory."""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def bounded_map(fn: Callable[[T], R], items: Iterable[T], workers: int, ahead: int | None = None,
                name: str = "faceops") -> Iterator[R]:
    """Yield ``fn(item)`` for each item, in order, computed by ``workers`` threads with at most
    ``ahead`` (default ``2 * workers``) results waiting. An exception in ``fn`` is raised where
    its result would have been yielded."""
    workers = max(1, workers)
    ahead = max(1, ahead or 2 * workers)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) as pool:
        pending: deque[Future] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
