"""From a validated request to a plan: which tier and schedule, at what size, steps and seeds.

Pure: request parameters, the model's runtime and the server config in, a `Plan` or an `ApiError`
(400) out. No HTTP objects, so every rule here is tested in-process.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

from ecad.registry import TierSchedule
from ecad.tiers import AUTO, CACHED_TIERS, QUALITY_TO_TIER, Tier, known_qualities
from server import errors
from server.config import ServerConfig, parse_size, size_error
from server.messages import Job
from server.protocol import ImageGenerationRequest
from server.runtime import ModelRuntime
from server.tiers import choose_auto_tier


@dataclass(frozen=True)
class Plan:
    """One request, resolved: everything a worker needs, and what the response reports."""

    params: ImageGenerationRequest
    model_id: str
    tier: Tier
    schedule: TierSchedule
    width: int
    height: int
    steps: int
    guidance_scale: float
    seeds: tuple[int, ...]

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    def job(self, uid: str, enqueued_at: float, deadline_s: float) -> Job:
        params = self.params
        return Job(
            uid=uid,
            model=self.model_id,
            tier=self.tier,
            schedule_digest=self.schedule.digest,
            prompt=params.prompt,
            negative_prompt=params.negative_prompt,
            seeds=self.seeds,
            width=self.width,
            height=self.height,
            steps=self.steps,
            guidance_scale=self.guidance_scale,
            output_format=params.output_format,
            output_compression=params.output_compression,
            partial_images=params.partial_images if params.stream else 0,
            enqueued_at=enqueued_at,
            deadline=enqueued_at + deadline_s,
        )


def plan_request(
    params: ImageGenerationRequest,
    runtime: ModelRuntime,
    config: ServerConfig,
    random_seed: Callable[[], int] = lambda: secrets.randbits(32),
) -> Plan:
    model = runtime.config
    size = model.default_size if params.size == AUTO else params.size
    problem = size_error(size, model)
    if problem is not None:
        raise errors.invalid("size", problem)
    width, height = parse_size(size)
    if params.response_format == "url":
        if not config.url_responses.enabled:
            raise errors.invalid("response_format", "response_format 'url' is disabled on this server.")
        if params.stream:
            raise errors.invalid("response_format", "Streaming sends images as b64_json only.")
    if params.negative_prompt and not model.adapter.supports_negative_prompt:
        raise errors.invalid(
            "negative_prompt", f"{model.family} is guidance-distilled and takes no negative_prompt."
        )
    steps = params.num_inference_steps or model.steps
    if steps > config.max_inference_steps:
        raise errors.invalid(
            "num_inference_steps",
            f"Invalid value for 'num_inference_steps': at most {config.max_inference_steps}.",
        )
    if params.quality not in known_qualities():
        raise errors.invalid(
            "quality",
            f"Invalid value '{params.quality}' for 'quality'. Supported values are: "
            f"{', '.join(known_qualities())}.",
        )
    tier = _choose_tier(params, runtime, config)
    # An explicit step count with no schedule of that length runs uncached (reported as `exact`).
    if steps != runtime.registry.steps:
        tier = Tier.EXACT
    base = params.seed if params.seed is not None else random_seed()
    return Plan(
        params=params,
        model_id=model.id,
        tier=tier,
        schedule=runtime.registry.for_tier(tier),
        width=width,
        height=height,
        steps=steps,
        guidance_scale=model.guidance_scale if params.guidance_scale is None else params.guidance_scale,
        seeds=tuple(base + i for i in range(params.n)),
    )


def _choose_tier(params: ImageGenerationRequest, runtime: ModelRuntime, config: ServerConfig) -> Tier:
    if params.quality != AUTO:
        return QUALITY_TO_TIER[params.quality]
    estimates = {
        tier: runtime.latency.estimate_ms(runtime.registry.for_tier(tier).macs_ratio, params.n)
        for tier in CACHED_TIERS
    }
    return choose_auto_tier(
        idle_tier=config.auto.idle_tier,
        objective_ms=config.auto.latency_objective_ms,
        wait_ms=(runtime.queue.wait_s() or 0.0) * 1000,
        estimate_ms=estimates,
    )
