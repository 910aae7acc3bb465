"""A schedule's actions: what each component does at each step (compute, store, reuse, release, skip).

Pure torch, beside the schedule, so costs and the CLI start without importing diffusers.

A schedule is fixed before the run, so the lifetime of every cached value is known in advance:
a slot is filled only when a later step reads it and dropped after its last read, and work whose
result is never read (FLUX single-block attention/MLP while `proj_out` is reused) is skipped.
"""

from __future__ import annotations

from enum import IntEnum

import torch

from ecad.schedule import Schedule


class Action(IntEnum):
    COMPUTE = 0  # compute; nothing later reads this value
    COMPUTE_STORE = 1  # compute and keep the value for later steps
    REUSE = 2  # return the kept value
    REUSE_RELEASE = 3  # return the kept value and drop it (last read)
    SKIP = 4  # dead work: return a placeholder of the right shape, never read


def schedule_actions(schedule: Schedule, skip_dead_work: bool = True) -> torch.Tensor:
    """An int8 tensor [steps, blocks, components] of `Action`s."""
    compute = schedule.effective_mask()
    steps, blocks, width = compute.shape
    needed = torch.ones_like(compute)
    if skip_dead_work:
        for block, (group, _) in enumerate(schedule.block_groups()):
            names = group.component_names
            for index, component in enumerate(group.components):
                if component.read_by is not None:
                    needed[:, block, index] = compute[:, block, names.index(component.read_by)]

    actions = torch.full((steps, blocks, width), int(Action.SKIP), dtype=torch.int8)
    for block in range(blocks):
        for index in range(width):
            column = compute[:, block, index].tolist()
            starts = [step for step, flag in enumerate(column) if flag]
            for start, end in zip(starts, [*starts[1:], steps], strict=True):
                reads = [step for step in range(start, end) if needed[step, block, index]]
                if not reads:
                    continue
                last = reads[-1]
                actions[start, block, index] = Action.COMPUTE_STORE if last > start else Action.COMPUTE
                actions[start + 1 : last + 1, block, index] = Action.REUSE
                if last > start:
                    actions[last, block, index] = Action.REUSE_RELEASE
    return actions


def executed_mask(actions: torch.Tensor) -> torch.Tensor:
    return (actions == Action.COMPUTE) | (actions == Action.COMPUTE_STORE)


def live_after_step(actions: torch.Tensor) -> torch.Tensor:
    """[steps, blocks, components] True where a slot holds a value after that step."""
    return (actions == Action.COMPUTE_STORE) | (actions == Action.REUSE)
