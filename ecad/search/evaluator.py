"""Score candidate schedules: generate the calibration images under a schedule, then measure them.

One `CandidateEvaluator` per worker process holds the pipeline, the prompts encoded once, and (for
reference metrics) the no-cache images, generated once. Every candidate sees the same noise: image i
of prompt p always uses seed i.
"""

from __future__ import annotations

import hashlib
import math
import pickle
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from ecad.cache import CacheEngine
from ecad.config import ModelConfig
from ecad.costs import schedule_cost
from ecad.generation import EncodedPrompts, render
from ecad.metrics import get_metric, summary_score
from ecad.models import Architecture, architecture_of
from ecad.pipelines.loading import load_pipeline
from ecad.schedule import Schedule

# Qualities are rounded before the GA sees them, so last-bit float noise (thread counts, machines)
# cannot change a selection decision and the same seed gives the same front everywhere.
OBJECTIVE_DIGITS = 6
# Reference metrics score an image identical to its reference as +inf (PSNR); the GA needs a number.
QUALITY_CEILING = 1000.0


@dataclass(frozen=True)
class EvaluationSetup:
    """Everything a worker needs to rebuild the evaluator; picklable, hashed into a cache key."""

    model: ModelConfig
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int
    guidance: float
    height: int
    width: int
    text_tokens: int | None
    metric: str
    metric_options: tuple[tuple[str, Any], ...] = ()
    batch_size: int = 8
    measure_latency: bool = False
    threads: int | None = None

    def key(self) -> str:
        return hashlib.sha256(pickle.dumps(self)).hexdigest()[:16]

    def tmacs(self, schedule: Schedule) -> float:
        """The schedule's TMACs at this workload (the paper's convention, see `ecad.costs`)."""
        return schedule_cost(
            schedule, height=self.height, width=self.width, text_tokens=self.text_tokens
        ).tmacs


@dataclass(frozen=True)
class Evaluation:
    quality: float
    latency_ms: float | None = None


@dataclass
class CandidateEvaluator:
    setup: EvaluationSetup
    pipe: Any = field(init=False)
    architecture: Architecture = field(init=False)
    encoded: EncodedPrompts = field(init=False)
    references: list[Image.Image] | None = field(init=False)

    def __post_init__(self) -> None:
        setup = self.setup
        if setup.threads is not None:
            torch.set_num_threads(setup.threads)
        self.pipe = load_pipeline(setup.model)
        self.architecture = architecture_of(self.pipe.transformer, setup.model.family)
        self.encoded = EncodedPrompts.encode(self.pipe, setup.model.family, setup.prompts, setup.text_tokens)
        self.metric = get_metric(setup.metric, **dict(setup.metric_options))
        self.jobs = [(prompt, seed) for seed in setup.seeds for prompt in range(len(setup.prompts))]
        self.job_prompts = [setup.prompts[prompt] for prompt, _ in self.jobs]
        self.references = self.generate(None)[0] if self.metric.needs_references else None

    def generate(
        self, schedule: Schedule | None, steps: int | None = None
    ) -> tuple[list[Image.Image], float]:
        """Every job's image under `schedule` (None: the stock pipeline, maybe at other `steps`), ms/image."""
        setup, images = self.setup, []
        start = time.perf_counter()
        with CacheEngine(self.pipe, schedule) if schedule is not None else nullcontext():
            for first in range(0, len(self.jobs), setup.batch_size):
                chunk = self.jobs[first : first + setup.batch_size]
                images += render(
                    self.pipe,
                    self.encoded,
                    [prompt for prompt, _ in chunk],
                    [seed for _, seed in chunk],
                    steps or setup.steps,
                    setup.guidance,
                    setup.height,
                    setup.width,
                )
        return images, (time.perf_counter() - start) * 1000 / len(self.jobs)

    def evaluate(self, schedule: Schedule) -> Evaluation:
        images, latency = self.generate(schedule)
        quality = min(summary_score(self.metric, images, self.job_prompts, self.references), QUALITY_CEILING)
        if math.isnan(quality):
            raise ValueError(f"metric {self.setup.metric} gave NaN for schedule {schedule.name}")
        return Evaluation(
            quality=round(quality, OBJECTIVE_DIGITS),
            latency_ms=round(latency, 3) if self.setup.measure_latency else None,
        )


_EVALUATORS: dict[str, CandidateEvaluator] = {}
_EVALUATORS_LOCK = threading.Lock()


def evaluator_for(setup: EvaluationSetup) -> CandidateEvaluator:
    """This process's evaluator for `setup`, built on first use (loading a pipeline is the slow part)."""
    key = setup.key()
    with _EVALUATORS_LOCK:
        if key not in _EVALUATORS:
            _EVALUATORS.clear()  # one model per worker at a time
            _EVALUATORS[key] = CandidateEvaluator(setup)
        return _EVALUATORS[key]


def evaluate_bits(setup: EvaluationSetup, bits: np.ndarray, name: str) -> Evaluation:
    """The unit of work sent to a (Dask) worker: one candidate, given as its flat bit vector."""
    evaluator = evaluator_for(setup)
    schedule = Schedule.from_genome(
        torch.from_numpy(np.asarray(bits, dtype=bool)), evaluator.architecture, setup.steps, name=name
    )
    return evaluator.evaluate(schedule)
