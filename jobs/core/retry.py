"""The one retry loop: exponential backoff with jitter for calls that may fail transiently
(a throttled cloud API, a registry restarting, an S3 endpoint briefly down)."""
from __future__ import annotations

import random
import time
from typing import Callable, TypeVar

T = TypeVar("T")


def retrying(call: Callable[[], T], transient: Callable[[Exception], bool], attempts: int = 4,
             delay: float = 1.0, say: Callable[[str], None] | None = None,
             give_up: Callable[[Exception, int], Exception] | None = None) -> T:
    """Run ``call``; while it raises an exception that ``transient`` accepts, wait and try again,
    doubling the wait each time (times a random factor in [0.5, 1] so clients do not retry in step).

    A non-transient error is raised at once. After ``attempts`` tries the last error is raised, or
    ``give_up(error, attempts)`` when given (to say how often it was tried). ``say`` hears each retry.
    """
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as exc:
            if not transient(exc):
                raise
            if attempt == attempts:
                if give_up is not None:
                    raise give_up(exc, attempts) from None
                raise
            wait = delay * 2 ** (attempt - 1) * random.uniform(0.5, 1.0)
            if say is not None:
                say(f"{exc}; retrying in {wait:.1f}s")
            time.sleep(wait)
    raise ValueError("attempts must be at least 1")
