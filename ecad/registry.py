"""The schedule registry: one folder per model holding schedule files and a `front.json`.

`front.json` lists the Pareto points the offline search kept (or that were published) and says which
file serves each quality tier. The no-cache schedule is always available as the `exact` tier and has
no file. Layout of `front.json` (format version 1):

    {
      "format_version": 1,
      "model_id": "pixart-alpha",
      "family": "pixart_alpha",
      "steps": 20,
      "reference": {"quality_metric": "image_reward", "no_cache_value": 0.95},   # optional
      "tiers": {"fast": "ours_fastest.json", "balanced": "ours_faster.json", "best": "ours_fast.json"},
      "points": [{"file": "ours_fast.json", "digest": "…", "tmacs": 3.1, "macs_ratio": 1.39,
                  "quality_metric": null, "quality_value": null, "latency_ms": null, "generation": null}],
      "provenance": "free text"
    }

Explicit `tiers` entries win. A tier without one is chosen by `assign_tiers` (the tier rule) when the
points carry quality values and the reference gives the no-cache value; otherwise it falls back to the
next milder tier (fast → balanced → best → exact).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ecad.costs import schedule_cost
from ecad.files import write_json_atomic
from ecad.models import Architecture
from ecad.schedule import Schedule, ScheduleFileError, no_cache, save_schedule
from ecad.schedule.io import METADATA_KEY, schedule_from_document
from ecad.tiers import CACHED_TIERS, Tier

FRONT_FILE = "front.json"
FORMAT_VERSION = 1


class RegistryError(ValueError):
    """A registry that cannot serve its model; the message names the file."""


class TierRule(BaseModel):
    """Maximum relative quality loss against the no-cache schedule that each tier accepts.

    loss = (no_cache_value - value) / |no_cache_value| for a higher-is-better metric. Each tier takes
    the cheapest point (fewest TMACs) whose loss is at most its ceiling, so `best` is the cheapest
    near-lossless point and `fast` the cheapest point that is still acceptable.
    """

    model_config = ConfigDict(extra="forbid")

    best: float = Field(default=0.02, ge=0.0)
    balanced: float = Field(default=0.05, ge=0.0)
    fast: float = Field(default=0.10, ge=0.0)

    @model_validator(mode="after")
    def _ordered(self) -> TierRule:
        if not self.best <= self.balanced <= self.fast:
            raise ValueError("ceilings must satisfy best ≤ balanced ≤ fast")
        return self


@dataclass(frozen=True)
class FrontPoint:
    file: str
    digest: str
    tmacs: float
    macs_ratio: float
    quality_metric: str | None = None
    quality_value: float | None = None
    latency_ms: float | None = None
    generation: int | None = None
    validation_value: float | None = None  # the same metric on the search's validation prompts

    @property
    def tier_value(self) -> float | None:
        """What the tier rule reads: the validation score where the search measured one."""
        return self.quality_value if self.validation_value is None else self.validation_value


@dataclass(frozen=True)
class TierSchedule:
    """The schedule serving a tier, with the cost facts the server reports and plans with.

    `macs_ratio` is no-cache MACs over the schedule's MACs (its theoretical speed-up; 1.0 for exact).
    """

    tier: Tier
    schedule: Schedule
    macs_ratio: float
    file: str | None  # None for the implicit no-cache schedule

    @property
    def name(self) -> str:
        return self.schedule.name

    @property
    def digest(self) -> str:
        return self.schedule.digest()


@dataclass(frozen=True)
class Registry:
    model_id: str
    family: str
    steps: int
    directory: Path | None
    points: tuple[FrontPoint, ...]
    tiers: Mapping[Tier, TierSchedule]  # every tier

    def for_tier(self, tier: Tier) -> TierSchedule:
        return self.tiers[tier]


def assign_tiers(
    points: Sequence[FrontPoint], no_cache_value: float, rule: TierRule, higher_is_better: bool = True
) -> dict[str, str]:
    """Tier → file by the tier rule on each point's `tier_value`; `no_cache_value` is the no-cache score
    on the same prompts. Tiers that no point qualifies for are left out."""
    scale = abs(no_cache_value) or 1.0
    chosen: dict[str, str] = {}
    for tier in CACHED_TIERS:
        ceiling = getattr(rule, tier)
        eligible = [
            p
            for p in points
            if p.tier_value is not None
            and ((no_cache_value - p.tier_value) if higher_is_better else (p.tier_value - no_cache_value))
            / scale
            <= ceiling
        ]
        if eligible:
            chosen[tier] = min(eligible, key=lambda p: (p.tmacs, p.file)).file
    return chosen


def point_for(file: str, schedule: Schedule) -> FrontPoint:
    """A front point with costs derived from the architecture at the schedule's own resolution."""
    height, width = schedule.metadata.resolution or (256, 256)
    cost = schedule_cost(schedule, height=height, width=width)
    meta = schedule.metadata
    return FrontPoint(
        file=file,
        digest=schedule.digest(),
        tmacs=float(f"{cost.tmacs:.6g}"),  # significant digits: tiny models have ~1e-5 TMACs
        macs_ratio=round(cost.macs_ratio, 6),
        quality_metric=meta.quality_metric,
        quality_value=meta.quality_value,
        latency_ms=meta.latency_ms,
        generation=meta.generation,
        validation_value=meta.validation_value,
    )


