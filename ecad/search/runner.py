"""NSGA-II over schedule bit vectors (pymoo ask/tell), checkpointed every generation."""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.problem import Problem
from pymoo.indicators.hv import HV
from pymoo.operators.crossover.pntx import PointCrossover
from pymoo.operators.mutation.bitflip import BitflipMutation
from pymoo.operators.sampling.rnd import BinaryRandomSampling
from tqdm import tqdm

from ecad.config import ModelConfig
from ecad.costs import schedule_cost
from ecad.files import write_bytes_atomic
from ecad.metrics import higher_is_better
from ecad.models import Architecture, get_adapter
from ecad.pipelines.loading import load_transformer_config
from ecad.schedule import Schedule, evenly_spaced, fora, fora_attention, no_cache, tgate
from ecad.search.archive import Archive, ArchivedCandidate
from ecad.search.config import SearchConfig, find_model
from ecad.search.distributed import CandidatePool, open_pool
from ecad.search.evaluator import EvaluationSetup
from ecad.search.prompts import read_prompts

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pkl"
ARCHIVE = "archive.sqlite"
# Archive generations of evaluations outside the GA (a searched candidate's is its generation, ≥ 0).
BASELINE_GENERATION = -1
VALIDATION_GENERATION = -2


class ScheduleProblem(Problem):
    """Schedule bits; minimise (−quality, cost); at least one bit must differ from no-cache."""

    def __init__(self, n_bits: int) -> None:
        super().__init__(n_var=n_bits, n_obj=2, n_ieq_constr=1, xl=0, xu=1, vtype=bool)


@dataclass
class SearchSetup:
    """What the driver derives from the config once: model, architecture, workload and evaluation setup
    (and the same setup on the validation prompts, when the config names some)."""

    config: SearchConfig
    model: ModelConfig
    architecture: Architecture
    evaluation: EvaluationSetup
    validation: EvaluationSetup | None = None

    @property
    def steps(self) -> int:
        return self.evaluation.steps

    @property
    def registry_dir(self) -> Path:
        """`--out`, else the folder the server reads for this model (`schedules` of its entry, else
        schedules/<id> beside the models config)."""
        return self.config.out or self.model.registry_dir(self.config.models_config.resolve().parent)

    def schedule(self, bits: np.ndarray, name: str) -> Schedule:
        return Schedule.from_genome(
            torch.from_numpy(np.asarray(bits, dtype=bool)), self.architecture, self.steps, name=name
        )

    def tmacs(self, schedule: Schedule) -> float:
        cost = schedule_cost(
            schedule,
            height=self.evaluation.height,
            width=self.evaluation.width,
            text_tokens=self.evaluation.text_tokens,
        )
        return cost.tmacs


def prepare(config: SearchConfig) -> SearchSetup:
    model = find_model(config)
    # Named from here on (the default is the config's first model): outputs and checkpoints use its id.
    config = config.model_copy(update={"model": model.id})
    adapter = get_adapter(model.family)
    architecture = adapter.architecture(load_transformer_config(model))
    width, height = model.native_size
    if config.resolution is not None:
        width = height = config.resolution
    default_prompts = "imagereward-100"
    prompts = read_prompts(config.prompts or default_prompts, limit=config.prompt_limit)
    evaluation = EvaluationSetup(
        model=model,
        prompts=tuple(prompts),
        seeds=tuple(range(config.images_per_prompt)),
        steps=config.steps or model.steps,
        guidance=config.guidance if config.guidance is not None else model.guidance_scale,
        height=height,
        width=width,
        text_tokens=config.text_tokens,
        metric=config.metric,
        metric_options=tuple(sorted(config.metric_options.items())),
        batch_size=config.batch_size,
        measure_latency=config.cost == "latency",
        threads=config.threads,
    )
    validation = None
    if config.validation_prompts is not None:
        held = read_prompts(config.validation_prompts, limit=config.validation_prompt_limit)
        overlap = sorted(set(held) & set(prompts))
        if overlap:
            raise ValueError(
                f"validation prompts must differ from the search's; {len(overlap)} are in both, "
                f"e.g. {overlap[0]!r}"
            )
        validation = replace(evaluation, prompts=tuple(held))
    return SearchSetup(config, model, architecture, evaluation, validation)


