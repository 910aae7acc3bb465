"""`POST /v1/images/generations` in the API process: validate, authorise, admit, enqueue, answer.

Every outcome is an OpenAI-shaped response: JSON, or Server-Sent Events when `stream=true`. The status
is committed only after the first worker message, so worker-side failures keep their real status.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import math
import secrets
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from litserve.utils import ResponseBufferItem
from pydantic import ValidationError

from ecad.config import ModelConfig
from ecad.registry import Registry
from ecad.tiers import AUTO, CACHED_TIERS, QUALITY_TO_TIER, Tier, known_qualities
from server import errors, metrics
from server.admission import Admission, ModelQueue
from server.body import read_json_object
from server.channel import Channel, ClientDisconnectedError
from server.config import AppConfig, parse_size, size_error
from server.protocol import ImageGenerationRequest, Job
from server.state import StateDir
from server.tiers import LatencyModel, choose_auto_tier

logger = logging.getLogger(__name__)

# OpenAI's own model names route to the default (first) model, so clients written for OpenAI work as-is.
OPENAI_MODEL_NAMES = frozenset(
    {
        "gpt-image-1",
        "gpt-image-1-mini",
        "gpt-image-1.5",
        "gpt-image-2",
        "chatgpt-image-latest",
        "dall-e-2",
        "dall-e-3",
    }
)
DEADLINE_HEADER = "x-ecad-deadline-ms"


def request_id_of(request: Request) -> str:
    return getattr(request.state, "request_id", "")


@dataclass
class ModelRuntime:
    """What the API processes know about one served model. `queue` is shared by all of them."""

    config: ModelConfig
    registry: Registry
    api_path: str
    queue: ModelQueue
    latency: LatencyModel = field(default_factory=LatencyModel)


@dataclass
class Outcome:
    """How one images request ended, counted in `ecad_requests_total` exactly once."""

    model: str = "unknown"
    tier: str = "none"
    counted: bool = False

    def record(self, status: str) -> None:
        if not self.counted:
            self.counted = True
            metrics.REQUESTS.labels(model=self.model, tier=self.tier, status=status).inc()


@dataclass
class Plan:
    model: ModelRuntime
    tier: Tier
    requested_quality: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    seeds: tuple[int, ...]


class Gateway:
    def __init__(
        self, config: AppConfig, models: Mapping[str, ModelRuntime], keys: frozenset[str], state: StateDir
    ):
        self.config = config
        self.server_config = config.server
        self.models = dict(models)
        self.default_model = config.models[0].id
        self.keys = keys
        self.state = state
        self.spec: Any = None
        self.queues: Mapping[str, Any] = {}

    def connect(self, spec: Any, queues: Mapping[str, Any]) -> None:
        """Called by the spec's setup: the response buffer and the per-model request queues."""
        self.spec = spec
        self.queues = queues

    # -- request checks -------------------------------------------------------------------------
    def authorize(self, request: Request) -> None:
        if not self.keys:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not any(hmac.compare_digest(token, key) for key in self.keys):
            raise errors.unauthorized()

    def resolve_model(self, name: str | None) -> ModelRuntime:
        if name is None or name in OPENAI_MODEL_NAMES:
            return self.models[self.default_model]
        if name not in self.models:
            raise errors.model_not_found(name)
        return self.models[name]

    def plan(self, params: ImageGenerationRequest, runtime: ModelRuntime) -> Plan:
        model = runtime.config
        size = model.default_size if params.size == AUTO else params.size
        problem = size_error(size, model)
        if problem is not None:
            raise errors.invalid("size", problem)
        width, height = parse_size(size)
        if params.response_format == "url":
            if not self.server_config.url_responses.enabled:
                raise errors.invalid("response_format", "response_format 'url' is disabled on this server.")
            if params.stream:
                raise errors.invalid("response_format", "Streaming sends images as b64_json only.")
        if params.negative_prompt and not model.adapter.supports_negative_prompt:
            raise errors.invalid(
                "negative_prompt", f"{model.family} is guidance-distilled and takes no negative_prompt."
            )
        steps = params.num_inference_steps or model.steps
        if steps > self.server_config.max_inference_steps:
            raise errors.invalid(
                "num_inference_steps",
                f"Invalid value for 'num_inference_steps': at most {self.server_config.max_inference_steps}.",
            )
        if params.quality not in known_qualities():
            raise errors.invalid(
                "quality",
                f"Invalid value '{params.quality}' for 'quality'. Supported values are: "
                f"{', '.join(known_qualities())}.",
            )
        tier = self.choose_tier(params, runtime)
        # An explicit step count with no schedule of that length runs uncached (reported as `exact`).
        if steps != runtime.registry.steps:
            tier = Tier.EXACT
        base = params.seed if params.seed is not None else secrets.randbits(32)
        return Plan(
            model=runtime,
            tier=tier,
            requested_quality=params.quality,
            width=width,
            height=height,
            steps=steps,
            guidance_scale=params.guidance_scale
            if params.guidance_scale is not None
            else model.guidance_scale,
            seeds=tuple(base + i for i in range(params.n)),
        )

    def choose_tier(self, params: ImageGenerationRequest, runtime: ModelRuntime) -> str:
        if params.quality != AUTO:
            return QUALITY_TO_TIER[params.quality]
        auto = self.server_config.auto
        estimates = {
            tier: runtime.latency.estimate_ms(runtime.registry.for_tier(tier).macs_ratio, params.n)
            for tier in CACHED_TIERS
        }
        wait_s = runtime.queue.wait_s() or 0.0
        return choose_auto_tier(
            idle_tier=auto.idle_tier,
            objective_ms=auto.latency_objective_ms,
            wait_ms=wait_s * 1000,
            estimate_ms=estimates,
        )

    def admit(self, runtime: ModelRuntime) -> Admission:
        if self.state.is_draining():
            raise errors.shutting_down()
        return runtime.queue.admit()

    def in_flight(self) -> int:
        """Requests admitted and not finished, over every model and API process."""
        return sum(runtime.queue.depth for runtime in self.models.values())

    def deadline_s(self, request: Request) -> float:
        """The server deadline, shortened (never extended) by the client's `x-ecad-deadline-ms`."""
        deadline_s = self.server_config.deadline_s
        header = request.headers.get(DEADLINE_HEADER)
        if header is None:
            return deadline_s
        try:
            milliseconds = float(header)
        except ValueError:
            milliseconds = math.nan
        if not (math.isfinite(milliseconds) and milliseconds > 0):
            raise errors.invalid(
                None, f"{DEADLINE_HEADER} must be a positive, finite number of milliseconds, got {header!r}."
            )
        return min(deadline_s, milliseconds / 1000)

    # -- the endpoint ---------------------------------------------------------------------------
    async def generate(self, request: Request) -> Response:
        outcome = Outcome()
        try:
            return await self._generate(request, outcome)
        except Exception:
            # Answered here rather than by the error boundary so that the 500 is counted too.
            logger.exception("unhandled error in an images request")
            outcome.record("500")
            return errors.internal().response(request_id_of(request))

    async def _generate(self, request: Request, outcome: Outcome) -> Response:
        request_id = request_id_of(request)
        try:
            self.authorize(request)
            raw = await read_json_object(request, self.server_config.max_payload_bytes)
            try:
                params = ImageGenerationRequest.model_validate(raw)
            except ValidationError as error:
                raise errors.from_validation_error(error) from None
            runtime = self.resolve_model(params.model)
            outcome.model = runtime.config.id
            plan = self.plan(params, runtime)
            outcome.tier = plan.tier
            deadline_s = self.deadline_s(request)
            admission = self.admit(runtime)
        except errors.ApiError as error:
            outcome.record(str(error.status))
            return error.response(request_id)
        try:
            return await self._run(request, params, plan, admission, deadline_s, outcome)
        except BaseException:
            admission.release()  # idempotent: the conversation may have released it already
            raise

    async def _run(
        self,
        request: Request,
        params: ImageGenerationRequest,
        plan: Plan,
        admission: Admission,
        deadline_s: float,
        outcome: Outcome,
    ) -> Response:
        request_id = request_id_of(request)
        runtime = plan.model
        started = time.monotonic()
        uid = str(uuid.uuid4())
        item = ResponseBufferItem(event=asyncio.Event(), response_queue=deque())
        self.spec.response_buffer[uid] = item
        tier = runtime.registry.for_tier(plan.tier)
        job = Job(
            uid=uid,
            model=runtime.config.id,
            tier=plan.tier,
            schedule_digest=tier.digest,
            prompt=params.prompt,
            negative_prompt=params.negative_prompt,
            seeds=plan.seeds,
            width=plan.width,
            height=plan.height,
            steps=plan.steps,
            guidance_scale=plan.guidance_scale,
            output_format=params.output_format,
            output_compression=params.output_compression,
            partial_images=params.partial_images if params.stream else 0,
            enqueued_at=started,
            deadline=started + deadline_s,
        )
        self.queues[runtime.api_path].put((self.spec.response_queue_id, uid, started, job))
        channel = Channel(item, job.deadline, deadline_s, None if params.stream else request)
        conversation = _Conversation(
            self, plan, params, job, channel, admission, outcome, request_id, started
        )
        try:
            try:
                first = await channel.next()
            except (errors.ApiError, ClientDisconnectedError) as error:
                return conversation.fail(error)
            if params.stream:
                headers = {"x-request-id": request_id, "cache-control": "no-cache", **conversation.headers()}
                return StreamingResponse(
                    conversation.events(first), media_type="text/event-stream", headers=headers
                )
            return await conversation.collect(first, str(request.base_url))
        except Exception:
            conversation.close("500")
            raise


