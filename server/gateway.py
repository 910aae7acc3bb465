"""`POST /v1/images/generations` in the API process: the orchestration of one request.

authorise → read and validate the body → resolve the model → plan → admit → submit to the workers →
answer with JSON, or Server-Sent Events when `stream=true`. The status is committed only after the
first worker message, so worker-side failures keep their real status. Every outcome is an
OpenAI-shaped response and is counted once.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from server import errors, telemetry
from server.admission import Admission
from server.auth import ApiKeys
from server.body import read_json_object
from server.channel import Channel, ClientDisconnectedError, Content
from server.config import AppConfig
from server.messages import Done, Image, Partial, Report
from server.planner import Plan, plan_request
from server.protocol import (
    CacheCounts,
    CompletedEvent,
    EcadExtension,
    ImageData,
    ImageFacts,
    ImageGenerationRequest,
    ImagesResponse,
    PartialImageEvent,
    ScheduleRef,
    Usage,
    json_response,
    sse_frame,
)
from server.runtime import ModelRuntime
from server.state import StateDir
from server.transport import Transport

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


def deadline_of(request: Request, server_deadline_s: float) -> float:
    """The server deadline, shortened (never extended) by the client's `x-ecad-deadline-ms`."""
    header = request.headers.get(DEADLINE_HEADER)
    if header is None:
        return server_deadline_s
    try:
        milliseconds = float(header)
    except ValueError:
        milliseconds = math.nan
    if not (math.isfinite(milliseconds) and milliseconds > 0):
        raise errors.invalid(
            None, f"{DEADLINE_HEADER} must be a positive, finite number of milliseconds, got {header!r}."
        )
    return min(server_deadline_s, milliseconds / 1000)


@dataclass
class Outcome:
    """How one images request ended, counted in `ecad_requests_total` exactly once."""

    model: str = "unknown"
    tier: str = "none"
    counted: bool = False

    def record(self, status: str) -> None:
        if not self.counted:
            self.counted = True
            telemetry.REQUESTS.labels(model=self.model, tier=self.tier, status=status).inc()


class Gateway:
    def __init__(
        self,
        config: AppConfig,
        runtimes: Mapping[str, ModelRuntime],
        keys: ApiKeys,
        state: StateDir,
        transport: Transport,
    ) -> None:
        self.server_config = config.server
        self.runtimes = dict(runtimes)
        self.default_model = config.models[0].id
        self.keys = keys
        self.state = state
        self.transport = transport

    def resolve_model(self, name: str | None) -> ModelRuntime:
        if name is None or name in OPENAI_MODEL_NAMES:
            return self.runtimes[self.default_model]
        if name not in self.runtimes:
            raise errors.model_not_found(name)
        return self.runtimes[name]

    def in_flight(self) -> int:
        """Requests admitted and not finished, over every model and API process."""
        return sum(runtime.queue.depth for runtime in self.runtimes.values())

    async def generate(self, request: Request) -> Response:
        outcome = Outcome()
        try:
            return await self._generate(request, outcome)
        except Exception:
            # Answered here rather than by the request envelope so that the 500 is counted too.
            logger.exception("unhandled error in an images request")
            outcome.record("500")
            return errors.internal().response(request_id_of(request))

    async def _generate(self, request: Request, outcome: Outcome) -> Response:
        try:
            self.keys.check(request)
            raw = await read_json_object(request, self.server_config.max_payload_bytes)
            try:
                params = ImageGenerationRequest.model_validate(raw)
            except ValidationError as error:
                raise errors.from_validation_error(error) from None
            runtime = self.resolve_model(params.model)
            outcome.model = runtime.config.id
            plan = plan_request(params, runtime, self.server_config)
            outcome.tier = plan.tier
            deadline_s = deadline_of(request, self.server_config.deadline_s)
            if self.state.is_draining():
                raise errors.shutting_down()
            admission = runtime.queue.admit()
        except errors.ApiError as error:
            outcome.record(str(error.status))
            return error.response(request_id_of(request))
        try:
            return await self._run(request, plan, runtime, admission, deadline_s, outcome)
        except BaseException:
            admission.release()  # idempotent: the conversation may have released it already
            raise

    async def _run(
        self,
        request: Request,
        plan: Plan,
        runtime: ModelRuntime,
        admission: Admission,
        deadline_s: float,
        outcome: Outcome,
    ) -> Response:
        started = time.monotonic()
        job = plan.job(str(uuid.uuid4()), started, deadline_s)
        delivery = self.transport.submit(runtime.api_path, job)
        stream = plan.params.stream
        channel = Channel(delivery, job.deadline, deadline_s, None if stream else request)
        conversation = _Conversation(self, plan, runtime, channel, admission, outcome, request, started)
        try:
            try:
                first = await channel.next()
            except (errors.ApiError, ClientDisconnectedError) as error:
                return conversation.fail(error)
            if stream:
                headers = {"cache-control": "no-cache", **conversation.headers()}
                return StreamingResponse(
                    conversation.events(first), media_type="text/event-stream", headers=headers
                )
            return await conversation.collect(first)
        except Exception:
            conversation.close("500")
            raise


