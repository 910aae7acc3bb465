"""The host-side state of one cache engine: its step clock, kept component outputs and memos.

Nothing here reads a tensor's value. On a GPU a read (`.item()`, `bool(tensor)`) waits for every queued
kernel and leaves the device idle while the host prepares the next step, so the clock advances on what
the host already knows: which tensor object the transformer was given, and the scheduler's step index.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from ecad.schedule.actions import Action

T = TypeVar("T")
_COMPUTES = (int(Action.COMPUTE), int(Action.COMPUTE_STORE))


@dataclass(frozen=True)
class StepCounts:
    computed: int
    reused: int
    skipped: int


def step_counts(actions: torch.Tensor) -> list[StepCounts]:
    """What each step does, summed over blocks and components (one forward's worth)."""
    rows = []
    for step in actions:
        computed = int(((step == Action.COMPUTE) | (step == Action.COMPUTE_STORE)).sum())
        reused = int(((step == Action.REUSE) | (step == Action.REUSE_RELEASE)).sum())
        rows.append(StepCounts(computed, reused, int((step == Action.SKIP).sum())))
    return rows


@dataclass
class RunState:
    """The denoising clock of one transformer plus everything kept for the current call.

    Diffusers passes no step index to PixArt or FLUX transformers. Pipelines give the transformer a new
    latents tensor at every step and the same one to each pass of a step (true CFG runs two), so:
    another tensor is another step and the same tensor another pass, whose kept values stay apart.
    A call starts when the pipeline's scheduler has not stepped yet (`step_index` is None), or, for a
    bare transformer, after the schedule's last step; `reset()` starts one explicitly.
    """

    actions: list[list[list[int]]]
    counts: list[StepCounts]
    pipeline: Any = None
    step: int = -1
    pass_index: int = 0
    computed: int = 0
    reused: int = 0
    skipped: int = 0
    # The current forward's keyword arguments: invariant memos compare tensor identities against them.
    call_inputs: dict[str, Any] = field(default_factory=dict)
    per_forward: dict[str, Any] = field(default_factory=dict)
    per_call: dict[str, Any] = field(default_factory=dict)
    on_new_call: list[Callable[[], None]] = field(default_factory=list)
    _last_input: weakref.ref[torch.Tensor] | None = None

    def tick(self, hidden_states: Any, kwargs: dict[str, Any]) -> None:
        """Advance the clock for one transformer forward."""
        same_input = self._last_input is not None and self._last_input() is hidden_states
        if same_input and self.step >= 0:
            self.pass_index += 1
        else:
            if self._starts_call():
                self.restart()
                self.step = 0
            else:
                self.step += 1
                self.pass_index = 0
            if self.step >= len(self.actions):
                steps = len(self.actions)
                self.restart()
                raise ValueError(
                    f"the pipeline ran more denoising steps than the schedule has ({steps}); "
                    f"call it with num_inference_steps={steps}"
                )
            self._last_input = weakref.ref(hidden_states) if isinstance(hidden_states, torch.Tensor) else None
        self.call_inputs = kwargs
        self.per_forward.clear()
        counts = self.counts[self.step]
        self.computed += counts.computed
        self.reused += counts.reused
        self.skipped += counts.skipped

    def _starts_call(self) -> bool:
        if self.step < 0:
            return True
        scheduler = getattr(self.pipeline, "scheduler", None)
        if scheduler is not None and hasattr(scheduler, "step_index"):
            return scheduler.step_index is None
        return self.step + 1 == len(self.actions)

    def restart(self) -> None:
        self.step, self.pass_index, self._last_input = -1, 0, None
        self.computed = self.reused = self.skipped = 0
        self.call_inputs = {}
        self.per_forward.clear()
        self.per_call.clear()
        for release in self.on_new_call:
            release()


class BlockRunner:
    """One block's view of the run (the `BlockRun` its program is given): actions, kept values, memos."""

    def __init__(
        self, state: RunState, block: int, position: int, group_blocks: Sequence[torch.nn.Module]
    ) -> None:
        self.state = state
        self.block = block
        self._position = position
        self._group_blocks = group_blocks
        self.width = len(state.actions[0][block]) if state.actions else 0
        # Kept outputs per component, by pass: filled only where a later step reads them.
        self.slots: list[dict[int, Any]] = [{} for _ in range(self.width)]
        state.on_new_call.append(self.release)

    @property
    def position(self) -> int:
        return self._position

    @property
    def group_blocks(self) -> Sequence[torch.nn.Module]:
        return self._group_blocks

    def computes(self, component: int) -> bool:
        state = self.state
        return state.actions[state.step][self.block][component] in _COMPUTES

    def output(self, component: int, compute: Callable[[], Any]) -> Any:
        state = self.state
        action = state.actions[state.step][self.block][component]
        if action == Action.COMPUTE:
            return compute()
        if action == Action.COMPUTE_STORE:
            value = compute()
            self.slots[component][state.pass_index] = value
            return value
        if action == Action.REUSE:
            return self.slots[component][state.pass_index]
        if action == Action.REUSE_RELEASE:
            return self.slots[component].pop(state.pass_index)
        return None

    def per_forward(self, key: str, make: Callable[[], T]) -> T:
        memo = self.state.per_forward
        if key not in memo:
            memo[key] = make()
        return memo[key]

    def per_call(self, key: str, make: Callable[[], T]) -> T:
        memo = self.state.per_call
        if key not in memo:
            memo[key] = make()
        return memo[key]

    def release(self) -> None:
        for slots in self.slots:
            slots.clear()
