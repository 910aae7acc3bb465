"""The request planner, in-process: request parameters + a model's runtime + server config → a plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ecad.config import ModelConfig
from ecad.tiers import CACHED_TIERS, QUALITY_TO_TIER, Tier, known_qualities
from server import errors
from server.config import ServerConfig
from server.planner import plan_request
from server.protocol import ImageGenerationRequest
from server.runtime import ModelRuntime
from tests.server_configs import server_config

TINY = ModelConfig.model_validate(server_config()["models"][0])
FLUX = ModelConfig(id="flux-tiny", family="flux", source="random:tiny", steps=4, default_size="64x64")


def runtime(model: ModelConfig = TINY, directory: Path | None = None) -> ModelRuntime:
    directory = directory or model.schedules
    assert directory is not None
    return ModelRuntime.build(model, directory, ServerConfig().tier_rule, max_queue=3)


@pytest.fixture(scope="module")
def tiny() -> ModelRuntime:
    return runtime()


def plan(runtime: ModelRuntime, config: ServerConfig | None = None, **params: Any) -> Any:
    request = ImageGenerationRequest.model_validate({"prompt": "a red square", **params})
    return plan_request(request, runtime, config or ServerConfig(), random_seed=lambda: 7)


def refusal(runtime: ModelRuntime, config: ServerConfig | None = None, **params: Any) -> dict[str, Any]:
    with pytest.raises(errors.ApiError) as caught:
        plan(runtime, config, **params)
    assert caught.value.status == 400
    return caught.value.body()["error"]


def test_defaults_resolve_size_steps_guidance_and_seeds(tiny: ModelRuntime) -> None:
    result = plan(tiny)
    assert (result.width, result.height, result.size) == (64, 64, "64x64")
    assert (result.steps, result.guidance_scale, result.seeds) == (20, TINY.guidance_scale, (7,))
    job = result.job("uid-1", enqueued_at=100.0, deadline_s=30.0)
    assert (job.uid, job.n, job.deadline, job.partial_images) == ("uid-1", 1, 130.0, 0)
    assert job.schedule_digest == result.schedule.digest


def test_seeds_follow_the_requested_seed(tiny: ModelRuntime) -> None:
    assert plan(tiny, n=3, seed=41).seeds == (41, 42, 43)
    assert plan(tiny, n=2).seeds == (7, 8)  # from the injected random seed


@pytest.mark.parametrize("quality", sorted(QUALITY_TO_TIER))
def test_each_quality_runs_its_tier_schedule(tiny: ModelRuntime, quality: str) -> None:
    result = plan(tiny, quality=quality)
    assert result.tier == QUALITY_TO_TIER[quality]
    assert result.schedule == tiny.registry.for_tier(result.tier)


def test_auto_is_the_idle_tier_until_latency_is_known(tiny: ModelRuntime) -> None:
    config = ServerConfig()
    assert plan(tiny, config, quality="auto").tier == config.auto.idle_tier


def test_auto_degrades_when_the_objective_cannot_be_met(tiny: ModelRuntime) -> None:
    loaded = runtime()
    loaded.latency.observe(generation_ms=10_000.0, images=1, macs_ratio=1.0)
    config = ServerConfig.model_validate({"auto": {"latency_objective_ms": 1.0}})
    assert plan(loaded, config, quality="auto").tier == CACHED_TIERS[0]


def test_another_step_count_runs_uncached(tiny: ModelRuntime) -> None:
    result = plan(tiny, quality="fast", num_inference_steps=8)
    assert (result.tier, result.steps) == (Tier.EXACT, 8)


def test_partial_images_only_reach_the_worker_when_streaming(tiny: ModelRuntime) -> None:
    assert plan(tiny, partial_images=2).job("u", 0.0, 1.0).partial_images == 0
    assert plan(tiny, partial_images=2, stream=True).job("u", 0.0, 1.0).partial_images == 2


@pytest.mark.parametrize(
    ("params", "param", "message"),
    [
        (
            {"size": "65x64"},
            "size",
            "The provided size '65x64' is not valid for model 'ecad-tiny': both sides must be multiples "
            "of 16 between 64 and 256.",
        ),
        ({"size": "64"}, "size", "The provided size '64' is not valid: use WIDTHxHEIGHT or 'auto'."),
        (
            {"quality": "ultra"},
            "quality",
            f"Invalid value 'ultra' for 'quality'. Supported values are: {', '.join(known_qualities())}.",
        ),
        (
            {"num_inference_steps": 101},
            "num_inference_steps",
            "Invalid value for 'num_inference_steps': at most 100.",
        ),
        (
            {"response_format": "url", "stream": True},
            "response_format",
            "Streaming sends images as b64_json only.",
        ),
    ],
)
def test_refusals_name_the_parameter(
    tiny: ModelRuntime, params: dict[str, Any], param: str, message: str
) -> None:
    assert refusal(tiny, **params) == {
        "message": message,
        "type": "invalid_request_error",
        "param": param,
        "code": "invalid_value",
    }


def test_url_responses_can_be_disabled(tiny: ModelRuntime) -> None:
    config = ServerConfig.model_validate({"url_responses": {"enabled": False}})
    assert refusal(tiny, config, response_format="url") == {
        "message": "response_format 'url' is disabled on this server.",
        "type": "invalid_request_error",
        "param": "response_format",
        "code": "invalid_value",
    }


def test_guidance_distilled_models_refuse_a_negative_prompt(tmp_path: Path) -> None:
    flux = runtime(FLUX, tmp_path / "no-registry")
    assert flux.registry_dir is None  # no registry: every tier runs uncached
    assert plan(flux, quality="fast").schedule.name == flux.registry.for_tier(Tier.EXACT).name
    assert refusal(flux, negative_prompt="blur") == {
        "message": "flux is guidance-distilled and takes no negative_prompt.",
        "type": "invalid_request_error",
        "param": "negative_prompt",
        "code": "invalid_value",
    }
