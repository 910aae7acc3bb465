"""Read and write the ECAD schedule JSON layout, plus our metadata under the `ecad` key."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from ecad.files import write_json_atomic
from ecad.models import Architecture, ModelAdapter, get_adapter
from ecad.schedule.schedule import Schedule, ScheduleMetadata

FORMAT_VERSION = 1
METADATA_KEY = "ecad"
_METADATA_FIELDS = {f.name for f in fields(ScheduleMetadata)} - {"extra"}


class ScheduleFileError(ValueError):
    """A schedule file that cannot be used; names the file and the offending field."""

    def __init__(self, path: str | Path, field: str, problem: str) -> None:
        self.path, self.field, self.problem = str(path), field, problem
        super().__init__(f"{path}: {field}: {problem}")


def load_schedule(path: str | Path, family: str | None = None) -> Schedule:
    """Load an ECAD schedule file (published or ours), validating every field.

    `family` overrides the family recorded in or inferred from the file; published PixArt-Σ files
    do not say they are Σ.
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScheduleFileError(path, "<file>", "no such file") from None
    except json.JSONDecodeError as error:
        raise ScheduleFileError(
            path, "<json>", f"not valid JSON ({error.msg} at line {error.lineno} column {error.colno})"
        ) from None
    return schedule_from_document(document, path, family)


def schedule_from_document(document: Any, path: str | Path, family: str | None = None) -> Schedule:
    def fail(field: str, problem: str) -> ScheduleFileError:
        return ScheduleFileError(path, field, problem)

    if not isinstance(document, dict) or not isinstance(document.get("cache_schedule"), dict):
        raise fail("cache_schedule", "missing; not an ECAD schedule file")
    section = document["cache_schedule"]
    metadata_doc = document.get(METADATA_KEY, {})
    if not isinstance(metadata_doc, dict):
        raise fail(METADATA_KEY, "must be an object")
    version = metadata_doc.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise fail(
            f"{METADATA_KEY}.format_version", f"{version!r} is newer than supported ({FORMAT_VERSION})"
        )

    config = document.get("config", {})
    family = family or metadata_doc.get("family") or _infer_family(section, config)
    try:
        adapter = get_adapter(family)
    except ValueError as error:
        raise fail(f"{METADATA_KEY}.family", str(error)) from None
    architecture = _architecture(metadata_doc, adapter, fail)

    steps = section.get("num_inference_steps")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise fail("cache_schedule.num_inference_steps", f"expected a positive integer, got {steps!r}")
    for group, count in zip(adapter.groups, architecture.block_counts, strict=True):
        declared = section.get(group.count_key)
        if declared != count:
            raise fail(
                f"cache_schedule.{group.count_key}",
                f"{declared!r}, but {family} has {count} {group.name} blocks",
            )

    mask = _parse_mask(section.get("schedule"), steps, adapter, architecture, fail)
    return Schedule(
        mask=mask,
        architecture=architecture,
        name=str(section.get("name", Path(path).stem)),
        metadata=_parse_metadata(metadata_doc, fail),
        config=config if isinstance(config, dict) else {},
        metrics=document.get("metrics", {}) or {},
    )


def _infer_family(section: dict[str, Any], config: Any) -> str:
    if "num_single_blocks" in section:
        return "flux"
    pipeline = config.get("pipeline", {}) if isinstance(config, dict) else {}
    if isinstance(pipeline, dict) and pipeline.get("name") == "pixart_sigma":
        return "pixart_sigma"
    return "pixart_alpha"


def _architecture(metadata_doc: dict[str, Any], adapter: ModelAdapter, fail: Any) -> Architecture:
    raw = metadata_doc.get("architecture")
    if raw is None:
        return adapter.reference
    try:
        architecture = Architecture.from_dict({**raw, "family": adapter.family})
    except (KeyError, TypeError, ValueError) as error:
        raise fail(f"{METADATA_KEY}.architecture", f"invalid ({error})") from None
    if len(architecture.block_counts) != len(adapter.groups):
        raise fail(f"{METADATA_KEY}.architecture.block_counts", f"needs {len(adapter.groups)} entries")
    return architecture


