"""NSGA-II over schedule bit vectors (pymoo ask/tell), checkpointed every generation."""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.problem import Problem
from pymoo.indicators.hv import HV
from pymoo.operators.crossover.pntx import PointCrossover
from pymoo.operators.mutation.bitflip import BitflipMutation
from pymoo.operators.sampling.rnd import BinaryRandomSampling
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting
from tqdm import tqdm

from ecad.files import write_bytes_atomic
from ecad.metrics import higher_is_better
from ecad.models import Architecture, get_adapter
from ecad.schedule import Schedule, evenly_spaced, fora, fora_attention, no_cache, tgate
from ecad.search.archive import Archive, ArchivedCandidate
from ecad.search.distributed import CandidatePool, open_pool
from ecad.search.evaluator import EvaluationSetup
from ecad.search.setup import SearchSetup

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


@dataclass(frozen=True)
class SearchRun:
    """What a search found: every cached schedule the GA evaluated, their Pareto front, the baselines
    (no-cache and FORA N=2..5, by schedule name) and, with validation prompts, the front and the
    baselines re-scored there (by digest) — which the tier rule then reads."""

    setup: SearchSetup
    searched: list[ArchivedCandidate]
    front: list[ArchivedCandidate]
    baselines: dict[str, ArchivedCandidate]
    validation: dict[str, ArchivedCandidate] | None = None


def run_search(setup: SearchSetup, progress: bool = True) -> SearchRun:
    """The whole search on one evaluation pool: the GA (resumable), the baselines, then validation."""
    search = Search(setup, progress)
    try:
        with open_pool(setup.config.dask) as pool:
            search.run(pool)
            baselines = search.score_baselines(pool)
            searched = [
                c
                for c in search.archive.all()
                if c.generation >= 0 and not setup.schedule(c.bits, "x").is_no_cache
            ]
            front = pareto_front(searched, higher_is_better(setup.config.metric))
            validation = search.validate(pool, front, baselines) if setup.validation is not None else None
    finally:
        search.archive.close()
    return SearchRun(setup, searched, front, baselines, validation)


def pareto_front(candidates: list[ArchivedCandidate], higher_is_better: bool) -> list[ArchivedCandidate]:
    """Non-dominated candidates by (quality, TMACs), cheapest first."""
    if not candidates:
        return []
    sign = -1.0 if higher_is_better else 1.0
    objectives = np.array([[sign * c.quality, c.tmacs] for c in candidates])
    first = NonDominatedSorting().do(objectives, only_non_dominated_front=True)
    return sorted((candidates[int(i)] for i in first), key=lambda c: (c.tmacs, c.digest))


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
        *,
        evaluation: EvaluationSetup | None = None,
        archive: Archive | None = None,
        progress: str | None = None,
    ) -> list[ArchivedCandidate]:
        """Archive hits first; the rest, deduplicated, on the workers; each result archived at once.
        `evaluation` and `archive` are the search's own unless given (validation has its own);
        `progress` names a progress bar over the evaluations."""
        evaluation = self.setup.evaluation if evaluation is None else evaluation
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
        evaluations = pool.evaluate(evaluation, [(s.name, s.genome().numpy()) for _, s in order])
        shown = progress is not None and self.progress
        for index, scored in tqdm(evaluations, total=len(order), desc=progress, disable=not shown):
            digest, schedule = order[index]
            candidate = ArchivedCandidate(
                digest=digest,
                bits=schedule.genome().numpy(),
                quality=scored.quality,
                tmacs=evaluation.tmacs(schedule),
                latency_ms=scored.latency_ms,
                generation=generation,
            )
            archive.add(candidate)
            results[digest] = candidate
        return [results[schedule.digest()] for schedule in schedules]

    def objectives(
        self, candidates: list[ArchivedCandidate], genomes: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        cost = [self._cost(c) for c in candidates]
        sign = -1.0 if self.quality_higher_is_better else 1.0
        quality = [sign * c.quality for c in candidates]
        minimised = np.column_stack([quality, cost]).astype(float)
        violation = (1.0 - (~genomes).sum(axis=1, keepdims=True)).astype(float)
        return minimised, violation

    def _cost(self, candidate: ArchivedCandidate) -> float:
        if self.config.cost == "macs":
            return candidate.tmacs
        if candidate.latency_ms is None:
            raise ValueError(f"candidate {candidate.digest} was archived without a latency")
        return candidate.latency_ms

    def run(self, pool: CandidatePool) -> SearchState:
        """The GA from its checkpoint (or the start) to the configured generation count."""
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

    def validate(
        self,
        pool: CandidatePool,
        front: list[ArchivedCandidate],
        baselines: dict[str, ArchivedCandidate],
    ) -> dict[str, ArchivedCandidate]:
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
        genomes = np.array([c.bits for c in front] + [b.bits for b in baselines.values()], dtype=bool)
        try:
            scored = self.evaluate(
                pool,
                genomes,
                VALIDATION_GENERATION,
                evaluation=validation,
                archive=archive,
                progress="validation",
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
