"""Admission: the bounded queue of a model and its drain rate, in-process with a manual clock."""

from __future__ import annotations

import pytest

from server import errors
from server.admission import DRAIN_WINDOW, ModelQueue


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_drain_rate_counts_busy_time_per_completion() -> None:
    clock = Clock()
    queue = ModelQueue("m", max_depth=3, clock=clock)
    assert queue.wait_s() is None  # nothing measured yet
    slots = [queue.admit() for _ in range(3)]
    with pytest.raises(errors.ApiError) as caught:
        queue.admit()
    assert (caught.value.status, caught.value.headers["retry-after"]) == (429, "1")  # no estimate: 1 s
    clock.now = 1.5  # one batch of all three requests took 1.5 s
    for slot in slots:
        slot.release()
        slot.release()  # idempotent
    assert queue.depth == 0
    assert queue.wait_s(3) == pytest.approx(1.5)
    clock.now = 100.0  # idle time between bursts does not count
    slots = [queue.admit() for _ in range(3)]
    with pytest.raises(errors.ApiError) as caught:
        queue.admit()
    assert caught.value.headers["retry-after"] == "2"  # ceil(3 requests × 0.5 s)
    assert caught.value.body() == {
        "error": {
            "message": "The server is at capacity for this model; retry later.",
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    clock.now = 101.0
    slots[0].release()
    clock.now = 104.0
    slots[1].release()
    # The last DRAIN_WINDOW completions: 1.5, 0, 0, 1, 3.
    assert queue.wait_s(1) == pytest.approx(5.5 / 5)
    assert queue.depth == 1
    assert DRAIN_WINDOW >= 5
