"""The one bounded pool map: results in input order, at most ``ahead`` items in flight, work
chained from task to task, and nothing left running when the reader stops early."""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import pytest

from jobs.core.parallel import bounded_map, bounded_start


def test_results_keep_the_input_order_however_long_each_takes():
    assert list(bounded_map(lambda n: time.sleep(0.001 * (n % 3)) or n * n, range(20), workers=3)) == \
        [n * n for n in range(20)]


def test_at_most_ahead_items_are_started_before_the_first_is_read():
    started = []

    def work(n: int) -> int:
        started.append(n)
        return n

    results = bounded_map(work, range(100), workers=2, ahead=4)
    assert next(results) == 0
    assert len(started) <= 5  # the four in flight and the one submitted after the first was read
    results.close()


def test_an_item_may_chain_tasks_and_its_error_is_raised_in_its_place():
    """``start`` submits an item's first task; a callback submits its second, as faces.analyse does."""

    def start(pool, n: int) -> Future:
        done: Future = Future()

        def second(first: Future) -> None:
            pool.submit(lambda: 1 / first.result()).add_done_callback(
                lambda f: done.set_exception(f.exception()) if f.exception() else done.set_result(f.result()))

        pool.submit(lambda: n - 3).add_done_callback(second)
        return done

    results = bounded_start(start, range(6), workers=2)
    assert [next(results) for _ in range(3)] == [-1 / 3, -1 / 2, -1.0]
    with pytest.raises(ZeroDivisionError):
        next(results)


def test_a_reader_that_stops_early_waits_only_for_what_is_in_flight():
    gate, ran = threading.Event(), []

    def work(n: int) -> int:
        gate.wait(5)  # bounded: the test sets it at once
        ran.append(n)
        return n

    results = bounded_map(work, range(50), workers=1, ahead=10, name="parallel-test")
    gate.set()
    next(results)
    results.close()
    assert len(ran) <= 11 and not [t for t in threading.enumerate() if t.name.startswith("parallel-test")]
