"""An honest `Retry-After` on a real server (the queue itself: tests/unit/test_admission.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest

from harness.launcher import RunningServer
from tests.server_configs import server_config


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
