"""The worker loop: collect requests for a short window, group compatible ones, run groups in turn.

LitServe's own batching takes requests FIFO with no notion of compatibility, and its streaming loops
cannot report an error after the first item. This loop owns both: every request gets a `started`
message (with the worker's pid, so the API process can detect a crash), then its partials, images and
a `done` (or an `error`), then the end-of-stream status.
"""

from __future__ import annotations

import logging
import os
import queue
import time
from collections.abc import Callable
from typing import Any

from litserve.loops.base import _SENTINEL_VALUE, LitLoop
from litserve.utils import LitAPIStatus, LoopResponseType

from server import metrics
from server.protocol import GenerationCancelledError, Job

logger = logging.getLogger(__name__)

_POLL_S = 1.0  # how often an idle worker looks for the shutdown sentinel


class _StopLoopError(Exception):
    pass


class GroupingLoop(LitLoop):
    def __init__(self, window_s: float, max_images: int) -> None:
        super().__init__()
        self.window_s = window_s
        self.max_images = max_images

    def __call__(
        self,
        lit_api: Any,
        device: str,
        worker_id: int,
        request_queue: Any,
        transport: Any,
        workers_setup_status: Any,
        callback_runner: Any,
    ) -> None:
        while True:
            try:
                batch = self._collect(request_queue)
            except _StopLoopError:
                return
            self._serve(lit_api, batch, transport)

    def _collect(self, request_queue: Any) -> list[tuple[int, str, Job]]:
        """Block for one request, then take what is already waiting and, for `window_s`, what arrives,
        until `max_images` images are held. With no window, batches still form under load: requests
        that queued up while the previous batch ran are taken together, and an idle worker adds no delay.
        """
        items: list[tuple[int, str, Job]] = []
        images = 0
        closes_at: float | None = None
        while images < self.max_images:
            try:
                if closes_at is None:
                    item = request_queue.get(timeout=_POLL_S)
                else:
                    remaining = closes_at - time.monotonic()
                    item = request_queue.get(timeout=remaining) if remaining > 0 else request_queue.get(False)
            except queue.Empty:
                if closes_at is None:
                    continue
                break
            except (EOFError, OSError):
                # The queue's manager process is gone: the server is shutting down.
                raise _StopLoopError() from None
            if item == _SENTINEL_VALUE:
                raise _StopLoopError()
            response_queue_id, uid, _timestamp, job = item
            items.append((response_queue_id, uid, job))
            images += job.n
            if closes_at is None:
                closes_at = time.monotonic() + self.window_s
        return items

    def _serve(self, lit_api: Any, batch: list[tuple[int, str, Job]], transport: Any) -> None:
        routes = {uid: response_queue_id for response_queue_id, uid, _ in batch}

        def emit(uid: str, message: dict[str, Any]) -> None:
            self._send(transport, routes[uid], uid, message)

        for uid in routes:
            emit(uid, {"event": "started", "pid": os.getpid()})
        groups: dict[tuple[Any, ...], list[Job]] = {}
        for _, _, job in batch:
            groups.setdefault(job.group_key(), []).append(job)
        for jobs in groups.values():
            self._run(lit_api, jobs, emit)
            for job in jobs:
                lit_api.state.forget(job.uid)
                self.put_response(
                    transport,
                    routes[job.uid],
                    job.uid,
                    "",
                    LitAPIStatus.FINISH_STREAMING,
                    LoopResponseType.STREAMING,
                )

    def _run(self, lit_api: Any, jobs: list[Job], emit: Callable[[str, dict[str, Any]], None]) -> None:
        now = time.monotonic()
        live = []
        for job in jobs:
            if now > job.deadline or lit_api.state.is_cancelled(job.uid):
                emit(
                    job.uid,
                    {"event": "error", "status": 504, "message": "cancelled before start", "code": "timeout"},
                )
            else:
                metrics.QUEUE_WAIT.labels(model=job.model).observe(now - job.enqueued_at)
                live.append(job)
        if not live:
            return
        try:
            lit_api.run_group(live, emit)
        except GenerationCancelledError:
            for job in live:
                emit(job.uid, {"event": "error", "status": 504, "message": "cancelled", "code": "timeout"})
        except Exception as error:
            logger.exception("generation failed for %s", [job.uid for job in live])
            message = f"generation failed: {type(error).__name__}"
            for job in live:
                emit(job.uid, {"event": "error", "status": 500, "message": message, "code": None})

    def _send(self, transport: Any, response_queue_id: int, uid: str, message: dict[str, Any]) -> None:
        self.put_response(
            transport, response_queue_id, uid, message, LitAPIStatus.OK, LoopResponseType.STREAMING
        )
