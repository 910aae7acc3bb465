"""One request's worker messages as the API process reads them: content, failures, deadline, crashes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from typing import Any

import pytest
from litserve.utils import LitAPIStatus

from server import errors
from server.channel import Channel
from server.messages import Done, Failed, Image, Partial, Report, Started, WorkerMessage
from server.transport import Delivery

REPORT = Report(
    schedule="s",
    schedule_digest="d",
    steps=2,
    guidance_scale=1.0,
    seeds=(1,),
    computed=4,
    reused=0,
    skipped=0,
    batch_images=1,
    prompt_tokens=3,
    queue_ms=0.0,
    generation_ms=1.0,
)


def arrive(buffer: dict[str, Any], uid: str, message: WorkerMessage | str, status: LitAPIStatus) -> None:
    """What LitServe's response loop does with a worker's answer in the API process."""
    item = buffer[uid]
    item.response_queue.append((message, status))
    item.event.set()


def channel(deadline_s: float = 30.0) -> tuple[Channel, dict[str, Any]]:
    buffer: dict[str, Any] = {}
    delivery = Delivery(buffer, "uid")
    return Channel(delivery, time.monotonic() + deadline_s, deadline_s, request=None), buffer


async def read_all(channel: Channel) -> list[Any]:
    content = []
    while not content or not isinstance(content[-1], Done):
        content.append(await channel.next())
    return content


def test_content_arrives_in_order_and_release_frees_the_buffer() -> None:
    async def run() -> None:
        reader, buffer = channel()
        for message in (Started(os.getpid()), Partial(0, 0, "p"), Image(0, "i"), Done(REPORT)):
            arrive(buffer, "uid", message, LitAPIStatus.OK)
        assert await read_all(reader) == [Partial(0, 0, "p"), Image(0, "i"), Done(REPORT)]
        assert (reader.worker_pid, reader.worker_done) == (os.getpid(), True)
        reader.delivery.release()
        assert buffer == {}

    asyncio.run(run())


def test_a_waiting_reader_wakes_when_a_message_arrives() -> None:
    async def run() -> None:
        reader, buffer = channel()
        loop = asyncio.get_running_loop()
        loop.call_soon(arrive, buffer, "uid", Image(0, "i"), LitAPIStatus.OK)
        loop.call_soon(arrive, buffer, "uid", Done(REPORT), LitAPIStatus.OK)
        assert await read_all(reader) == [Image(0, "i"), Done(REPORT)]

    asyncio.run(run())


@pytest.mark.parametrize(
    ("message", "status", "expected"),
    [
        (
            Failed(504, "cancelled", "timeout"),
            LitAPIStatus.OK,
            (504, "The request did not complete within its 30 s deadline.", "server_error", "timeout"),
        ),
        (
            Failed(500, "generation failed: RuntimeError", None),
            LitAPIStatus.OK,
            (500, "generation failed: RuntimeError", "server_error", None),
        ),
        ("", LitAPIStatus.ERROR, (500, "The inference worker failed.", "server_error", None)),
        (
            "",
            LitAPIStatus.FINISH_STREAMING,
            (500, "The inference worker ended the request without a result.", "server_error", None),
        ),
    ],
)
def test_failures_become_api_errors(
    message: WorkerMessage | str, status: LitAPIStatus, expected: tuple[Any, ...]
) -> None:
    async def run() -> errors.ApiError:
        reader, buffer = channel()
        arrive(buffer, "uid", Started(os.getpid()), LitAPIStatus.OK)
        arrive(buffer, "uid", message, status)
        with pytest.raises(errors.ApiError) as caught:
            await reader.next()
        return caught.value

    error = asyncio.run(run())
    assert (error.status, error.message, error.type, error.code) == expected


def test_the_deadline_ends_a_silent_wait() -> None:
    async def run() -> errors.ApiError:
        reader, _ = channel(deadline_s=0.05)
        with pytest.raises(errors.ApiError) as caught:
            await reader.next()
        return caught.value

    error = asyncio.run(run())
    assert error.body() == {
        "error": {
            "message": "The request did not complete within its 0.05 s deadline.",
            "type": "server_error",
            "param": None,
            "code": "timeout",
        }
    }
    assert error.headers == {"x-should-retry": "false"}


def test_a_dead_worker_is_noticed() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()

    async def run() -> errors.ApiError:
        reader, buffer = channel()
        arrive(buffer, "uid", Started(gone.pid), LitAPIStatus.OK)
        with pytest.raises(errors.ApiError) as caught:
            await reader.next()
        return caught.value

    error = asyncio.run(run())
    assert (error.status, error.code) == (500, "worker_crashed")
    assert error.message == "The inference worker running this request died; the server is restarting it."
