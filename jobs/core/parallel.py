"""The one bounded thread-pool map: results in input order with at most ``ahead`` items in
flight, so a long input list never piles up decoded images or downloaded records in memory."""
from __future__ import annotations

from collections import deque
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def bounded_map(fn: Callable[[T], R], items: Iterable[T], workers: int, ahead: int | None = None,
                name: str = "faceops") -> Iterator[R]:
    """Yield ``fn(item)`` for each item, in order, computed by ``workers`` threads with at most
    ``ahead`` (default ``2 * workers``) results waiting. An exception in ``fn`` is raised where
    its result would have been yielded."""
    return bounded_start(lambda pool, item: pool.submit(fn, item), items, workers, ahead, name)


def bounded_start(start: Callable[[Executor, T], Future], items: Iterable[T], workers: int,
                  ahead: int | None = None, name: str = "faceops") -> Iterator[R]:
    """:func:`bounded_map` for work that is more than one task: ``start(pool, item)`` submits the
    item's first task (whose callbacks may submit more to ``pool``) and returns a Future that is
    set when the item is finished. Items are yielded in order, at most ``ahead`` in flight; when
    the caller stops reading, those in flight finish (what their callbacks submit then is refused)
    and no thread is left behind. Nothing is cancelled: cancelling runs a task's callbacks inside
    the pool's shutdown lock, where a callback that submits the next task would deadlock."""
    workers = max(1, workers)
    ahead = max(1, ahead or 2 * workers)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) as pool:
        pending: deque[Future] = deque()
        for item in items:
            pending.append(start(pool, item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