def heuristic_seeds(architecture: Architecture, steps: int) -> list[Schedule]:
    """ECAD's seed families, scaled to the step count: no-cache, FORA, attention-only FORA, TGATE-like,
    and single-component caching in evenly spaced blocks."""
    seeds = [no_cache(architecture, steps)]
    for every in sorted({2, 3, 4, 5, 7, 10, steps} & set(range(2, steps + 1))):
        seeds += [fora(architecture, steps, every), fora_attention(architecture, steps, every)]
    if any(
        c.role == "cross_attention" for g in get_adapter(architecture.family).groups for c in g.components
    ):
        for gate in sorted({steps // 2, (3 * steps) // 4} - {0}):
            for every in (1, 3):
                seeds.append(
                    tgate(architecture, steps, gate_step=gate, self_attn_every=every, warmup=min(2, gate))
                )
    components = [c.name for g in get_adapter(architecture.family).groups for c in g.components]
    for component in dict.fromkeys(components):
        for fraction in (0.5, 1.0):
            count = sum(component in g.component_names for g, _ in seeds[0].block_groups())
            seeds.append(
                evenly_spaced(
                    architecture, component, max(1, round(count * fraction)), max(1, steps // 2), steps
                )
            )
    unique = {schedule.digest(): schedule for schedule in seeds}
    return list(unique.values())


def initial_population(setup: SearchSetup, rng: np.random.Generator) -> np.ndarray:
    """Heuristic seeds first (evenly subsampled if too many), topped up with lightly mutated copies."""
    size = setup.config.population
    seeds = [s.genome().numpy() for s in heuristic_seeds(setup.architecture, setup.steps)]
    if len(seeds) > size:
        seeds = [seeds[int(i)] for i in np.linspace(0, len(seeds) - 1, size).round()]
    population = list(seeds)
    n_bits = seeds[0].size
    while len(population) < size:
        parent = seeds[int(rng.integers(len(seeds)))]
        flips = rng.random(n_bits) < 0.02
        population.append(np.where(flips, ~parent, parent))
    return np.array(population, dtype=bool)


def build_algorithm(setup: SearchSetup, rng: np.random.Generator) -> NSGA2:
    config = setup.config
    sampling = initial_population(setup, rng) if config.seeding == "heuristics" else BinaryRandomSampling()
    algorithm = NSGA2(
        pop_size=config.population,
        n_offsprings=config.population,
        sampling=sampling,
        crossover=PointCrossover(n_points=config.crossover_points, prob=config.crossover_prob),
        # pymoo semantics (the paper's): mutate an offspring with this probability, then flip each bit
        # with probability min(0.5, 1/n_bits), i.e. about one bit — not a 5 % per-bit rate.
        mutation=BitflipMutation(prob=config.mutation_prob),
        eliminate_duplicates=config.eliminate_duplicates,
    )
    n_bits = setup.steps * setup.architecture.num_blocks * 3
    algorithm.setup(
        ScheduleProblem(n_bits), termination=("n_gen", config.generations), seed=config.seed, verbose=False
    )
    return algorithm


@dataclass
class SearchState:
    algorithm: NSGA2
    generation: int
    fingerprint: dict[str, Any]
    hv_ideal: np.ndarray | None = None
    hv_scale: np.ndarray | None = None


class Search:
    """The resumable loop: ask → evaluate (archive first, then workers) → tell → checkpoint."""

    def __init__(self, setup: SearchSetup, progress: bool = True) -> None:
        self.setup = setup
        self.config = setup.config
        self.state_dir = self.config.state_dir()
        n_bits = setup.steps * setup.architecture.num_blocks * 3
        self.archive = Archive(self.state_dir / ARCHIVE, n_bits)
        self.progress = progress
        self.hits = 0
        self.baselines: dict[str, ArchivedCandidate] = {}
        self.quality_higher_is_better = higher_is_better(self.config.metric)

    def load_or_start(self) -> SearchState:
        path = self.state_dir / CHECKPOINT
        fingerprint = self.config.fingerprint()
        if self.config.resume and path.exists():
            state: SearchState = pickle.loads(path.read_bytes())
            if state.fingerprint != fingerprint:
                changed = sorted(k for k in fingerprint if fingerprint[k] != state.fingerprint.get(k))
                raise ValueError(
                    f"{path} was made with other settings ({', '.join(changed)}); "
                    "start a fresh search without --resume or use another --state folder"
                )
            state.algorithm.termination.n_max_gen = self.config.generations
            return state
        if not self.config.resume and len(self.archive):
            raise ValueError(
                f"{self.state_dir} holds an earlier search; pass --resume to continue it "
                "or choose another --state folder"
            )
        rng = np.random.default_rng(self.config.seed)
        return SearchState(build_algorithm(self.setup, rng), 0, fingerprint)

    def checkpoint(self, state: SearchState) -> None:
        write_bytes_atomic(self.state_dir / CHECKPOINT, pickle.dumps(state))

    def evaluate(
        self,
        pool: CandidatePool,
        genomes: np.ndarray,
        generation: int,
        archive: Archive | None = None,
        progress: str | None = None,
    ) -> list[ArchivedCandidate]:
        """Archive hits first; the rest, deduplicated, on the workers; each result archived at once.
        `archive` is the search's own unless given (the validation scores keep theirs); `progress` names
        a progress bar over the evaluations."""
        archive = self.archive if archive is None else archive
        schedules = [
            self.setup.schedule(bits, f"gen_{generation:03d}_cand_{i:03d}") for i, bits in enumerate(genomes)
        ]
        results: dict[str, ArchivedCandidate] = {}
        pending: dict[str, Schedule] = {}
        for schedule in schedules:
            digest = schedule.digest()
            archived = archive.get(digest)
            if archived is not None:
                results[digest] = archived
                self.hits += 1
            else:
                pending.setdefault(digest, schedule)
        order = list(pending.items())
        evaluations = pool.evaluate([(s.name, s.genome().numpy()) for _, s in order])
        shown = progress is not None and self.progress
        for index, evaluation in tqdm(evaluations, total=len(order), desc=progress, disable=not shown):
            digest, schedule = order[index]
            candidate = ArchivedCandidate(
                digest=digest,
                bits=schedule.genome().numpy(),
                quality=evaluation.quality,
                tmacs=self.setup.tmacs(schedule),
                latency_ms=evaluation.latency_ms,
                generation=generation,
            )
            archive.add(candidate)
            results[digest] = candidate
        return [results[schedule.digest()] for schedule in schedules]

    def objectives(
        self, candidates: list[ArchivedCandidate], genomes: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        cost = [c.latency_ms if self.config.cost == "latency" else c.tmacs for c in candidates]
        sign = -1.0 if self.quality_higher_is_better else 1.0
        minimised = np.column_stack([[sign * c.quality for c in candidates], cost]).astype(float)
        violation = (1.0 - (~genomes).sum(axis=1, keepdims=True)).astype(float)
        return minimised, violation

    def run(self) -> SearchState:
        state = self.load_or_start()
        algorithm = state.algorithm
        bar = tqdm(
            total=self.config.generations,
            initial=state.generation,
            unit="gen",
            disable=not self.progress,
            desc=f"search {self.setup.model.id}",
        )
        try:
            with open_pool(self.config.dask, self.setup.evaluation) as pool:
                while algorithm.has_next():
                    population = algorithm.ask()
                    genomes = population.get("X").astype(bool)
                    candidates = self.evaluate(pool, genomes, state.generation)
                    minimised, violation = self.objectives(candidates, genomes)
                    population.set("F", minimised, "G", violation)
                    algorithm.tell(infills=population)
                    state.generation += 1
                    if state.hv_scale is None:
                        self._fix_hv_frame(state, minimised)
                    self.checkpoint(state)
                    bar.update(1)
                    bar.set_postfix(
                        evaluated=len(self.archive), hits=self.hits, hv=f"{self.hypervolume(state):.4g}"
                    )
                self.baselines = self.score_baselines(pool)
        finally:
            bar.close()
        return state

    def score_baselines(self, pool: CandidatePool) -> dict[str, ArchivedCandidate]:
        """No-cache and FORA N=2..5: the reference quality and the baselines of the plot and summary."""
        schedules = [no_cache(self.setup.architecture, self.setup.steps)]
        schedules += [
            fora(self.setup.architecture, self.setup.steps, n) for n in range(2, 6) if n < self.setup.steps
        ]
        genomes = np.array([s.genome().numpy() for s in schedules])
        scored = self.evaluate(pool, genomes, generation=BASELINE_GENERATION)
        return {schedule.name: candidate for schedule, candidate in zip(schedules, scored, strict=True)}

    def validate(self, front: list[ArchivedCandidate]) -> dict[str, ArchivedCandidate]:
        """The front and the baselines re-scored on the validation prompts, by digest.

        Calibration scores are what the GA selected on, so they flatter the front; the tier rule reads
        these instead. Kept in their own archive, named by the validation setup, so a rerun re-scores
        nothing it already has."""
        validation = self.setup.validation
        if validation is None:
            raise ValueError("this search has no validation prompts")
        # Named by what decides the scores (not the worker's thread count), so a rerun finds it.
        name = f"validation-{replace(validation, threads=None).key()}.sqlite"
        archive = Archive(self.state_dir / name, self.archive.n_bits)
        genomes = np.array([c.bits for c in front] + [b.bits for b in self.baselines.values()], dtype=bool)
        try:
            with open_pool(self.config.dask, validation) as pool:
                scored = self.evaluate(
                    pool, genomes, VALIDATION_GENERATION, archive=archive, progress="validation"
                )
        finally:
            archive.close()
        return {candidate.digest: candidate for candidate in scored}

    def _fix_hv_frame(self, state: SearchState, minimised: np.ndarray) -> None:
        """Normalise by the first generation's spread, so hypervolume compares across generations."""
        state.hv_ideal = minimised.min(axis=0)
        state.hv_scale = np.maximum(minimised.max(axis=0) - state.hv_ideal, 1e-12)

    def hypervolume(self, state: SearchState) -> float:
        opt = state.algorithm.opt
        if opt is None or state.hv_scale is None:
            return 0.0
        feasible = opt[opt.get("feasible").flatten()]
        if len(feasible) == 0:
            return 0.0
        normalised = (feasible.get("F") - state.hv_ideal) / state.hv_scale
        return float(HV(ref_point=np.full(2, 1.1))(normalised))
