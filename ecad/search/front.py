"""Turn the archive into the registry: Pareto front, tier assignment, schedule files, plot and summary."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from ecad.files import atomic_write, write_text_atomic
from ecad.metrics import higher_is_better
from ecad.registry import FRONT_FILE, FrontPoint, assign_tiers, point_for, write_registry
from ecad.schedule import Schedule, ScheduleMetadata
from ecad.search.archive import ArchivedCandidate
from ecad.search.runner import SearchSetup

FILE_PREFIX = "ecad_gen"
PLOT_FILE = "pareto.png"
SUMMARY_FILE = "summary.md"


@dataclass(frozen=True)
class SearchOutcome:
    front: list[tuple[str, Schedule]]
    tiers: dict[str, str]
    no_cache_quality: float
    baselines: dict[str, ArchivedCandidate]
    registry: Path
    validation: dict[str, ArchivedCandidate] | None = None  # by digest: front and baselines re-scored


def pareto_front(candidates: list[ArchivedCandidate], higher_is_better: bool) -> list[ArchivedCandidate]:
    """Non-dominated candidates by (quality, TMACs) over every generation, cheapest first."""
    if not candidates:
        return []
    sign = -1.0 if higher_is_better else 1.0
    objectives = np.array([[sign * c.quality, c.tmacs] for c in candidates])
    first = NonDominatedSorting().do(objectives, only_non_dominated_front=True)
    return sorted((candidates[int(i)] for i in first), key=lambda c: (c.tmacs, c.digest))


def searched_front(
    setup: SearchSetup, candidates: list[ArchivedCandidate]
) -> tuple[list[ArchivedCandidate], list[ArchivedCandidate]]:
    """The cached schedules the GA evaluated, and their Pareto front."""
    searched = [c for c in candidates if c.generation >= 0 and not setup.schedule(c.bits, "x").is_no_cache]
    return searched, pareto_front(searched, higher_is_better(setup.config.metric))


def write_outputs(
    setup: SearchSetup,
    searched: list[ArchivedCandidate],
    front: list[ArchivedCandidate],
    baselines: dict[str, ArchivedCandidate],
    validation: dict[str, ArchivedCandidate] | None = None,
) -> SearchOutcome:
    """`searched` and `front`: from `searched_front`; `baselines`: no-cache and FORA by schedule name;
    `validation`: the front and baselines re-scored on the validation prompts (`Search.validate`), by
    digest, which the tier rule then reads instead of the search's own scores."""
    config, evaluation = setup.config, setup.evaluation
    better_high = higher_is_better(config.metric)
    reference = baselines["no_cache"]

    schedules: dict[str, Schedule] = {}
    for candidate in front:
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
    recorded: dict[str, object] = {"quality_metric": config.metric, "no_cache_value": reference.quality}
    tier_reference = reference.quality
    if validation is not None:
        tier_reference = validation[reference.digest].quality
        recorded["validation_no_cache_value"] = tier_reference
        recorded["validation_prompts"] = config.validation_prompts
    tiers = assign_tiers(points, tier_reference, config.tier_rule, better_high)
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
        provenance="ecad search " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["search"] else sys.argv[1:]),
    )
    outcome = SearchOutcome(
        list(schedules.items()), tiers, reference.quality, baselines, registry, validation
    )
    plot_front(outcome, points, searched, setup, registry / PLOT_FILE)
    write_text_atomic(registry / SUMMARY_FILE, summary_table(outcome, points, setup))
    return outcome


def summary_table(outcome: SearchOutcome, points: list[FrontPoint], setup: SearchSetup) -> str:
    config, evaluation = setup.config, setup.evaluation
    tier_of = {file: tier for tier, file in outcome.tiers.items()}
    no_cache_tmacs = outcome.baselines["no_cache"].tmacs
    validation, held = outcome.validation, setup.validation
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
    for point in sorted(points, key=lambda p: -p.tmacs):
        tier = tier_of.get(point.file, "")
        validated = "" if validation is None else f" {point.validation_value:.6g} |"
        lines.append(
            f"| {point.file} | {tier} | {point.quality_value:.6g} |{validated} {point.tmacs:.4g} | "
            f"{point.macs_ratio:.2f}× | {point.generation} |"
        )
    for name, baseline in sorted(outcome.baselines.items(), key=lambda item: -item[1].tmacs):
        ratio = no_cache_tmacs / baseline.tmacs
        validated = "" if validation is None else f" {validation[baseline.digest].quality:.6g} |"
        lines.append(
            f"| baseline `{name}` | {'exact' if name == 'no_cache' else ''} | "
            f"{baseline.quality:.6g} |{validated} {baseline.tmacs:.4g} | {ratio:.2f}× | – |"
        )
    return "\n".join(lines) + "\n"


def plot_front(
    outcome: SearchOutcome,
    points: list[FrontPoint],
    searched: list[ArchivedCandidate],
    setup: SearchSetup,
    path: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    no_cache_tmacs = outcome.baselines["no_cache"].tmacs
    figure, axes = pyplot.subplots(figsize=(7, 4.5), dpi=120)
    axes.scatter(
        [no_cache_tmacs / c.tmacs for c in searched],
        [c.quality for c in searched],
        s=8,
        color="0.75",
        label="evaluated candidates",
    )
    front = sorted(points, key=lambda p: p.macs_ratio)
    ratios = [p.macs_ratio for p in front]
    axes.plot(ratios, [p.quality_value for p in front], "o-", color="tab:blue", label="Pareto front")
    validation = outcome.validation
    if validation is not None:
        validated = [p.validation_value for p in front]
        label = "front on the validation prompts (tiers)"
        axes.plot(ratios, validated, "o:", color="tab:purple", markerfacecolor="none", label=label)
        no_cache = validation[outcome.baselines["no_cache"].digest].quality
        axes.axhline(no_cache, color="tab:purple", linestyle=":", linewidth=0.8, label="no cache, validation")
    tiers_at: dict[str, list[str]] = {}
    for tier, file in outcome.tiers.items():
        tiers_at.setdefault(file, []).append(tier)
    for file, tiers in tiers_at.items():
        point = next(p for p in points if p.file == file)
        label = "/".join(sorted(tiers, key=["fast", "balanced", "best"].index))
        axes.annotate(label, (point.macs_ratio, point.tier_value), textcoords="offset points", xytext=(6, 6))
    fora = sorted(
        (b for name, b in outcome.baselines.items() if name.startswith("fora")), key=lambda b: -b.tmacs
    )
    axes.plot(
        [no_cache_tmacs / b.tmacs for b in fora],
        [b.quality for b in fora],
        "s--",
        color="tab:orange",
        label="FORA N=2..5",
    )
    axes.axhline(outcome.no_cache_quality, color="tab:green", linestyle=":", label="no cache")
    axes.ticklabel_format(axis="y", useOffset=False)
    axes.set_xlabel("MAC ratio (no-cache MACs / schedule MACs)")
    axes.set_ylabel(setup.config.metric)
    axes.set_title(f"{setup.model.id}: quality vs compute")
    axes.legend(loc="best", fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_write(path) as handle:
        figure.savefig(handle, format="png")