def write_registry(
    directory: str | Path,
    *,
    model_id: str,
    schedules: Mapping[str, Schedule],
    tiers: Mapping[str, str] | None = None,
    reference: Mapping[str, Any] | None = None,
    provenance: str | None = None,
    save_schedules: bool = True,
) -> Path:
    """Write a registry: each schedule under its file name (unless already copied) and `front.json`.

    `schedules` maps file names to schedules, which must share one family and step count. `tiers` maps
    tier names to file names; leave a tier out to let the tier rule or the fallback choose it.
    """
    directory = Path(directory)
    if not schedules:
        raise ValueError("a registry needs at least one schedule")
    families = {s.family for s in schedules.values()}
    steps = {s.steps for s in schedules.values()}
    if len(families) != 1 or len(steps) != 1:
        raise ValueError(f"schedules mix families {sorted(families)} or step counts {sorted(steps)}")
    for tier, file in (tiers or {}).items():
        if tier not in CACHED_TIERS:
            raise ValueError(f"unknown tier {tier!r}; expected one of {', '.join(CACHED_TIERS)}")
        if file not in schedules:
            raise ValueError(f"tier {tier} names {file!r}, which is not among the schedules")
    if save_schedules:
        for file, schedule in schedules.items():
            save_schedule(schedule, directory / file)
    points = [point_for(file, schedule) for file, schedule in schedules.items()]
    document: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "model_id": model_id,
        "family": families.pop(),
        "steps": steps.pop(),
        "reference": dict(reference or {}),
        "tiers": dict(tiers or {}),
        "points": [asdict(p) for p in sorted(points, key=lambda p: -p.tmacs)],
        "provenance": provenance or "",
    }
    return write_json_atomic(directory / FRONT_FILE, document)


def exact_only(model_id: str, family: str, steps: int, architecture: Architecture) -> Registry:
    """A registry with no cached schedules: every tier runs the no-cache schedule."""
    exact = TierSchedule(Tier.EXACT, no_cache(architecture, steps), 1.0, None)
    return Registry(model_id, family, steps, None, (), dict.fromkeys(Tier, exact))


