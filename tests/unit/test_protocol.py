"""The response models render what OpenAI sends, and the official SDK's types read them."""

from __future__ import annotations

import json

import openai.types
from openai.types import ImageGenStreamEvent
from pydantic import TypeAdapter

from ecad.tiers import Tier
from server.protocol import (
    CacheCounts,
    CompletedEvent,
    EcadExtension,
    ImageData,
    ImagesResponse,
    PartialImageEvent,
    ScheduleRef,
    Usage,
    render,
    sse_frame,
)

EXTENSION = EcadExtension(
    model="m",
    tier=Tier.FAST,
    requested_quality="low",
    schedule=ScheduleRef(name="s", digest="d"),
    macs_ratio=2.5,
    seeds=(1, 2),
    steps=20,
    guidance_scale=4.5,
    cache=CacheCounts(computed=10, reused=5, skipped=0),
    batch_images=2,
    queue_ms=1.0,
    generation_ms=2.0,
    total_ms=3.5,
)
FACTS = {"output_format": "png", "quality": "low", "size": "64x64"}


def test_images_response_sends_only_the_image_field_in_use() -> None:
    body = ImagesResponse(
        created=1,
        data=[ImageData(b64_json="aGk="), ImageData(url="http://x/v1/images/a")],
        usage=Usage.of_prompt(7),
        x_ecad=EXTENSION,
        **FACTS,
    )
    wire = json.loads(render(body))
    assert wire["data"] == [{"b64_json": "aGk="}, {"url": "http://x/v1/images/a"}]
    assert wire["usage"] == {
        "input_tokens": 7,
        "input_tokens_details": {"text_tokens": 7, "image_tokens": 0},
        "output_tokens": 0,
        "total_tokens": 7,
    }
    assert (wire["background"], wire["quality"], wire["x_ecad"]["tier"]) == ("opaque", "low", "fast")
    parsed = openai.types.ImagesResponse.model_validate(wire)
    assert parsed.data is not None and parsed.data[0].b64_json == "aGk="
    assert parsed.usage is not None and parsed.usage.input_tokens == 7


def test_stream_events_are_sse_frames_the_sdk_reads() -> None:
    events = [
        PartialImageEvent(b64_json="cA==", created_at=1, partial_image_index=0, image_index=0, **FACTS),
        CompletedEvent(
            b64_json="aQ==", created_at=2, image_index=0, usage=Usage.of_prompt(3), x_ecad=EXTENSION, **FACTS
        ),
    ]
    reader = TypeAdapter(ImageGenStreamEvent)
    for event in events:
        frame = sse_frame(event)
        name, data, blank = frame.split("\n", 2)
        assert (name, blank) == (f"event: {event.type}", "\n")
        parsed = reader.validate_python(json.loads(data.removeprefix("data: ")))
        assert parsed.type == event.type
