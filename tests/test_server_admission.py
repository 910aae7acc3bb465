"""Admission: the bounded queue, its drain rate, and an honest `Retry-After` on a real server."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest

from harness.launcher import RunningServer
from server import errors
from server.admission import DRAIN_WINDOW, ModelQueue
from tests.server_configs import server_config


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
    clock.now = 101.0
    slots[0].release()
    clock.now = 104.0
    slots[1].release()
    # The last DRAIN_WINDOW completions: 1.5, 0, 0, 1, 3.
    assert queue.wait_s(1) == pytest.approx(5.5 / 5)
    assert queue.depth == 1
    assert DRAIN_WINDOW >= 5


@pytest.fixture(scope="module")
def server(start_server: Callable[..., RunningServer]) -> RunningServer:
    return start_server(server_config(max_queue=4, batch_window_ms=0))


def burst(server: RunningServer, requests: int) -> tuple[float, list[tuple[float, Any]]]:
    """`requests` slow requests at once; (start, [(time answered, response or RateLimitError)])."""

    def one(_: int) -> tuple[float, Any]:
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0, timeout=120)
        try:
            outcome: Any = client.images.generate(
                prompt="busy",
                size="256x256",
                n=4,
                extra_body={"num_inference_steps": 60, "quality": "exact"},
            )
        except openai.RateLimitError as error:
            outcome = error
        return time.monotonic(), outcome

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=requests) as pool:
        return started, list(pool.map(one, range(requests)))


def test_retry_after_is_the_measured_drain_time(server: RunningServer) -> None:
    burst(server, 12)  # teaches the server how fast such a burst drains
    _, outcomes = burst(server, 12)
    served = [at for at, outcome in outcomes if not isinstance(outcome, openai.RateLimitError)]
    limited = [(at, outcome) for at, outcome in outcomes if isinstance(outcome, openai.RateLimitError)]
    assert len(served) == 4  # max_queue
    assert len(limited) == 8
    drained_at = max(served)
    for answered_at, error in limited:
        retry_after = int(error.response.headers["retry-after"])
        drain_s = drained_at - answered_at
        assert drain_s > 1.0, "the burst must take long enough for whole seconds to mean something"
        assert drain_s / 2 <= retry_after <= 2 * drain_s, (retry_after, drain_s)
        assert error.response.json() == {
            "error": {
                "message": "The server is at capacity for this model; retry later.",
                "type": "rate_limit_error",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        }
