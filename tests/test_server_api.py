"""The HTTP contract of one real server (auth on), driven through the official `openai` SDK."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from ecad.tiers import AUTO, QUALITY_TO_TIER, Tier, known_qualities
from harness.launcher import RunningServer
from harness.polling import wait_until
from tests.server_configs import ROOT, server_config

KEY = "sk-test-key"
# Every quality a request may send; tests/unit/test_tiers.py pins what each maps to, this file that the
# server applies it. An idle server answers `auto` with its default idle tier.
QUALITIES = known_qualities()
EXPECTED_TIER = {**QUALITY_TO_TIER, AUTO: Tier.BEST}
EXPECTED_SCHEDULE = {
    "fast": "fora_every_4",
    "balanced": "fora_every_3",
    "best": "fora_every_2",
    "exact": "no_cache",
}
# Alone vs batched at the model's render size (docs/server.md, "Reproducibility").
BATCH_LEVELS = 1
BATCH_PIXEL_SHARE = 0.01


@pytest.fixture(scope="module")
def server(start_server: Callable[..., RunningServer]) -> RunningServer:
    return start_server(server_config(), api_key=KEY)


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEY, max_retries=0, timeout=60)


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


# Every quality as png; the other formats on a few qualities, to keep the run short.
CASES = [(quality, "png") for quality in QUALITIES] + [
    (quality, fmt) for quality in ("low", "auto", "exact") for fmt in ("jpeg", "webp")
]


@pytest.mark.parametrize(("quality", "output_format"), CASES)
def test_every_quality_gives_an_image(client: openai.OpenAI, quality: str, output_format: str) -> None:
    response = client.images.generate(
        prompt="a red fox in the snow",
        model="ecad-tiny",
        size="64x64",
        output_format=output_format,  # type: ignore[arg-type]
        extra_body={"quality": quality},
    )
    assert len(response.data) == 1
    image = decode(response.data[0].b64_json or "")
    assert image.format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[output_format]
    assert image.size == (64, 64)
    tier = EXPECTED_TIER[quality]
    extension = response.model_extra["x_ecad"]
    assert extension["tier"] == tier
    assert extension["schedule"]["name"] == EXPECTED_SCHEDULE[tier]
    assert re.fullmatch(r"[0-9a-f]{12}", extension["schedule"]["digest"])
    assert response.quality == tier.openai_quality
    assert response.size == "64x64"
    assert response.output_format == output_format
    assert response.background == "opaque"
    cache = extension["cache"]
    assert cache["reused"] > 0 if tier != "exact" else cache["reused"] == 0
    assert response.usage is not None
    assert response.usage.input_tokens > 0


def test_size_auto_uses_the_default(client: openai.OpenAI) -> None:
    response = client.images.generate(prompt="a boat", size="auto")
    assert decode(response.data[0].b64_json or "").size == (64, 64)
    rectangular = client.images.generate(prompt="a boat", size="128x64")  # type: ignore[arg-type]
    assert decode(rectangular.data[0].b64_json or "").size == (128, 64)


def test_n3_gives_three_different_images(client: openai.OpenAI) -> None:
    response = client.images.generate(prompt="a lighthouse", size="64x64", n=3)
    images = [response.data[i].b64_json for i in range(3)]
    assert len(set(images)) == 3
    seeds = response.model_extra["x_ecad"]["seeds"]
    assert seeds == [seeds[0], seeds[0] + 1, seeds[0] + 2]


def pixels(b64: str | None) -> np.ndarray:
    return np.asarray(decode(b64 or ""), dtype=np.int16)


def test_fixed_seed_reproduces_alone_and_batched(client: openai.OpenAI) -> None:
    """The guarantee (docs/server.md): the same request gives the same bytes; in a batch, the same image
    up to one 8-bit level on a few pixels (kernels differ by batch shape; measured with
    bench/batch_invariance.py: at most 1 level, on at most 0.04 % of pixels)."""
    first = client.images.generate(prompt="a lighthouse", size="64x64", extra_body={"seed": 1234})
    again = client.images.generate(prompt="a lighthouse", size="64x64", extra_body={"seed": 1234})
    assert first.data[0].b64_json == again.data[0].b64_json
    other = client.images.generate(prompt="a lighthouse", size="64x64", extra_body={"seed": 1235})
    assert np.abs(pixels(other.data[0].b64_json) - pixels(first.data[0].b64_json)).max() > 16
    # Image i of a request uses seed + i: image 1 of a batch of 3 from 1233 is the lone 1234 image.
    batch = client.images.generate(prompt="a lighthouse", size="64x64", n=3, extra_body={"seed": 1233})
    assert batch.model_extra["x_ecad"]["batch_images"] == 3
    gap = np.abs(pixels(batch.data[1].b64_json) - pixels(first.data[0].b64_json))
    assert gap.max() <= BATCH_LEVELS
    assert (gap > 0).any(axis=-1).mean() <= BATCH_PIXEL_SHARE


def test_extensions_are_applied_and_reported(client: openai.OpenAI) -> None:
    response = client.images.generate(
        prompt="a castle",
        size="64x64",
        extra_body={"seed": 7, "negative_prompt": "blurry", "guidance_scale": 2.0, "quality": "fast"},
    )
    extension = response.model_extra["x_ecad"]
    assert extension["seeds"] == [7]
    assert extension["guidance_scale"] == 2.0
    assert extension["tier"] == "fast"
    plain = client.images.generate(prompt="a castle", size="64x64", extra_body={"seed": 7, "quality": "fast"})
    assert plain.data[0].b64_json != response.data[0].b64_json
    # A step count without a schedule runs uncached and says so.
    uncached = client.images.generate(
        prompt="a castle", size="64x64", extra_body={"num_inference_steps": 6, "quality": "fast"}
    )
    assert uncached.model_extra["x_ecad"]["tier"] == "exact"
    assert uncached.model_extra["x_ecad"]["requested_quality"] == "fast"
    assert uncached.model_extra["x_ecad"]["steps"] == 6
    assert uncached.quality == "high"


INVALID: list[tuple[dict[str, Any], int, str | None, str]] = [
    ({"n": 0}, 400, "n", "invalid_value"),
    ({"n": 11}, 400, "n", "invalid_value"),
    ({"size": "65x64"}, 400, "size", "invalid_value"),
    ({"size": "1024x1024"}, 400, "size", "invalid_value"),
    ({"size": "big"}, 400, "size", "invalid_value"),
    ({"quality": "ultra"}, 400, "quality", "invalid_value"),
    ({"response_format": "png"}, 400, "response_format", "invalid_value"),
    ({"output_format": "gif"}, 400, "output_format", "invalid_value"),
    ({"output_compression": 101}, 400, "output_compression", "invalid_value"),
    ({"background": "transparent"}, 400, "background", "invalid_value"),
    ({"moderation": "strict"}, 400, "moderation", "invalid_value"),
    ({"style": "cartoon"}, 400, "style", "invalid_value"),
    ({"partial_images": 4}, 400, "partial_images", "invalid_value"),
    ({"seed": -1}, 400, "seed", "invalid_value"),
    ({"num_inference_steps": 0}, 400, "num_inference_steps", "invalid_value"),
    ({"num_inference_steps": 101}, 400, "num_inference_steps", "invalid_value"),
    ({"guidance_scale": 31}, 400, "guidance_scale", "invalid_value"),
    ({"prompt": ""}, 400, "prompt", "invalid_value"),
    ({"prompt": "x" * 32_001}, 400, "prompt", "invalid_value"),
    ({"model": "no-such-model"}, 404, "model", "model_not_found"),
]


@pytest.mark.parametrize(("fields", "status", "param", "code"), INVALID)
def test_invalid_field_gives_openai_error(
    client: openai.OpenAI,
    server: RunningServer,
    fields: dict[str, Any],
    status: int,
    param: str | None,
    code: str,
) -> None:
    body = {"prompt": "a cat", **fields}
    prompt = body.pop("prompt")
    expected = openai.NotFoundError if status == 404 else openai.BadRequestError
    with pytest.raises(expected) as caught:
        client.images.generate(prompt=prompt, extra_body=body)
    error = caught.value
    assert error.status_code == status
    assert error.param == param
    assert error.code == code
    assert error.type == "invalid_request_error"
    assert error.request_id is not None
    raw = httpx.post(
        f"{server.base_url}/v1/images/generations",
        json={"prompt": prompt, **body},
        headers={"authorization": f"Bearer {KEY}"},
    )
    assert raw.status_code == status
    payload = raw.json()
    assert set(payload) == {"error"}
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    assert payload["error"]["param"] == param
    assert payload["error"]["message"]
    assert raw.headers["x-request-id"]


@pytest.mark.parametrize(
    ("content", "param", "code"),
    [
        (b'{"prompt": "a cat", "n": "3"}', "n", "invalid_value"),
        (b'{"n": 1}', "prompt", "missing_required_parameter"),
        (b"{not json", None, "invalid_json"),
        (b'["a cat"]', None, "invalid_value"),
        (
            b'{"prompt": "a cat", "stream": true, "response_format": "url"}',
            "response_format",
            "invalid_value",
        ),
    ],
)
def test_raw_bodies_never_422_or_detail(
    server: RunningServer, content: bytes, param: str | None, code: str
) -> None:
    response = httpx.post(
        f"{server.base_url}/v1/images/generations",
        content=content,
        headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert response.json()["error"]["code"] == code
    assert "detail" not in response.json()


def test_payload_too_large_and_unknown_routes(server: RunningServer) -> None:
    headers = {"authorization": f"Bearer {KEY}"}
    large = httpx.post(
        f"{server.base_url}/v1/images/generations", json={"prompt": "x" * 1_100_000}, headers=headers
    )
    assert large.status_code == 413
    assert large.json()["error"]["code"] == "payload_too_large"
    missing = httpx.get(f"{server.base_url}/v1/nothing-here", headers=headers)
    assert missing.status_code == 404
    assert set(missing.json()) == {"error"}
    assert missing.headers["x-request-id"]
    wrong_method = httpx.delete(f"{server.base_url}/v1/models", headers=headers)
    assert wrong_method.status_code == 405
    assert set(wrong_method.json()) == {"error"}


def test_auth(server: RunningServer) -> None:
    # A wrong key, and no key at all (the SDK insists on one, so the header is blanked).
    for key, headers in (("wrong-key", {}), ("unused", {"Authorization": ""})):
        anonymous = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as caught:
            anonymous.images.generate(prompt="a cat", size="64x64", extra_headers=headers)
        assert caught.value.code == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            anonymous.models.list(extra_headers=headers)
    no_header = httpx.post(f"{server.base_url}/v1/images/generations", json={"prompt": "a cat"})
    assert no_header.status_code == 401
    assert no_header.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(f"{server.base_url}/healthz").status_code == 200
    assert httpx.get(f"{server.base_url}/readyz").status_code == 200
    assert "API is open" not in server.log_text()


def test_models_list(client: openai.OpenAI) -> None:
    models = client.models.list()
    ids = [model.id for model in models.data]
    assert ids == ["ecad-tiny"]
    tiers = models.data[0].model_extra["x_ecad"]["tiers"]
    assert set(tiers) == set(Tier)
    assert tiers["fast"]["macs_ratio"] > tiers["balanced"]["macs_ratio"] > tiers["best"]["macs_ratio"] > 1


def test_streaming_partial_images(client: openai.OpenAI) -> None:
    stream = client.images.generate(
        prompt="a sunrise", size="64x64", stream=True, partial_images=2, extra_body={"seed": 42}
    )
    events = list(stream)
    types = [event.type for event in events]
    assert types == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [event.partial_image_index for event in events[:2]] == [0, 1]
    for event in events:
        assert decode(event.b64_json).size == (64, 64)
    completed = events[-1]
    assert completed.usage.input_tokens > 0
    plain = client.images.generate(prompt="a sunrise", size="64x64", extra_body={"seed": 42})
    assert completed.b64_json == plain.data[0].b64_json
    assert events[0].b64_json != completed.b64_json


def test_streaming_headers(server: RunningServer) -> None:
    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/images/generations",
        json={"prompt": "a sunrise", "size": "64x64", "stream": True, "partial_images": 1},
        headers={"authorization": f"Bearer {KEY}"},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        body = response.read().decode()
    assert body.count("event: image_generation.partial_image") == 1
    assert body.count("event: image_generation.completed") == 1


def test_url_response(client: openai.OpenAI) -> None:
    response = client.images.generate(
        prompt="a tree", size="64x64", response_format="url", output_format="jpeg"
    )
    url = response.data[0].url or ""
    fetched = httpx.get(url)
    assert fetched.status_code == 200
    assert fetched.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(fetched.content)).size == (64, 64)
    missing = httpx.get(url.rsplit("/", 1)[0] + "/AAAAAAAAAAAAAAAAAAAAAAAA.png")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


def test_deadline_gives_504(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client.images.generate(
            prompt="a slow one",
            size="256x256",
            extra_body={"num_inference_steps": 100},
            extra_headers={"x-ecad-deadline-ms": "300"},
        )
    assert caught.value.status_code == 504
    assert caught.value.code == "timeout"
    assert caught.value.response.headers["x-should-retry"] == "false"


def test_full_queue_gives_429_with_retry_after(server: RunningServer) -> None:
    def one(_: int) -> Any:
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEY, max_retries=0, timeout=120)
        try:
            return client.images.generate(
                prompt="busy", size="256x256", extra_body={"num_inference_steps": 60, "quality": "exact"}
            )
        except openai.RateLimitError as error:
            return error

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(one, range(8)))
    limited = [o for o in outcomes if isinstance(o, openai.RateLimitError)]
    served = [o for o in outcomes if not isinstance(o, openai.RateLimitError)]
    assert limited, "max_queue is 3, so 8 simultaneous slow requests must overflow it"
    assert served
    for error in limited:
        assert error.status_code == 429
        assert error.code == "rate_limit_exceeded"
        assert 1 <= int(error.response.headers["retry-after"]) <= 120
    assert all(len(o.data) == 1 for o in served)


def test_metrics_hold_latency_histograms(client: openai.OpenAI, server: RunningServer) -> None:
    client.images.generate(prompt="a metric", size="64x64", extra_body={"quality": "balanced"})
    text = httpx.get(f"{server.base_url}/metrics").text
    series = 'model="ecad-tiny",schedule="fora_every_3",tier="balanced"'
    assert re.search(rf"^ecad_request_duration_seconds_count\{{{series}\}} [1-9]", text, re.M)
    assert re.search(rf'^ecad_request_duration_seconds_bucket\{{le="\+Inf",{series}\}} [1-9]', text, re.M)
    assert re.search(rf"^ecad_pipeline_duration_seconds_count\{{{series}\}} [1-9]", text, re.M)
    assert re.search(r'^ecad_queue_wait_seconds_count\{model="ecad-tiny"\} [1-9]', text, re.M)
    assert re.search(r'^ecad_queue_depth\{model="ecad-tiny"\} 0', text, re.M)
    assert re.search(
        r'^ecad_requests_total\{model="ecad-tiny",status="200",tier="balanced"\} [1-9]', text, re.M
    )
    assert re.search(r'^ecad_images_generated_total\{.*tier="balanced"\} [1-9]', text, re.M)
    # docs/metrics.md documents every series the server exports.
    exported = set(re.findall(r"^# TYPE (ecad_\w+) ", text, re.M))
    documented = set(re.findall(r"^\| `(ecad_\w+)` \|", (ROOT / "docs" / "metrics.md").read_text(), re.M))
    assert exported
    assert exported == documented


def metric_value(server: RunningServer, pattern: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics").text
    match = re.search(rf"^{pattern} ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_disconnected_client_stops_the_generation(client: openai.OpenAI, server: RunningServer) -> None:
    images = r'ecad_images_generated_total\{model="ecad-tiny",schedule="no_cache",tier="exact"\}'
    cancelled = r'ecad_requests_total\{model="ecad-tiny",status="cancelled",tier="exact"\}'
    images_before, cancelled_before = metric_value(server, images), metric_value(server, cancelled)
    body = {
        "prompt": "a long one",
        "size": "256x256",
        "quality": "exact",
        "stream": True,
        "partial_images": 1,
        "num_inference_steps": 100,
    }
    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/images/generations",
        json=body,
        headers={"authorization": f"Bearer {KEY}"},
        timeout=60,
    ) as response:
        # The first partial image arrives halfway: the generation is running. Then hang up.
        for line in response.iter_lines():
            if line == "event: image_generation.partial_image":
                break
    wait_until(
        lambda: metric_value(server, cancelled) != cancelled_before,
        "the server never noticed the disconnect",
        timeout_s=60,
    )
    # Served after the abandoned one: the worker is free again.
    follow_up = client.images.generate(prompt="next", size="64x64", extra_body={"quality": "exact"})
    assert len(follow_up.data) == 1
    # Only the follow-up's image was generated: the abandoned run stopped between denoising steps.
    assert metric_value(server, images) == images_before + 1
    # The worker deleted the cancel mark when it ended the abandoned job, before taking the next.
    assert list((server.log.parent / "state" / "cancel").iterdir()) == []
