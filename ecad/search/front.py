"""Turn the archive into the registry: Pareto front, tier assignment, schedule files, plot and summary."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from matplotlib.figure import Figure

from ecad.files import atomic_write, write_text_atomic
from ecad.metrics import higher_is_better
from ecad.registry import (
    FRONT_FILE,
    FrontPoint,
    FrontReference,
    assign_tiers,
    point_for,
    write_registry,
)
from ecad.schedule import Schedule, ScheduleMetadata
from ecad.search.archive import ArchivedCandidate
from ecad.search.runner import SearchRun
from ecad.tiers import CACHED_TIERS, Tier

FILE_PREFIX = "ecad_gen"
PLOT_FILE = "pareto.png"
SUMMARY_FILE = "summary.md"


@dataclass(frozen=True)
class SearchOutcome:
    """The registry written from a run: its schedule files and the tier each serves."""

    run: SearchRun
    schedules: dict[str, Schedule]  # by file name
    points: list[FrontPoint]
    tiers: dict[str, str]
    registry: Path

    @property
    def no_cache(self) -> ArchivedCandidate:
        return self.run.baselines["no_cache"]


def write_outputs(run: SearchRun, provenance: str) -> SearchOutcome:
    """The registry of a run (schedule files, `front.json` with tiers), its plot and summary.

    With validation scores the tier rule reads them instead of the search's own; `provenance` says
    how the run was made (the command line)."""
    setup, validation = run.setup, run.validation
    config, evaluation = setup.config, setup.evaluation
    reference = run.baselines["no_cache"]

    schedules: dict[str, Schedule] = {}
    for candidate in run.front:
        name = f"{FILE_PREFIX}{candidate.generation:03d}_{candidate.digest}"
        schedule = setup.schedule(candidate.bits, name)
        schedule.metadata = ScheduleMetadata(
            model_id=setup.model.id,
            resolution=(evaluation.height, evaluation.width),
            text_tokens=evaluation.text_tokens,
            guidance_scale=evaluation.guidance,
            quality_metric=config.metric,
            quality_value=candidate.quality,
            validation_value=None if validation is None else validation[candidate.digest].quality,
            generation=candidate.generation,
            tmacs=candidate.tmacs,
            latency_ms=candidate.latency_ms,
        )
        schedules[f"{name}.json"] = schedule
    points = [point_for(file, schedule) for file, schedule in schedules.items()]
    recorded = FrontReference(quality_metric=config.metric, no_cache_value=reference.quality)
    if validation is not None:
        recorded = recorded.model_copy(
            update={
                "validation_no_cache_value": validation[reference.digest].quality,
                "validation_prompts": config.validation_prompts,
            }
        )
    tier_reference = reference.quality if validation is None else validation[reference.digest].quality
    tiers = assign_tiers(points, tier_reference, config.tier_rule, higher_is_better(config.metric))
    for tier, file in tiers.items():
        schedules[file].metadata = replace(schedules[file].metadata, tier=tier)

    registry = setup.registry_dir
    for stale in registry.glob(f"{FILE_PREFIX}*.json"):
        if stale.name not in schedules:
            stale.unlink()
    write_registry(
        registry,
        model_id=setup.model.id,
        schedules=schedules,
        tiers=tiers,
        reference=recorded,
        provenance=provenance,
    )
    outcome = SearchOutcome(run, schedules, points, tiers, registry)
    plot_front(outcome, registry / PLOT_FILE)
    write_text_atomic(registry / SUMMARY_FILE, summary_table(outcome))
    return outcome


def summary_table(outcome: SearchOutcome) -> str:
    run = outcome.run
    setup, validation = run.setup, run.validation
    config, evaluation, held = setup.config, setup.evaluation, setup.validation
    tier_of = {file: tier for tier, file in outcome.tiers.items()}
    no_cache_tmacs = outcome.no_cache.tmacs
    lines = [
        f"# Search result: {setup.model.id}",
        "",
        f"{config.metric} on {len(evaluation.prompts)} prompts × {len(evaluation.seeds)} seeds, "
        f"{evaluation.steps} steps, {evaluation.width}x{evaluation.height}, guidance {evaluation.guidance}, "
        f"population {config.population}, {config.generations} generations, seed {config.seed}. "
        f"Front file: `{FRONT_FILE}`; plot: `{PLOT_FILE}`.",
    ]
    if validation is not None and held is not None:
        lines += [
            "",
            f"Tiers are assigned on the validation column: the front and the baselines re-scored on "
            f"{len(held.prompts)} other prompts (`{config.validation_prompts}`) × the same seeds.",
        ]
    column = "" if validation is None else " validation |"
    lines += [
        "",
        f"| schedule | tier | {config.metric} |{column} TMACs | MAC ratio | generation |",
        "|---|---|---|---|---|---|" + ("---|" if validation is not None else ""),
    ]
    for point in sorted(outcome.points, key=lambda p: -p.tmacs):
        tier = tier_of.get(point.file, "")
        validated = "" if validation is None else f" {point.validation_value:.6g} |"
        lines.append(
            f"| {point.file} | {tier} | {point.quality_value:.6g} |{validated} {point.tmacs:.4g} | "
            f"{point.macs_ratio:.2f}× | {point.generation} |"
        )
    for name, baseline in sorted(run.baselines.items(), key=lambda item: -item[1].tmacs):
        ratio = no_cache_tmacs / baseline.tmacs
        validated = "" if validation is None else f" {validation[baseline.digest].quality:.6g} |"
        lines.append(
            f"| baseline `{name}` | {'exact' if name == 'no_cache' else ''} | "
            f"{baseline.quality:.6g} |{validated} {baseline.tmacs:.4g} | {ratio:.2f}× | – |"
        )
    return "\n".join(lines) + "\n"


def plot_front(outcome: SearchOutcome, path: Path) -> None:
    """Quality against MAC ratio: every evaluated candidate, the front, its tiers and the baselines.
    Drawn on a bare `Figure` (no pyplot), so no global matplotlib backend is set."""
    run, points = outcome.run, outcome.points
    no_cache_tmacs = outcome.no_cache.tmacs
    figure = Figure(figsize=(7, 4.5), dpi=120)
    axes = figure.subplots()
    axes.scatter(
        [no_cache_tmacs / c.tmacs for c in run.searched],
        [c.quality for c in run.searched],
        s=8,
        color="0.75",
        label="evaluated candidates",
    )
    front = sorted(points, key=lambda p: p.macs_ratio)
    ratios = [p.macs_ratio for p in front]
    quality = {c.digest: c.quality for c in run.front}
    axes.plot(ratios, [quality[p.digest] for p in front], "o-", color="tab:blue", label="Pareto front")
    validation = run.validation
    if validation is not None:
        validated = [validation[p.digest].quality for p in front]
        label = "front on the validation prompts (tiers)"
        axes.plot(ratios, validated, "o:", color="tab:purple", markerfacecolor="none", label=label)
        no_cache = validation[outcome.no_cache.digest].quality
        axes.axhline(no_cache, color="tab:purple", linestyle=":", linewidth=0.8, label="no cache, validation")
    tiers_at: dict[str, list[Tier]] = {}
    for tier, file in outcome.tiers.items():
        tiers_at.setdefault(file, []).append(Tier(tier))
    for file, tiers in tiers_at.items():
        point = next(p for p in points if p.file == file)
        label = "/".join(sorted(tiers, key=CACHED_TIERS.index))
        axes.annotate(label, (point.macs_ratio, point.tier_value), textcoords="offset points", xytext=(6, 6))
    fora = sorted((b for name, b in run.baselines.items() if name.startswith("fora")), key=lambda b: -b.tmacs)
    axes.plot(
        [no_cache_tmacs / b.tmacs for b in fora],
        [b.quality for b in fora],
        "s--",
        color="tab:orange",
        label="FORA N=2..5",
    )
    axes.axhline(outcome.no_cache.quality, color="tab:green", linestyle=":", label="no cache")
    axes.ticklabel_format(axis="y", useOffset=False)
    axes.set_xlabel("MAC ratio (no-cache MACs / schedule MACs)")
    axes.set_ylabel(run.setup.config.metric)
    axes.set_title(f"{run.setup.model.id}: quality vs compute")
    axes.legend(loc="best", fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_write(path) as handle:
        figure.savefig(handle, format="png")