class _Conversation:
    """One admitted request from its first worker message to its last byte; always cleans up."""

    def __init__(
        self,
        gateway: Gateway,
        plan: Plan,
        params: ImageGenerationRequest,
        job: Job,
        channel: Channel,
        admission: Admission,
        outcome: Outcome,
        request_id: str,
        started: float,
    ) -> None:
        self.gateway, self.plan, self.params, self.job = gateway, plan, params, job
        self.channel, self.admission, self.outcome = channel, admission, outcome
        self.request_id, self.started = request_id, started
        self.tier = plan.model.registry.for_tier(plan.tier)
        self.labels = {"model": job.model, "tier": plan.tier}
        self.closed = False

    def headers(self) -> dict[str, str]:
        return {"x-ecad-tier": self.plan.tier, "x-ecad-schedule": f"{self.tier.name}@{self.tier.digest}"}

    def close(self, status: str) -> None:
        """Release the slot, drop the buffer, stop the worker if it is still busy, count the outcome."""
        if self.closed:
            return
        self.closed = True
        self.admission.release()
        self.gateway.spec.response_buffer.pop(self.job.uid, None)
        # A worker still on the job stops it at the mark and deletes the mark then (StateDir.cancel
        # sweeps stragglers); past the deadline it stops by itself, without one.
        if not self.channel.worker_done and status != "504":
            self.gateway.state.cancel(self.job.uid, self.gateway.server_config.deadline_s)
        self.outcome.record(status)

    def fail(self, error: Exception) -> Response:
        if isinstance(error, ClientDisconnectedError):
            self.close("cancelled")
            return Response(status_code=499)
        assert isinstance(error, errors.ApiError)
        self.close(str(error.status))
        return error.response(self.request_id)

    def succeed(self, report: dict[str, Any]) -> None:
        elapsed = time.monotonic() - self.started
        metrics.REQUEST_LATENCY.labels(**self.labels, schedule=self.tier.name).observe(elapsed)
        self.plan.model.latency.observe(
            generation_ms=report["generation_ms"], images=self.job.n, macs_ratio=self.tier.macs_ratio
        )
        self.close("200")

    def extension(self, report: dict[str, Any]) -> dict[str, Any]:
        return {
            "model": self.job.model,
            "tier": self.plan.tier,
            "requested_quality": self.plan.requested_quality,
            "schedule": {"name": report["schedule"], "digest": report["schedule_digest"]},
            "macs_ratio": self.tier.macs_ratio,
            "seeds": report["seeds"],
            "steps": report["steps"],
            "guidance_scale": report["guidance_scale"],
            "cache": {key: report[key] for key in ("computed", "reused", "skipped")},
            "batch_images": report["batch_images"],
            "queue_ms": report["queue_ms"],
            "generation_ms": report["generation_ms"],
            "total_ms": round((time.monotonic() - self.started) * 1000, 1),
        }

    @staticmethod
    def usage(report: dict[str, Any]) -> dict[str, Any]:
        tokens = report["prompt_tokens"]
        return {
            "input_tokens": tokens,
            "input_tokens_details": {"text_tokens": tokens, "image_tokens": 0},
            "output_tokens": 0,
            "total_tokens": tokens,
        }

    def common(self) -> dict[str, Any]:
        return {
            "background": "opaque",
            "output_format": self.params.output_format,
            "quality": self.plan.tier.openai_quality,
            "size": f"{self.plan.width}x{self.plan.height}",
        }

    async def collect(self, message: dict[str, Any], base_url: str) -> Response:
        images: dict[int, str] = {}
        try:
            while message["event"] != "done":
                if message["event"] == "image":
                    images[message["image_index"]] = message["b64"]
                message = await self.channel.next()
        except (errors.ApiError, ClientDisconnectedError) as error:
            return self.fail(error)
        report = message["report"]
        data = [self._image_entry(images[i], base_url) for i in sorted(images)]
        body = {
            "created": int(time.time()),
            "data": data,
            **self.common(),
            "usage": self.usage(report),
            "x_ecad": self.extension(report),
        }
        self.succeed(report)
        return JSONResponse(body, headers={"x-request-id": self.request_id, **self.headers()})

    def _image_entry(self, b64: str, base_url: str) -> dict[str, str]:
        if self.params.response_format == "b64_json":
            return {"b64_json": b64}
        url_config = self.gateway.server_config.url_responses
        image_id = self.gateway.state.store_image(
            base64.b64decode(b64), self.params.output_format, url_config.ttl_s, url_config.max_bytes
        )
        return {"url": f"{base_url.rstrip('/')}/v1/images/{image_id}"}

    async def events(self, message: dict[str, Any]) -> AsyncIterator[str]:
        images: dict[int, str] = {}
        status = "500"
        try:
            while True:
                event = message["event"]
                if event == "partial":
                    payload = {
                        "type": "image_generation.partial_image",
                        "b64_json": message["b64"],
                        "created_at": int(time.time()),
                        "partial_image_index": message["partial_index"],
                        "image_index": message["image_index"],
                        **self.common(),
                    }
                    yield _frame(payload["type"], payload)
                elif event == "image":
                    images[message["image_index"]] = message["b64"]
                elif event == "done":
                    report = message["report"]
                    for index in sorted(images):
                        payload = {
                            "type": "image_generation.completed",
                            "b64_json": images[index],
                            "created_at": int(time.time()),
                            "image_index": index,
                            **self.common(),
                            "usage": self.usage(report),
                            "x_ecad": self.extension(report),
                        }
                        yield _frame(payload["type"], payload)
                    self.succeed(report)
                    status = "200"
                    return
                message = await self.channel.next()
        except errors.ApiError as error:
            status = str(error.status)
            yield _frame("error", error.body())
        except asyncio.CancelledError:
            status = "cancelled"
            raise
        finally:
            if status != "200":
                self.close(status)


def _frame(event: str, payload: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n"
