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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from ecad.config import format_validation_error
from ecad.costs import schedule_cost
from ecad.files import write_json_atomic
from ecad.models import Architecture
from ecad.schedule import Schedule, ScheduleFileError, no_cache, save_schedule
from ecad.schedule.io import METADATA_KEY, schedule_from_document
from ecad.tiers import CACHED_TIERS, Tier

FRONT_FILE = "front.json"
FORMAT_VERSION: Literal[1] = 1


class RegistryError(ValueError):
    """A registry that cannot serve its model; the message names the file."""


# The tier rule's defaults: a relative quality loss of at most 2 % for best, 5 % balanced, 10 % fast.
DEFAULT_LOSS_CEILINGS: Mapping[Tier, float] = {Tier.BEST: 0.02, Tier.BALANCED: 0.05, Tier.FAST: 0.10}


class TierRule(RootModel[dict[Tier, float]]):
    """Maximum relative quality loss against the no-cache schedule that each cached tier accepts, as a
    mapping tier → ceiling (tiers left out keep their default).

    loss = (no_cache_value - value) / |no_cache_value| for a higher-is-better metric. Each tier takes
    the cheapest point (fewest TMACs) whose loss is at most its ceiling, so `best` is the cheapest
    near-lossless point and `fast` the cheapest point that is still acceptable.
    """

    root: dict[Tier, float] = Field(default_factory=lambda: dict(DEFAULT_LOSS_CEILINGS))

    @field_validator("root")
    @classmethod
    def _complete_and_ordered(cls, given: dict[Tier, float]) -> dict[Tier, float]:
        if Tier.EXACT in given:
            raise ValueError("exact has no loss ceiling (it is the no-cache schedule)")
        if any(ceiling < 0 for ceiling in given.values()):
            raise ValueError("ceilings must be ≥ 0")
        ceilings = {tier: given.get(tier, DEFAULT_LOSS_CEILINGS[tier]) for tier in CACHED_TIERS}
        values = [ceilings[tier] for tier in reversed(CACHED_TIERS)]
        if values != sorted(values):
            order = " ≤ ".join(reversed(CACHED_TIERS))
            got = ", ".join(f"{tier}={ceiling:g}" for tier, ceiling in ceilings.items())
            raise ValueError(f"ceilings must satisfy {order}, got {got}")
        return ceilings

    def ceiling(self, tier: Tier) -> float:
        return self.root[tier]


class FrontPoint(BaseModel):
    """One Pareto point of `front.json`: a schedule file, its digest and what the search measured."""

    model_config = ConfigDict(frozen=True, extra="forbid")

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