def load_registry(
    directory: str | Path,
    *,
    model_id: str,
    family: str,
    steps: int,
    architecture: Architecture | None = None,
    rule: TierRule | None = None,
) -> Registry:
    """Read and check a registry for a model; any mismatch raises `RegistryError` naming the file.

    `architecture` (from the loaded transformer) also checks block counts; without it the schedules'
    own architecture is trusted.
    """
    directory = Path(directory)
    front_path = directory / FRONT_FILE
    front = _read_front(front_path)
    if front.get("family") != family:
        raise RegistryError(
            f"{front_path}: family is {front.get('family')!r}, model {model_id} is {family!r}"
        )
    if front.get("steps") != steps:
        raise RegistryError(
            f"{front_path}: schedules are for {front.get('steps')!r} steps, model {model_id} runs {steps}"
        )
    schedules: dict[str, Schedule] = {}
    points = []
    for index, raw in enumerate(front.get("points") or []):
        try:
            point = FrontPoint(**raw)
        except TypeError as error:
            raise RegistryError(f"{front_path}: points.{index}: {error}") from None
        schedule = _load_checked(directory / point.file, family, steps, architecture)
        if schedule.digest() != point.digest:
            raise RegistryError(
                f"{directory / point.file}: digest {schedule.digest()} differs from {point.digest} in "
                f"{front_path} (the file changed; rewrite the registry)"
            )
        schedules[point.file] = schedule
        points.append(point)
    if not points:
        raise RegistryError(f"{front_path}: no points")
    base = architecture or next(iter(schedules.values())).architecture
    explicit = front.get("tiers") or {}
    if not isinstance(explicit, dict):
        raise RegistryError(f"{front_path}: tiers must be an object")
    for tier, file in explicit.items():
        if tier not in CACHED_TIERS:
            raise RegistryError(
                f"{front_path}: tiers.{tier}: unknown tier (expected {', '.join(CACHED_TIERS)})"
            )
        if file not in schedules:
            raise RegistryError(f"{front_path}: tiers.{tier}: {file!r} is not listed in points")
    chosen = dict(explicit)
    reference = front.get("reference") or {}
    validated = "validation_no_cache_value" in reference
    if any((p.validation_value is None) == validated for p in points):
        # A mix would measure validation scores against the calibration no-cache value, or the reverse.
        raise RegistryError(
            f"{front_path}: reference.validation_no_cache_value and a validation_value on every point "
            "go together (all or none)"
        )
    no_cache_value = reference.get("validation_no_cache_value" if validated else "no_cache_value")
    if isinstance(no_cache_value, int | float) and math.isfinite(no_cache_value):
        ruled = assign_tiers(points, float(no_cache_value), rule or TierRule())
        chosen = {**ruled, **explicit}
    ratios = {p.file: p.macs_ratio for p in points}
    resolved = {Tier.EXACT: TierSchedule(Tier.EXACT, no_cache(base, steps), 1.0, None)}
    for tier in reversed(CACHED_TIERS):  # milder first, so fallbacks are already resolved
        file = chosen.get(tier)
        if file is None:
            assert tier.milder is not None
            milder = resolved[tier.milder]
            resolved[tier] = TierSchedule(tier, milder.schedule, milder.macs_ratio, milder.file)
        else:
            resolved[tier] = TierSchedule(tier, schedules[file], ratios[file], file)
    return Registry(model_id, family, steps, directory, tuple(points), resolved)


def _read_front(path: Path) -> dict[str, Any]:
    try:
        front = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegistryError(f"{path}: no such file (a registry folder needs a {FRONT_FILE})") from None
    except json.JSONDecodeError as error:
        raise RegistryError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(front, dict):
        raise RegistryError(f"{path}: top level must be an object")
    version = front.get("format_version")
    if version != FORMAT_VERSION:
        raise RegistryError(f"{path}: format_version {version!r} is not supported ({FORMAT_VERSION})")
    return front


def _load_checked(path: Path, family: str, steps: int, architecture: Architecture | None) -> Schedule:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegistryError(f"{path}: listed in {FRONT_FILE} but missing") from None
    except json.JSONDecodeError as error:
        raise RegistryError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    recorded = document.get(METADATA_KEY, {}).get("family") if isinstance(document, dict) else None
    if recorded is not None and recorded != family:
        raise RegistryError(f"{path}: schedule is for family {recorded!r}, the model is {family!r}")
    try:
        # Published PixArt-Σ files do not say they are Σ, so the model's family is imposed.
        schedule = schedule_from_document(document, path, family)
    except ScheduleFileError as error:
        raise RegistryError(str(error)) from None
    if schedule.steps != steps:
        raise RegistryError(f"{path}: schedule has {schedule.steps} steps, the model runs {steps}")
    if architecture is not None and schedule.architecture.block_counts != architecture.block_counts:
        raise RegistryError(
            f"{path}: schedule is for {schedule.architecture.block_counts} blocks, "
            f"the model has {architecture.block_counts}"
        )
    return schedule


__all__ = [
    "FRONT_FILE",
    "FrontPoint",
    "Registry",
    "RegistryError",
    "TierRule",
    "TierSchedule",
    "assign_tiers",
    "exact_only",
    "load_registry",
    "point_for",
    "write_registry",
]
