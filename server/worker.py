"""The inference worker of one model: its pipeline, its schedules, and one pipeline call per group."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diffusers
import litserve as ls
import torch
import transformers
from tqdm import tqdm

from ecad.cache import CacheEngine
from ecad.config import ModelConfig
from ecad.models import architecture_of, get_adapter
from ecad.pipelines.loading import load_pipeline
from ecad.registry import TierRule, TierSchedule
from ecad.tiers import Tier
from server import telemetry
from server.imaging import encode_b64, fit_to
from server.loop import Emit, GenerationCancelledError, GroupingLoop
from server.messages import Done, Image, Job, Partial, Report
from server.runtime import load_model_registry
from server.state import StateDir
from server.transport import WorkerLoop, WorkerSpec

logger = logging.getLogger(__name__)


def partial_steps(steps: int, count: int) -> set[int]:
    """Denoising steps after which partial images are sent, evenly spread and before the last step."""
    return {round(steps * (k + 1) / (count + 1)) - 1 for k in range(count)} - {steps - 1, -1}


class ImageWorker(ls.LitAPI):
    """One model's worker. Runs under `GroupingLoop`, which calls `run_group`; the default LitAPI
    request hooks are not used."""

    def __init__(
        self,
        model: ModelConfig,
        api_path: str,
        registry_dir: Path | None,
        rule: TierRule,
        state_dir: Path,
        grouping: GroupingLoop,
    ) -> None:
        super().__init__(api_path=api_path, spec=WorkerSpec(api_path), loop=WorkerLoop(grouping))
        self.model = model
        self.registry_dir = registry_dir
        self.rule = rule
        self.state = StateDir(state_dir)

    def setup(self, device: str) -> None:
        # tqdm's default lock is a multiprocessing semaphore; LitServe ends workers without running
        # their finalizers, so it would be reported leaked at shutdown. One process needs a thread lock.
        tqdm.set_lock(threading.RLock())
        diffusers.utils.logging.disable_progress_bar()  # loading bars in the server log are noise
        transformers.utils.logging.disable_progress_bar()
        # The model's own device wins over LitServe's pick: each model names where it runs.
        self.pipe = load_pipeline(self.model)
        architecture = architecture_of(self.pipe.transformer, self.model.family)
        registry = load_model_registry(self.model, self.registry_dir, self.rule, architecture)
        # Looked up by tier name: the API process may have built `exact` for the reference architecture.
        self.tiers: dict[Tier, TierSchedule] = dict(registry.tiers)
        self.engines = {
            t.digest: CacheEngine(self.pipe, t.schedule)
            for t in registry.tiers.values()
            if t.tier != Tier.EXACT
        }
        self.adapter = get_adapter(self.model.family)
        self.state.register_worker(self.model.id)
        logger.info("worker for %s ready with tiers %s", self.model.id, sorted(registry.tiers))

    def predict(self, x: Any) -> Any:
        raise NotImplementedError("requests run through GroupingLoop.run_group")

    def run_group(self, jobs: list[Job], emit: Emit) -> None:
        """Generate every image of `jobs` (same group key) in one pipeline call and emit the results."""
        first = jobs[0]
        started = time.monotonic()
        prompts = [job.prompt for job in jobs for _ in job.seeds]
        generators = [
            torch.Generator(self.model.device).manual_seed(seed) for job in jobs for seed in job.seeds
        ]
        rows, offset = {}, 0
        for job in jobs:
            rows[job.uid] = (offset, offset + job.n)
            offset += job.n
        partial_at = {job.uid: sorted(partial_steps(job.steps, job.partial_images)) for job in jobs}
        width, height = self.model.native_size if self.model.render_size else (first.width, first.height)

        def on_step(step: int, latents: torch.Tensor) -> None:
            if all(self.state.is_cancelled(job.uid) or time.monotonic() > job.deadline for job in jobs):
                raise GenerationCancelledError()
            for job in jobs:
                if step in partial_at[job.uid]:
                    start, stop = rows[job.uid]
                    images = self.adapter.decode_latents(self.pipe, latents[start:stop], height, width)
                    index = partial_at[job.uid].index(step)
                    for i, image in enumerate(images):
                        emit(job.uid, Partial(i, index, self._encode(image, job)))

        tier = self.tiers[first.tier]
        engine = self.engines.get(tier.digest) if first.tier != Tier.EXACT else None
        call = {
            "prompt": prompts,
            "height": height,
            "width": width,
            "num_inference_steps": first.steps,
            "guidance_scale": first.guidance_scale,
            "generator": generators,
            "output_type": "pil",
            **self._call_kwargs(jobs, on_step),
        }
        with torch.inference_mode():
            if engine is None:
                output = self.pipe(**call)
                mask = tier.schedule.mask
                computed, reused, skipped = first.steps * mask.shape[1] * mask.shape[2], 0, 0
            else:
                with engine:
                    output = self.pipe(**call)
                    stats = engine.last_call_stats()
                computed, reused, skipped = stats.computed, stats.reused, stats.skipped
        generation_s = time.monotonic() - started
        labels = {"model": self.model.id, "tier": first.tier, "schedule": tier.name}
        telemetry.PIPELINE_TIME.labels(**labels).observe(generation_s)
        telemetry.IMAGES.labels(**labels).inc(len(prompts))
        telemetry.BATCH_IMAGES.labels(model=self.model.id).observe(len(prompts))
        for action, count in (("computed", computed), ("reused", reused), ("skipped", skipped)):
            telemetry.COMPONENT_CALLS.labels(**labels, action=action).inc(count)

        for job in jobs:
            start, stop = rows[job.uid]
            for i, image in enumerate(output.images[start:stop]):
                emit(job.uid, Image(i, self._encode(image, job)))
            report = Report(
                schedule=tier.name,
                schedule_digest=tier.digest,
                steps=job.steps,
                guidance_scale=job.guidance_scale,
                seeds=job.seeds,
                computed=computed,
                reused=reused,
                skipped=skipped,
                batch_images=len(prompts),
                prompt_tokens=self._prompt_tokens(job.prompt),
                queue_ms=round((started - job.enqueued_at) * 1000, 1),
                generation_ms=round(generation_s * 1000, 1),
            )
            emit(job.uid, Done(report))

    @staticmethod
    def _encode(image: Any, job: Job) -> str:
        return encode_b64(fit_to(image, job.width, job.height), job.output_format, job.output_compression)

    def _call_kwargs(self, jobs: list[Job], on_step: Callable[[int, torch.Tensor], None]) -> dict[str, Any]:
        kwargs = {**self.adapter.call_kwargs(), **self.adapter.step_callback_kwargs(on_step)}
        if self.adapter.supports_negative_prompt:
            kwargs["negative_prompt"] = [job.negative_prompt or "" for job in jobs for _ in job.seeds]
        return kwargs

    def _prompt_tokens(self, prompt: str) -> int:
        return self.adapter.prompt_tokens(self.pipe, prompt)