class FrontReference(BaseModel):
    """The no-cache scores the tier rule measures losses against (calibration and validation)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    quality_metric: str | None = None
    no_cache_value: float | None = None
    validation_no_cache_value: float | None = None
    validation_prompts: str | None = None


class FrontDocument(BaseModel):
    """`front.json`, format version 1 (layout in the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: Literal[1]
    model_id: str
    family: str
    steps: int = Field(gt=0)
    reference: FrontReference = FrontReference()
    tiers: dict[str, str] = {}
    points: list[FrontPoint]
    provenance: str = ""

    @field_serializer("reference")
    def _measured_only(self, reference: FrontReference) -> dict[str, Any]:
        return reference.model_dump(exclude_none=True)

    @model_validator(mode="after")
    def _consistent(self) -> FrontDocument:
        if not self.points:
            raise ValueError("no points")
        files = {p.file for p in self.points}
        for tier, file in self.tiers.items():
            if tier not in CACHED_TIERS:
                raise ValueError(f"tiers.{tier}: unknown tier (expected {', '.join(CACHED_TIERS)})")
            if file not in files:
                raise ValueError(f"tiers.{tier}: {file!r} is not listed in points")
        validated = self.reference.validation_no_cache_value is not None
        if any((p.validation_value is None) == validated for p in self.points):
            # A mix would measure validation scores against the calibration no-cache value, or the reverse.
            raise ValueError(
                "reference.validation_no_cache_value and a validation_value on every point "
                "go together (all or none)"
            )
        return self

    @property
    def tier_reference(self) -> float | None:
        """The no-cache score on the prompts the points' `tier_value`s were measured on."""
        reference = self.reference
        value = reference.no_cache_value
        if reference.validation_no_cache_value is not None:
            value = reference.validation_no_cache_value
        return value if value is not None and math.isfinite(value) else None


@dataclass(frozen=True)
class Front:
    """A read `front.json` with its schedule files, each checked against the digest it lists."""

    path: Path
    document: FrontDocument
    schedules: Mapping[str, Schedule]  # by file name, in the document's order

    @property
    def directory(self) -> Path:
        return self.path.parent


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
        ceiling = rule.ceiling(tier)
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
    reference: FrontReference | None = None,
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
    points = [point_for(file, schedule) for file, schedule in schedules.items()]
    try:
        document = FrontDocument(
            format_version=FORMAT_VERSION,
            model_id=model_id,
            family=families.pop(),
            steps=steps.pop(),
            reference=reference or FrontReference(),
            tiers=dict(tiers or {}),
            points=sorted(points, key=lambda p: -p.tmacs),
            provenance=provenance or "",
        )
    except ValidationError as error:
        raise ValueError(format_validation_error(error)) from None
    if save_schedules:
        for file, schedule in schedules.items():
            save_schedule(schedule, directory / file)
    return write_json_atomic(directory / FRONT_FILE, document.model_dump(mode="json"))


def read_front(directory: str | Path) -> Front:
    """The one reader of `front.json`: its format, every field, and each listed schedule file (its
    family, step count and digest); any problem raises `RegistryError` naming the file and key."""
    path = Path(directory) / FRONT_FILE
    raw = _read_json(path, f"no such file (a registry folder needs a {FRONT_FILE})")
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if isinstance(raw, dict) and version != FORMAT_VERSION:
        raise RegistryError(f"{path}: format_version {version!r} is not supported ({FORMAT_VERSION})")
    try:
        document = FrontDocument.model_validate(raw)
    except ValidationError as error:
        raise RegistryError(f"{path}: {format_validation_error(error)}") from None
    schedules = {}
    for point in document.points:
        schedule = _read_schedule(path.parent / point.file, document.family, document.steps)
        if schedule.digest() != point.digest:
            raise RegistryError(
                f"{path.parent / point.file}: digest {schedule.digest()} differs from {point.digest} in "
                f"{path} (the file changed; rewrite the registry)"
            )
        schedules[point.file] = schedule
    return Front(path, document, schedules)


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
    """Read a registry for a model and resolve every tier; any mismatch raises `RegistryError` naming
    the file.

    `architecture` (from the loaded transformer) also checks block counts; without it the schedules'
    own architecture is trusted.
    """
    front = read_front(directory)
    document, path = front.document, front.path
    if document.family != family:
        raise RegistryError(f"{path}: family is {document.family!r}, model {model_id} is {family!r}")
    if document.steps != steps:
        raise RegistryError(
            f"{path}: schedules are for {document.steps!r} steps, model {model_id} runs {steps}"
        )
    for file, schedule in front.schedules.items():
        if architecture is not None and schedule.architecture.block_counts != architecture.block_counts:
            raise RegistryError(
                f"{path.parent / file}: schedule is for {schedule.architecture.block_counts} blocks, "
                f"the model has {architecture.block_counts}"
            )
    chosen = dict(document.tiers)
    if document.tier_reference is not None:
        ruled = assign_tiers(document.points, document.tier_reference, rule or TierRule())
        chosen = {**ruled, **document.tiers}
    base = architecture or next(iter(front.schedules.values())).architecture
    ratios = {p.file: p.macs_ratio for p in document.points}
    resolved = {Tier.EXACT: TierSchedule(Tier.EXACT, no_cache(base, steps), 1.0, None)}
    for tier in reversed(CACHED_TIERS):  # milder first, so fallbacks are already resolved
        serving = chosen.get(tier)
        if serving is None:
            assert tier.milder is not None
            milder = resolved[tier.milder]
            resolved[tier] = TierSchedule(tier, milder.schedule, milder.macs_ratio, milder.file)
        else:
            resolved[tier] = TierSchedule(tier, front.schedules[serving], ratios[serving], serving)
    return Registry(model_id, family, steps, front.directory, tuple(document.points), resolved)


def _read_json(path: Path, missing: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegistryError(f"{path}: {missing}") from None
    except json.JSONDecodeError as error:
        raise RegistryError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None


def _read_schedule(path: Path, family: str, steps: int) -> Schedule:
    document = _read_json(path, f"listed in {FRONT_FILE} but missing")
    recorded = document.get(METADATA_KEY, {}).get("family") if isinstance(document, dict) else None
    if recorded is not None and recorded != family:
        raise RegistryError(f"{path}: schedule is for family {recorded!r}, the registry is {family!r}")
    try:
        # Published PixArt-Σ files do not say they are Σ, so the registry's family is imposed.
        schedule = schedule_from_document(document, path, family)
    except ScheduleFileError as error:
        raise RegistryError(str(error)) from None
    if schedule.steps != steps:
        raise RegistryError(f"{path}: schedule has {schedule.steps} steps, the registry lists {steps}")
    return schedule


__all__ = [
    "FRONT_FILE",
    "Front",
    "FrontDocument",
    "FrontPoint",
    "FrontReference",
    "Registry",
    "RegistryError",
    "TierRule",
    "TierSchedule",
    "assign_tiers",
    "exact_only",
    "load_registry",
    "point_for",
    "read_front",
    "write_registry",
]
