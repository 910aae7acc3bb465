"""Reading one request's worker messages in the API process, with its deadline and crash watch."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from litserve.utils import LitAPIStatus
from starlette.requests import Request

from server import errors
from server.state import process_alive

# How often a waiting request checks its worker's pid and its client: bounds crash and disconnect
# detection latency.
WATCH_INTERVAL_S = 0.25


class ClientDisconnectedError(Exception):
    """The client disconnected; nobody will read the answer."""


class Channel:
    """The messages of one request, read from LitServe's response buffer item.

    `next()` returns the next content message (partial, image or done) and raises `ApiError` for a
    worker error, a passed deadline or a dead worker, and `ClientDisconnectedError` when the client left.
    """

    def __init__(self, item: Any, deadline: float, deadline_s: float, request: Request | None) -> None:
        self.item = item
        self.deadline = deadline
        self.deadline_s = deadline_s
        self.request = request  # None: disconnects are noticed by the response's own cancellation
        self.worker_pid: int | None = None
        # The worker has sent its last message for this request: nothing is left to cancel.
        self.worker_done = False

    async def next(self) -> dict[str, Any]:
        while True:
            message = self._pop()
            if message is None:
                await self._wait()
                continue
            if message["event"] == "started":
                self.worker_pid = message["pid"]
                continue
            if message["event"] in ("done", "error"):
                self.worker_done = True
            if message["event"] == "error":
                status = message["status"]
                if status == 504:
                    raise errors.deadline_exceeded(self.deadline_s)
                raise errors.ApiError(
                    status, message["message"], type=errors.SERVER_ERROR, code=message["code"]
                )
            return message

    def _pop(self) -> dict[str, Any] | None:
        queue = self.item.response_queue
        if not queue:
            return None
        data, status = queue.popleft()
        if status in (LitAPIStatus.ERROR, LitAPIStatus.FINISH_STREAMING):
            self.worker_done = True
        if status == LitAPIStatus.ERROR:
            raise errors.internal("The inference worker failed.")
        if status == LitAPIStatus.FINISH_STREAMING:
            raise errors.internal("The inference worker ended the request without a result.")
        return data

    async def _wait(self) -> None:
        # Single-threaded event loop: nothing can append between the empty check and clear().
        self.item.event.clear()
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise errors.deadline_exceeded(self.deadline_s)
        try:
            await asyncio.wait_for(self.item.event.wait(), min(WATCH_INTERVAL_S, remaining))
        except TimeoutError:
            if self.worker_pid is not None and not process_alive(self.worker_pid):
                raise errors.worker_crashed() from None
            if self.request is not None and await self.request.is_disconnected():
                raise ClientDisconnectedError() from None
