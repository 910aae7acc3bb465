"""Wait for a condition another process makes true: the one polling loop of the tests and benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], what: str, timeout_s: float = 30, interval_s: float = 0.05) -> T:
    """Call `condition` until it returns a truthy value and return that value.

    Raises TimeoutError naming `what` when `timeout_s` passes first; exceptions from `condition` propagate,
    so a condition can fail fast (a server that exited) instead of waiting out the timeout.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} (waited {timeout_s:g} s)")
        time.sleep(interval_s)