def _parse_mask(
    table: Any, steps: int, adapter: ModelAdapter, architecture: Architecture, fail: Any
) -> torch.Tensor:
    if not isinstance(table, dict):
        raise fail("cache_schedule.schedule", "missing or not an object")
    step_keys = [f"{step:03d}" for step in range(steps)]
    unexpected = sorted(set(table) - set(step_keys))
    if unexpected:
        raise fail("cache_schedule.schedule", f"unexpected step key {unexpected[0]!r} for {steps} steps")
    blocks = [
        (f"{group.key_prefix}{index}", group)
        for group, count in zip(adapter.groups, architecture.block_counts, strict=True)
        for index in range(count)
    ]
    width = len(adapter.groups[0].components)
    mask = torch.zeros(steps, len(blocks), width, dtype=torch.bool)
    for step, step_key in enumerate(step_keys):
        row = table.get(step_key)
        where = f"cache_schedule.schedule.{step_key}"
        if not isinstance(row, dict):
            raise fail(where, "step missing" if row is None else "must be an object")
        extra_blocks = sorted(set(row) - {key for key, _ in blocks})
        if extra_blocks:
            raise fail(f"{where}.{extra_blocks[0]}", f"unknown block for {architecture.block_counts} blocks")
        for block, (block_key, group) in enumerate(blocks):
            cell = row.get(block_key)
            if not isinstance(cell, dict):
                raise fail(f"{where}.{block_key}", "block missing" if cell is None else "must be an object")
            unknown = sorted(set(cell) - set(group.component_names))
            if unknown:
                raise fail(
                    f"{where}.{block_key}.{unknown[0]}",
                    f"unknown component (expected {', '.join(group.component_names)})",
                )
            for component, name in enumerate(group.component_names):
                value = cell.get(name)
                if not isinstance(value, bool):
                    problem = (
                        "component missing" if name not in cell else f"expected true/false, got {value!r}"
                    )
                    raise fail(f"{where}.{block_key}.{name}", problem)
                mask[step, block, component] = value
    return mask


def _parse_metadata(raw: dict[str, Any], fail: Any) -> ScheduleMetadata:
    values = {key: raw[key] for key in _METADATA_FIELDS if key in raw}
    quality = raw.get("quality")
    if isinstance(quality, dict):
        values["quality_metric"] = quality.get("metric")
        values["quality_value"] = quality.get("value")
    if values.get("resolution") is not None:
        resolution = values["resolution"]
        if not (
            isinstance(resolution, list)
            and len(resolution) == 2
            and all(isinstance(v, int) for v in resolution)
        ):
            raise fail(f"{METADATA_KEY}.resolution", f"expected [height, width], got {resolution!r}")
        values["resolution"] = (resolution[0], resolution[1])
    known = _METADATA_FIELDS | {"format_version", "family", "architecture", "steps", "quality"}
    values["extra"] = {key: value for key, value in raw.items() if key not in known}
    return ScheduleMetadata(**values)


def schedule_to_document(schedule: Schedule) -> dict[str, Any]:
    adapter = schedule.adapter
    blocks = schedule.block_groups()
    table = {
        f"{step:03d}": {
            f"{group.key_prefix}{index}": {
                name: bool(schedule.mask[step, block, component])
                for component, name in enumerate(group.component_names)
            }
            for block, (group, index) in enumerate(blocks)
        }
        for step in range(schedule.steps)
    }
    section: dict[str, Any] = {"name": schedule.name}
    for group, count in zip(adapter.groups, schedule.architecture.block_counts, strict=True):
        section[group.count_key] = count
    section["num_inference_steps"] = schedule.steps
    section["attributes"] = _attributes(schedule)
    section["schedule"] = table

    meta = asdict(schedule.metadata)
    extra = meta.pop("extra")
    quality = {"metric": meta.pop("quality_metric"), "value": meta.pop("quality_value")}
    ours: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "family": schedule.family,
        "steps": schedule.steps,
    }
    if schedule.architecture != adapter.reference:
        ours["architecture"] = schedule.architecture.to_dict()
    if meta["resolution"] is not None:
        meta["resolution"] = list(meta["resolution"])
    ours.update({key: value for key, value in meta.items() if value is not None})
    if quality["metric"] is not None:
        ours["quality"] = quality
    ours.update(extra)
    return {
        "cache_schedule": section,
        "config": schedule.config,
        "metrics": schedule.metrics,
        METADATA_KEY: ours,
    }


def _attributes(schedule: Schedule) -> dict[str, int]:
    """ECAD's summary counts: steps, blocks and (step, block) pairs with at least one reused component."""
    reused = ~schedule.mask
    per_step_block = reused.any(dim=2)
    attributes = {"num_affected_steps": int(per_step_block.any(dim=1).sum())}
    start = 0
    for group, count in zip(schedule.adapter.groups, schedule.architecture.block_counts, strict=True):
        key = "num_affected_blocks" if group.key_prefix == "" else f"num_affected_blocks_{group.name}"
        attributes[key] = int(per_step_block[:, start : start + count].any(dim=0).sum())
        start += count
    attributes["total_num_affected_blocks"] = int(per_step_block.sum())
    return attributes


def save_schedule(schedule: Schedule, path: str | Path) -> Path:
    return write_json_atomic(path, schedule_to_document(schedule))
