"""The only module that knows how LitServe moves requests: everything else sees jobs and messages.

LitServe runs each model's workers in their own processes, fed by a request queue per LitAPI, and
brings their answers back to the API process into a per-process response buffer. Its public hooks
(a LitSpec, a LitLoop) are used to own that path: the API side submits a `Job` and reads the
`WorkerMessage`s of a `Delivery`; the worker side reads `Envelope`s from an `Inbox` and answers into an
`Outbox`. The internals this depends on (buffer items, queue tuples, the stop sentinel, statuses) are
pinned with litserve's version in pyproject.toml and exercised by the end-to-end tests.
"""

from __future__ import annotations

import asyncio
import queue
import time
from collections import deque
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol

import litserve as ls
from litserve.loops.base import _SENTINEL_VALUE, LitLoop
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, LoopResponseType, ResponseBufferItem, WorkerSetupStatus

from server.messages import Failed, Job, WorkerMessage


class WorkerSpec(LitSpec):
    """Makes a model's LitAPI a streaming one that LitServe exposes on no route of its own (the
    gateway owns the routes), so one job can carry several messages and no GZip is added."""

    def __init__(self, api_path: str) -> None:
        super().__init__()
        # LitServe names a spec'd API's queue and workers by the spec's path, not the LitAPI's.
        self.api_path = api_path

    @property
    def stream(self) -> bool:
        return True

    def decode_request(self, request: Any, context_kwargs: Any = None) -> Any:
        return request

    def encode_response(self, output: Any, context_kwargs: Any = None) -> Any:
        return output


# -- API side -------------------------------------------------------------------------------------


class Delivery:
    """The messages of one submitted job, as they arrive in this API process."""

    def __init__(self, response_buffer: MutableMapping[str, Any], uid: str) -> None:
        # LitServe's response loop appends `(message, status)` to the item's queue and sets its event.
        self._buffer = response_buffer
        self.uid = uid
        self._item = ResponseBufferItem(event=asyncio.Event(), response_queue=deque())
        response_buffer[uid] = self._item

    def pop(self) -> WorkerMessage | None:
        """The next message, or None when none has arrived. LitServe's own end-of-stream and error
        statuses come out as `Failed`: a job always ends with a `Done` or `Failed` of its worker."""
        pending = self._item.response_queue
        if not pending:
            return None
        data, status = pending.popleft()
        if status == LitAPIStatus.ERROR:
            return Failed(500, "The inference worker failed.", None)
        if status == LitAPIStatus.FINISH_STREAMING:
            return Failed(500, "The inference worker ended the request without a result.", None)
        message: WorkerMessage = data
        return message

    async def wait(self, timeout_s: float) -> bool:
        """Wait until a message may have arrived; False when `timeout_s` passed first."""
        # Single-threaded event loop: nothing can append between the empty check and clear().
        if self._item.response_queue:
            return True
        self._item.event.clear()
        try:
            await asyncio.wait_for(self._item.event.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def release(self) -> None:
        self._buffer.pop(self.uid, None)


class Transport:
    """Submits jobs to the workers of a model (named by its LitAPI's path) from any API process."""

    def __init__(self, server: ls.LitServer) -> None:
        # Queues and this process's response-queue id exist once `run` has forked the API processes;
        # they are looked up per job.
        self._server = server

    def submit(self, api_path: str, job: Job) -> Delivery:
        delivery = Delivery(self._server.response_buffer, job.uid)
        route = self._server.app.response_queue_id
        self._server.litapi_request_queues[api_path].put((route, job.uid, time.monotonic(), job))
        return delivery

    def workers_ready(self) -> bool:
        statuses = dict(self._server.workers_setup_status or {})
        return bool(statuses) and all(value == WorkerSetupStatus.READY for value in statuses.values())


def remove_litserve_routes(server: ls.LitServer) -> None:
    """LitServe's `/`, health and info routes describe internals (paths, workers, devices) to anyone."""
    internal = {"/", server.healthcheck_path, server.info_path}
    server.app.router.routes[:] = [
        route for route in server.app.router.routes if getattr(route, "path", None) not in internal
    ]


# -- worker side ----------------------------------------------------------------------------------


class StopWorkerError(Exception):
    """The server is shutting down: the worker loop returns."""


@dataclass(frozen=True)
class Envelope:
    """A job as a worker receives it, with the return address of its API process."""

    job: Job
    route: int


class Inbox:
    """A worker's view of its model's request queue."""

    def __init__(self, request_queue: Any) -> None:
        self._queue = request_queue

    def get(self, timeout_s: float) -> Envelope | None:
        """The next job, or None after `timeout_s` (0: only what is already waiting)."""
        try:
            item = self._queue.get(timeout=timeout_s) if timeout_s > 0 else self._queue.get(False)
        except queue.Empty:
            return None
        except (EOFError, OSError):  # the queue's manager process is gone: shutdown
            raise StopWorkerError() from None
        if item == _SENTINEL_VALUE:
            raise StopWorkerError()
        route, _uid, _timestamp, job = item
        return Envelope(job, route)


class Outbox(Protocol):
    def send(self, envelope: Envelope, message: WorkerMessage) -> None: ...

    def close(self, envelope: Envelope) -> None:
        """Nothing more will be sent for this job."""
        ...


class WorkerLoop(LitLoop):
    """LitServe's worker entry point: runs `serve(lit_api, inbox, outbox)` until shutdown."""

    def __init__(self, serve: Callable[[Any, Inbox, Outbox], None]) -> None:
        super().__init__()
        self.serve = serve

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
        try:
            self.serve(lit_api, Inbox(request_queue), _LitOutbox(self, transport))
        except StopWorkerError:
            return


class _LitOutbox:
    def __init__(self, loop: LitLoop, transport: Any) -> None:
        self._loop = loop
        self._transport = transport

    def send(self, envelope: Envelope, message: WorkerMessage) -> None:
        self._put(envelope, message, LitAPIStatus.OK)

    def close(self, envelope: Envelope) -> None:
        self._put(envelope, "", LitAPIStatus.FINISH_STREAMING)

    def _put(self, envelope: Envelope, data: Any, status: LitAPIStatus) -> None:
        self._loop.put_response(
            self._transport, envelope.route, envelope.job.uid, data, status, LoopResponseType.STREAMING
        )
