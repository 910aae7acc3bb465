"""What crosses between the API processes and the inference workers.

An API process sends a `Job`; the worker answers with `Started`, then `Partial`s and `Image`s, and
ends with `Done` (carrying its `Report`) or `Failed`. They cross process boundaries pickled, so they
are plain frozen dataclasses of this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ecad.tiers import Tier


@dataclass(frozen=True)
class Job:
    """One admitted request, fully resolved by the API process; a worker runs it as given."""

    uid: str
    model: str
    tier: Tier
    schedule_digest: str
    prompt: str
    negative_prompt: str | None
    seeds: tuple[int, ...]
    width: int
    height: int
    steps: int
    guidance_scale: float
    output_format: str
    output_compression: int | None
    partial_images: int
    enqueued_at: float  # time.monotonic(), comparable across processes on one host
    deadline: float  # time.monotonic()

    @property
    def n(self) -> int:
        return len(self.seeds)

    def group_key(self) -> tuple[Any, ...]:
        """Requests that can share one pipeline call."""
        return (self.model, self.schedule_digest, self.width, self.height, self.steps, self.guidance_scale)


@dataclass(frozen=True)
class Report:
    """How the worker ran a job: what the response's `x_ecad` and `usage` report."""

    schedule: str
    schedule_digest: str
    steps: int
    guidance_scale: float
    seeds: tuple[int, ...]
    computed: int
    reused: int
    skipped: int
    batch_images: int
    prompt_tokens: int
    queue_ms: float
    generation_ms: float


@dataclass(frozen=True)
class Started:
    """The worker took the job; its pid lets the API process notice a crash."""

    pid: int


@dataclass(frozen=True)
class Partial:
    image_index: int
    partial_index: int
    b64: str


@dataclass(frozen=True)
class Image:
    image_index: int
    b64: str


@dataclass(frozen=True)
class Done:
    report: Report


@dataclass(frozen=True)
class Failed:
    status: int
    message: str
    code: str | None


WorkerMessage = Started | Partial | Image | Done | Failed
# The last message a worker sends for a job.
Final = Done | Failed
