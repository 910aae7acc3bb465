"""Cost of a schedule, derived from the architecture: MACs (the paper's convention) and cache memory.

MACs count the transformer's linear layers only (what calflops measured for the paper), for a given
number of image tokens N, text tokens T and batch rows (2 by the paper's convention); attention
products and elementwise work are not counted. Nothing is read from a file's `metrics` section.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from ecad.models import Workload
from ecad.schedule import Schedule
from ecad.schedule.actions import executed_mask, live_after_step, schedule_actions

PAPER_RESOLUTION = 256
PAPER_BATCH = 2


@dataclass(frozen=True)
class ScheduleCost:
    family: str
    name: str
    steps: int
    blocks: int
    components: list[str]
    components_per_block: int
    resolution: tuple[int, int]
    text_tokens: int
    batch: int
    recompute_fraction: float
    tmacs: float
    tmacs_no_cache: float
    macs_ratio: float
    tmacs_executed: float
    cache_peak_bytes: int
    cache_all_slots_bytes: int

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["resolution"] = list(self.resolution)
        return data


def workload_for(
    schedule: Schedule,
    height: int = PAPER_RESOLUTION,
    width: int | None = None,
    text_tokens: int | None = None,
    batch: int = PAPER_BATCH,
) -> Workload:
    adapter = schedule.adapter
    return Workload(
        image_tokens=adapter.image_tokens(schedule.architecture, height, width or height),
        text_tokens=text_tokens if text_tokens is not None else adapter.default_text_tokens,
        batch=batch,
    )


def _component_table(schedule: Schedule, per_component: dict[str, int]) -> torch.Tensor:
    """[blocks, components] of a per-component quantity, laid out like the schedule."""
    rows = [[per_component[name] for name in group.component_names] for group, _ in schedule.block_groups()]
    return torch.tensor(rows, dtype=torch.float64)


def schedule_cost(
    schedule: Schedule,
    height: int = PAPER_RESOLUTION,
    width: int | None = None,
    text_tokens: int | None = None,
    batch: int = PAPER_BATCH,
    bytes_per_element: int = 2,
) -> ScheduleCost:
    adapter, arch = schedule.adapter, schedule.architecture
    work = workload_for(schedule, height, width, text_tokens, batch)
    macs = _component_table(schedule, adapter.component_macs(arch, work))
    fixed = float(adapter.fixed_macs(arch, work)) * schedule.steps
    actions = schedule_actions(schedule)

    scheduled = fixed + float((schedule.effective_mask().double() * macs).sum())
    executed = fixed + float((executed_mask(actions).double() * macs).sum())
    no_cache = fixed + float(macs.sum()) * schedule.steps

    slot_bytes = _component_table(schedule, adapter.slot_elements(arch, work)) * bytes_per_element
    live = live_after_step(actions).double()
    peak = float((live * slot_bytes).sum(dim=(1, 2)).max())
    ever_stored = (actions == 1).any(dim=0).double()
    return ScheduleCost(
        family=schedule.family,
        name=schedule.name,
        steps=schedule.steps,
        blocks=schedule.num_blocks,
        components=[name for group in adapter.groups for name in group.component_names],
        components_per_block=int(schedule.mask.shape[2]),
        resolution=(height, width or height),
        text_tokens=work.text_tokens,
        batch=batch,
        recompute_fraction=schedule.recompute_fraction,
        tmacs=scheduled / 1e12,
        tmacs_no_cache=no_cache / 1e12,
        macs_ratio=no_cache / scheduled,
        tmacs_executed=executed / 1e12,
        cache_peak_bytes=int(peak),
        cache_all_slots_bytes=int(float((ever_stored * slot_bytes).sum())),
    )
