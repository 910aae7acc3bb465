"""Reading one request's worker messages in the API process, with its deadline and crash watch."""

from __future__ import annotations

import time

from starlette.requests import Request

from server import errors
from server.messages import Done, Failed, Image, Partial, Started
from server.state import process_alive
from server.transport import Delivery

# How often a waiting request checks its worker's pid and its client: bounds crash and disconnect
# detection latency.
WATCH_INTERVAL_S = 0.25

Content = Partial | Image | Done


class ClientDisconnectedError(Exception):
    """The client disconnected; nobody will read the answer."""


class Channel:
    """The content messages of one request (partials, images, then `Done`).

    `next()` raises `ApiError` for a `Failed`, a passed deadline or a dead worker, and
    `ClientDisconnectedError` when the client left (watched only when `request` is given: a stream
    notices through its own cancellation).
    """

    def __init__(
        self, delivery: Delivery, deadline: float, deadline_s: float, request: Request | None
    ) -> None:
        self.delivery = delivery
        self.deadline = deadline
        self.deadline_s = deadline_s
        self.request = request
        self.worker_pid: int | None = None
        # The worker has sent its last message for this request: nothing is left to cancel.
        self.worker_done = False

    async def next(self) -> Content:
        while True:
            message = self.delivery.pop()
            if message is None:
                await self._wait()
                continue
            match message:
                case Started(pid=pid):
                    self.worker_pid = pid
                case Failed(status=504):
                    self.worker_done = True
                    raise errors.deadline_exceeded(self.deadline_s)
                case Failed(status=status, message=text, code=code):
                    self.worker_done = True
                    raise errors.ApiError(status, text, type=errors.SERVER_ERROR, code=code)
                case Done():
                    self.worker_done = True
                    return message
                case Partial() | Image():
                    return message

    async def _wait(self) -> None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise errors.deadline_exceeded(self.deadline_s)
        if await self.delivery.wait(min(WATCH_INTERVAL_S, remaining)):
            return
        if self.worker_pid is not None and not process_alive(self.worker_pid):
            raise errors.worker_crashed()
        if self.request is not None and await self.request.is_disconnected():
            raise ClientDisconnectedError()
