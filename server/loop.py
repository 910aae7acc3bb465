"""The worker loop: collect requests for a short window, group compatible ones, run groups in turn.

LitServe's own batching takes requests FIFO with no notion of compatibility, and its streaming loops
cannot report an error after the first item. This loop owns both: every job gets `Started` (with the
worker's pid, so the API process can detect a crash), then its partials and images and a `Done`, or a
`Failed`; then its envelope is closed.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from server import telemetry
from server.messages import Failed, Job, Started, WorkerMessage
from server.state import StateDir
from server.transport import Envelope, Inbox, Outbox

logger = logging.getLogger(__name__)

Emit = Callable[[str, WorkerMessage], None]  # job uid, message


class GenerationCancelledError(Exception):
    """Every job of a group was cancelled (client gone or deadline passed); stop between steps."""


class Worker(Protocol):
    state: StateDir

    def run_group(self, jobs: list[Job], emit: Emit) -> None:
        """Generate every image of `jobs` (one group key) and emit their images and `Done`s; may raise
        `GenerationCancelledError`."""
        ...


@dataclass(frozen=True)
class GroupingLoop:
    window_s: float
    max_images: int
    poll_s: float = 1.0  # how often an idle worker looks for the shutdown sentinel

    def __call__(self, worker: Worker, inbox: Inbox, outbox: Outbox) -> None:
        """Serve until the inbox says the server stops (`StopWorkerError`)."""
        while True:
            self.serve(worker, self.collect(inbox), outbox)

    def collect(self, inbox: Inbox) -> list[Envelope]:
        """Block for one job, then take what is already waiting and, for `window_s`, what arrives,
        until `max_images` images are held. With no window, batches still form under load: jobs that
        queued up while the previous batch ran are taken together, and an idle worker adds no delay.
        """
        batch: list[Envelope] = []
        images = 0
        closes_at: float | None = None
        while images < self.max_images:
            wait_s = self.poll_s if closes_at is None else max(0.0, closes_at - time.monotonic())
            envelope = inbox.get(wait_s)
            if envelope is None:
                if closes_at is None:
                    continue
                break
            batch.append(envelope)
            images += envelope.job.n
            if closes_at is None:
                closes_at = time.monotonic() + self.window_s
        return batch

    def serve(self, worker: Worker, batch: list[Envelope], outbox: Outbox) -> None:
        envelopes = {envelope.job.uid: envelope for envelope in batch}

        def emit(uid: str, message: WorkerMessage) -> None:
            outbox.send(envelopes[uid], message)

        for envelope in batch:
            outbox.send(envelope, Started(os.getpid()))
        groups: dict[tuple[object, ...], list[Job]] = {}
        for envelope in batch:
            groups.setdefault(envelope.job.group_key(), []).append(envelope.job)
        for jobs in groups.values():
            self._run(worker, jobs, emit)
            for job in jobs:
                worker.state.forget(job.uid)
                outbox.close(envelopes[job.uid])

    def _run(self, worker: Worker, jobs: list[Job], emit: Emit) -> None:
        now = time.monotonic()
        live = []
        for job in jobs:
            if now > job.deadline or worker.state.is_cancelled(job.uid):
                emit(job.uid, Failed(504, "cancelled before start", "timeout"))
            else:
                telemetry.QUEUE_WAIT.labels(model=job.model).observe(now - job.enqueued_at)
                live.append(job)
        if not live:
            return
        try:
            worker.run_group(live, emit)
        except GenerationCancelledError:
            for job in live:
                emit(job.uid, Failed(504, "cancelled", "timeout"))
        except Exception as error:
            logger.exception("generation failed for %s", [job.uid for job in live])
            for job in live:
                emit(job.uid, Failed(500, f"generation failed: {type(error).__name__}", None))
