"""Admission to a model's bounded queue, and how fast that queue drains.

The state lives in shared memory created before LitServe forks its API processes, so every process
sees one queue depth and one drain rate per model.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from server import errors, telemetry

# Completions the drain rate averages over: enough to span a couple of batches (whose requests
# finish together, one long interval then zeros), few enough to follow a change of workload.
DRAIN_WINDOW = 16


class ModelQueue:
    """Requests admitted for one model and not finished (waiting or running), over all API processes,
    and the busy time per completion of the last `DRAIN_WINDOW` requests that left.

    The interval of a completion is the time since the previous completion, or since the queue last
    became busy, so idle time never counts and a batch's requests share its run time. `wait_s(depth)`
    is then the measured time for `depth` requests to leave, batching and parallel workers included.
    """

    def __init__(self, model_id: str, max_depth: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.model_id = model_id
        self.max_depth = max_depth
        self.clock = clock
        self._lock = mp.Lock()
        self._depth = mp.RawValue("i", 0)
        self._intervals = mp.RawArray("d", DRAIN_WINDOW)
        self._completions = mp.RawValue("q", 0)
        self._busy_since = mp.RawValue("d", 0.0)

    @property
    def depth(self) -> int:
        return self._depth.value

    def admit(self) -> Admission:
        """A slot, or 429 with a `Retry-After` of the measured time for the queue to drain."""
        with self._lock:
            depth = self._depth.value
            if depth >= self.max_depth:
                retry_after_s = math.ceil(self._wait_s(depth) or 1.0)
                raise errors.rate_limited(retry_after_s)
            if depth == 0:
                self._busy_since.value = self.clock()
            self._depth.value = depth + 1
        telemetry.QUEUE_DEPTH.labels(model=self.model_id).set(depth + 1)
        return Admission(self)

    def wait_s(self, depth: int | None = None) -> float | None:
        """Expected seconds until `depth` (default: the current) queued requests have left; None
        before the first completion."""
        with self._lock:
            return self._wait_s(self._depth.value if depth is None else depth)

    def _wait_s(self, depth: int) -> float | None:
        count = min(self._completions.value, DRAIN_WINDOW)
        if count == 0:
            return None
        return depth * sum(self._intervals[:count]) / count

    def leave(self) -> None:
        """One admitted request has finished (called once per slot, through `Admission.release`)."""
        now = self.clock()
        with self._lock:
            index = self._completions.value % DRAIN_WINDOW
            self._intervals[index] = now - self._busy_since.value
            self._completions.value += 1
            self._busy_since.value = now
            self._depth.value -= 1
            depth = self._depth.value
        telemetry.QUEUE_DEPTH.labels(model=self.model_id).set(depth)


@dataclass
class Admission:
    """A slot in a model's queue; `release` is idempotent so every exit path may call it."""

    queue: ModelQueue
    held: bool = field(default=True)

    def release(self) -> None:
        if self.held:
            self.held = False
            self.queue.leave()