class _Conversation:
    """One admitted request from its first worker message to its last byte; always cleans up."""

    def __init__(
        self,
        gateway: Gateway,
        plan: Plan,
        runtime: ModelRuntime,
        channel: Channel,
        admission: Admission,
        outcome: Outcome,
        request: Request,
        started: float,
    ) -> None:
        self.gateway, self.plan, self.runtime, self.channel = gateway, plan, runtime, channel
        self.admission, self.outcome, self.request, self.started = admission, outcome, request, started
        self.closed = False

    def headers(self) -> dict[str, str]:
        schedule = self.plan.schedule
        return {
            "x-request-id": request_id_of(self.request),
            "x-ecad-tier": self.plan.tier,
            "x-ecad-schedule": f"{schedule.name}@{schedule.digest}",
        }

    def close(self, status: str) -> None:
        """Release the slot and the delivery, stop the worker if it is still busy, count the outcome."""
        if self.closed:
            return
        self.closed = True
        self.admission.release()
        self.channel.delivery.release()
        # A worker still on the job stops it at the mark and deletes the mark then (StateDir.cancel
        # sweeps stragglers); past the deadline it stops by itself, without one.
        if not self.channel.worker_done and status != "504":
            self.gateway.state.cancel(self.channel.delivery.uid, self.gateway.server_config.deadline_s)
        self.outcome.record(status)

    def fail(self, error: Exception) -> Response:
        if isinstance(error, ClientDisconnectedError):
            self.close("cancelled")
            return Response(status_code=499)
        assert isinstance(error, errors.ApiError)
        self.close(str(error.status))
        return error.response(request_id_of(self.request))

    def succeed(self, report: Report) -> None:
        elapsed = time.monotonic() - self.started
        labels = {"model": self.plan.model_id, "tier": self.plan.tier, "schedule": self.plan.schedule.name}
        telemetry.REQUEST_LATENCY.labels(**labels).observe(elapsed)
        self.runtime.latency.observe(
            generation_ms=report.generation_ms,
            images=len(report.seeds),
            macs_ratio=self.plan.schedule.macs_ratio,
        )
        self.close("200")

    def extension(self, report: Report) -> EcadExtension:
        return EcadExtension(
            model=self.plan.model_id,
            tier=self.plan.tier,
            requested_quality=self.plan.params.quality,
            schedule=ScheduleRef(name=report.schedule, digest=report.schedule_digest),
            macs_ratio=self.plan.schedule.macs_ratio,
            seeds=report.seeds,
            steps=report.steps,
            guidance_scale=report.guidance_scale,
            cache=CacheCounts(computed=report.computed, reused=report.reused, skipped=report.skipped),
            batch_images=report.batch_images,
            queue_ms=report.queue_ms,
            generation_ms=report.generation_ms,
            total_ms=round((time.monotonic() - self.started) * 1000, 1),
        )

    def facts(self) -> ImageFacts:
        return ImageFacts(
            output_format=self.plan.params.output_format,
            quality=self.plan.tier.openai_quality,
            size=self.plan.size,
        )

    async def collect(self, message: Content) -> Response:
        images: dict[int, str] = {}
        try:
            while not isinstance(message, Done):
                if isinstance(message, Image):
                    images[message.image_index] = message.b64
                message = await self.channel.next()
        except (errors.ApiError, ClientDisconnectedError) as error:
            return self.fail(error)
        body = ImagesResponse(
            created=int(time.time()),
            data=[self._image_data(images[index]) for index in sorted(images)],
            usage=Usage.of_prompt(message.report.prompt_tokens),
            x_ecad=self.extension(message.report),
            **self.facts(),
        )
        self.succeed(message.report)
        return json_response(body, self.headers())

    def _image_data(self, b64: str) -> ImageData:
        params = self.plan.params
        if params.response_format == "b64_json":
            return ImageData(b64_json=b64)
        urls = self.gateway.server_config.url_responses
        image_id = self.gateway.state.store_image(
            base64.b64decode(b64), params.output_format, urls.ttl_s, urls.max_bytes
        )
        return ImageData(url=f"{str(self.request.base_url).rstrip('/')}/v1/images/{image_id}")

    async def events(self, message: Content) -> AsyncIterator[str]:
        images: dict[int, str] = {}
        status = "500"
        try:
            while True:
                match message:
                    case Partial():
                        yield sse_frame(
                            PartialImageEvent(
                                b64_json=message.b64,
                                created_at=int(time.time()),
                                partial_image_index=message.partial_index,
                                image_index=message.image_index,
                                **self.facts(),
                            )
                        )
                    case Image():
                        images[message.image_index] = message.b64
                    case Done(report=report):
                        for index in sorted(images):
                            yield sse_frame(
                                CompletedEvent(
                                    b64_json=images[index],
                                    created_at=int(time.time()),
                                    image_index=index,
                                    usage=Usage.of_prompt(report.prompt_tokens),
                                    x_ecad=self.extension(report),
                                    **self.facts(),
                                )
                            )
                        self.succeed(report)
                        status = "200"
                        return
                message = await self.channel.next()
        except errors.ApiError as error:
            status = str(error.status)
            yield f"event: error\ndata: {error.json()}\n\n"
        except asyncio.CancelledError:
            status = "cancelled"
            raise
        finally:
            if status != "200":
                self.close(status)
