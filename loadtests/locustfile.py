"""Locust scenarios for `POST /v1/images/generations` (run bounded by loadtests/run.py, or by hand:
`locust -f loadtests/locustfile.py --headless -H http://127.0.0.1:8000 -u 4 -r 2 -t 30s`).

Each request is named after the `quality` it asks for, so Locust's tables are per tier. Invalid
requests are named `invalid:<field>`: the server answering them with 400 is the expected outcome and
counts as a success; any other answer is a failure. A 429 (queue full) is the server shedding load as
designed, so it counts as a success too; the runner reports its rate separately.
"""

from __future__ import annotations

import os
import random
from typing import Any

from gevent.pool import Group
from locust import HttpUser, between, task

# Headers of the API key when the server has keys (ECAD_API_KEYS); the default config runs open.
API_KEY = os.environ.get("ECAD_LOAD_API_KEY", "")
# quality values → weights: mostly cached tiers, some `auto` and a little `exact` (no cache).
QUALITIES = {"low": 4, "medium": 3, "high": 2, "auto": 2, "exact": 1}
# Small sides keep a CPU run of the tiny model meaningful; the model accepts 64..512.
SIZES = {"64x64": 3, "128x128": 3, "256x256": 2}
# (field, value) pairs the server must reject with 400 and the field's name as `param`.
INVALID = [
    ("quality", "ultra"),
    ("size", "100x100"),
    ("n", 0),
    ("n", 11),
    ("prompt", ""),
    ("output_format", "gif"),
]
BURST_SIZE = 6


def pick(weights: dict[str, int]) -> str:
    return random.choices(list(weights), weights=list(weights.values()))[0]


class ImageUser(HttpUser):
    wait_time = between(0.2, 1.5)

    def on_start(self) -> None:
        if API_KEY:
            self.client.headers["Authorization"] = f"Bearer {API_KEY}"

    def generate(self, body: dict[str, Any]) -> None:
        quality = body["quality"]
        with self.client.post(
            "/v1/images/generations",
            json=body,
            name=quality,
            catch_response=True,
            timeout=180,
            context={"n": body["n"]},  # images asked for, read by the runner for images/s
        ) as response:
            if response.status_code in (200, 429):
                response.success()
            else:
                response.failure(f"{response.status_code}: {response.text[:200]}")

    def valid_body(self) -> dict[str, Any]:
        return {
            "prompt": random.choice(["a red circle", "two blue squares", "a lighthouse at dusk"]),
            "quality": pick(QUALITIES),
            "size": pick(SIZES),
            "n": random.choices([1, 2, 4], weights=[6, 3, 1])[0],
            "seed": random.randrange(2**31),
        }

    @task(10)
    def single(self) -> None:
        self.generate(self.valid_body())

    @task(2)
    def burst(self) -> None:
        """Several requests at once from one user: pushes the queue towards max_queue (and 429)."""
        group = Group()
        for _ in range(BURST_SIZE):
            group.spawn(self.generate, self.valid_body())
        group.join()

    @task(2)
    def invalid(self) -> None:
        field, value = random.choice(INVALID)
        body = {**self.valid_body(), field: value}
        with self.client.post(
            "/v1/images/generations", json=body, name=f"invalid:{field}", catch_response=True, timeout=30
        ) as response:
            param = response.json().get("error", {}).get("param") if response.status_code == 400 else None
            if param == field:
                response.success()
            else:
                response.failure(f"expected 400 with param {field!r}, got {response.status_code}")
