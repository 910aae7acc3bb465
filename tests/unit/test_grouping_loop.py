"""The worker loop in-process: collecting jobs, grouping compatible ones, and what every job is sent."""

from __future__ import annotations

import queue
import time
from pathlib import Path
from typing import Any

import pytest

from ecad.tiers import Tier
from server.loop import Emit, GenerationCancelledError, GroupingLoop
from server.messages import Done, Failed, Image, Job, Report, Started, WorkerMessage
from server.state import StateDir
from server.transport import Envelope, Inbox


def job(uid: str, n: int = 1, steps: int = 20, deadline_s: float = 60.0) -> Job:
    now = time.monotonic()
    return Job(
        uid=uid,
        model="m",
        tier=Tier.FAST,
        schedule_digest="d",
        prompt="p",
        negative_prompt=None,
        seeds=tuple(range(n)),
        width=64,
        height=64,
        steps=steps,
        guidance_scale=4.5,
        output_format="png",
        output_compression=None,
        partial_images=0,
        enqueued_at=now,
        deadline=now + deadline_s,
    )


def report_of(jobs: list[Job]) -> Report:
    return Report(
        schedule="s",
        schedule_digest="d",
        steps=jobs[0].steps,
        guidance_scale=4.5,
        seeds=(),
        computed=0,
        reused=0,
        skipped=0,
        batch_images=sum(j.n for j in jobs),
        prompt_tokens=1,
        queue_ms=0.0,
        generation_ms=0.0,
    )


class RecordingOutbox:
    def __init__(self) -> None:
        self.sent: list[tuple[str, WorkerMessage | str]] = []

    def send(self, envelope: Envelope, message: WorkerMessage) -> None:
        self.sent.append((envelope.job.uid, message))

    def close(self, envelope: Envelope) -> None:
        self.sent.append((envelope.job.uid, "closed"))

    def of(self, uid: str) -> list[WorkerMessage | str]:
        return [message for target, message in self.sent if target == uid]


class GroupWorker:
    """Emits one image per seed and a `Done`; or raises what it is told to."""

    def __init__(self, state: StateDir, raises: Exception | None = None) -> None:
        self.state = state
        self.raises = raises
        self.groups: list[list[str]] = []

    def run_group(self, jobs: list[Job], emit: Emit) -> None:
        self.groups.append([j.uid for j in jobs])
        if self.raises is not None:
            raise self.raises
        for j in jobs:
            for i in range(j.n):
                emit(j.uid, Image(i, f"{j.uid}-{i}"))
            emit(j.uid, Done(report_of(jobs)))


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    folder = StateDir(tmp_path)
    folder.start_run()
    return folder


def inbox_with(*jobs: Job) -> Inbox:
    waiting: queue.Queue[Any] = queue.Queue()
    for j in jobs:
        waiting.put((0, j.uid, time.monotonic(), j))  # LitServe's (route, uid, timestamp, payload)
    return Inbox(waiting)


def test_collect_takes_what_waits_up_to_max_images() -> None:
    loop = GroupingLoop(window_s=0.0, max_images=4)
    inbox = inbox_with(job("a", n=2), job("b", n=2), job("c"))
    assert [e.job.uid for e in loop.collect(inbox)] == ["a", "b"]
    assert [e.job.uid for e in loop.collect(inbox)] == ["c"]
    assert inbox.get(0) is None


def test_compatible_jobs_share_a_call_and_every_job_is_started_answered_and_closed(state: StateDir) -> None:
    loop = GroupingLoop(window_s=0.0, max_images=8)
    worker = GroupWorker(state)
    outbox = RecordingOutbox()
    batch = loop.collect(inbox_with(job("a", n=2), job("b", steps=10), job("c")))
    loop.serve(worker, batch, outbox)
    assert worker.groups == [["a", "c"], ["b"]]
    done_ac, done_b = Done(report_of([job("a", n=2), job("c")])), Done(report_of([job("b", steps=10)]))
    started = outbox.sent[0][1]
    assert isinstance(started, Started)
    assert outbox.of("a") == [started, Image(0, "a-0"), Image(1, "a-1"), done_ac, "closed"]
    assert outbox.of("c") == [started, Image(0, "c-0"), done_ac, "closed"]
    assert outbox.of("b") == [started, Image(0, "b-0"), done_b, "closed"]


def test_jobs_cancelled_or_past_their_deadline_are_not_run(state: StateDir) -> None:
    loop = GroupingLoop(window_s=0.0, max_images=8)
    worker = GroupWorker(state)
    outbox = RecordingOutbox()
    state.cancel("gone", max_age_s=60)
    batch = loop.collect(inbox_with(job("late", deadline_s=-1.0), job("gone"), job("live")))
    loop.serve(worker, batch, outbox)
    assert worker.groups == [["live"]]
    for uid in ("late", "gone"):
        assert outbox.of(uid)[1:] == [Failed(504, "cancelled before start", "timeout"), "closed"]
    assert not state.is_cancelled("gone")  # the mark is deleted once the job is closed


@pytest.mark.parametrize(
    ("raised", "failed"),
    [
        (GenerationCancelledError(), Failed(504, "cancelled", "timeout")),
        (RuntimeError("boom"), Failed(500, "generation failed: RuntimeError", None)),
    ],
)
def test_a_failed_group_fails_each_of_its_jobs(state: StateDir, raised: Exception, failed: Failed) -> None:
    loop = GroupingLoop(window_s=0.0, max_images=8)
    worker = GroupWorker(state, raises=raised)
    outbox = RecordingOutbox()
    loop.serve(worker, loop.collect(inbox_with(job("a"), job("b"))), outbox)
    for uid in ("a", "b"):
        assert outbox.of(uid)[1:] == [failed, "closed"]


def test_the_window_waits_for_more_jobs() -> None:
    loop = GroupingLoop(window_s=0.05, max_images=8)
    started = time.monotonic()
    assert [e.job.uid for e in loop.collect(inbox_with(job("a")))] == ["a"]
    assert time.monotonic() - started >= 0.05  # nothing else came: the window ran out
