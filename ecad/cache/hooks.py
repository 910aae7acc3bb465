"""diffusers `ModelHook`s that carry out a schedule on module instances (never on classes)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.hooks import ModelHook

from ecad.models import Component
from ecad.schedule.actions import Action

CLOCK_HOOK = "ecad_step_clock"
COMPONENT_HOOK = "ecad_component_cache"
INPUT_NORM_HOOK = "ecad_input_norm"
_NOT_COMPUTED = (int(Action.REUSE), int(Action.REUSE_RELEASE), int(Action.SKIP))


@dataclass
class RunState:
    """The denoising clock of one transformer plus per-call counters, shared by all its hooks.

    Diffusers passes no step index to PixArt or FLUX transformers, so the clock counts forwards:
    a new timestep is a new step; a repeated timestep is another pass of the same step (true CFG run
    as two calls), whose cached values are kept apart; a timestep that goes up starts a new call.
    """

    schedule_actions: torch.Tensor
    # The actions as nested lists: hooks look up one action per module call, and indexing a tensor costs
    # microseconds each — enough, over every hook of a FLUX step, to leave a GPU waiting on Python.
    actions: list[list[list[int]]] = field(init=False)
    step: int = -1
    pass_index: int = 0
    last_timestep: float | None = None
    computed: int = 0
    reused: int = 0
    skipped: int = 0
    on_new_call: list[Callable[[], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.actions = self.schedule_actions.tolist()

    def tick(self, timestep: float) -> None:
        if self.last_timestep is None or timestep > self.last_timestep:
            self.restart()
            self.step = 0
        elif timestep == self.last_timestep:
            self.pass_index += 1
        else:
            self.step += 1
            self.pass_index = 0
        self.last_timestep = timestep
        if self.step >= len(self.actions):
            steps = len(self.actions)
            self.restart()
            raise ValueError(
                f"the pipeline ran more denoising steps than the schedule has ({steps}); "
                f"call it with num_inference_steps={steps}"
            )

    def restart(self) -> None:
        self.step, self.pass_index, self.last_timestep = -1, 0, None
        self.computed = self.reused = self.skipped = 0
        for release in self.on_new_call:
            release()


class StepClockHook(ModelHook):
    """On the transformer: advance the clock before each forward."""

    def __init__(self, state: RunState) -> None:
        super().__init__()
        self.state = state

    def pre_forward(
        self, module: torch.nn.Module, *args: Any, **kwargs: Any
    ) -> tuple[tuple[Any], dict[str, Any]]:
        timestep = kwargs.get("timestep")
        if timestep is None:
            raise ValueError(
                "the cache engine needs the transformer's `timestep` passed as a keyword argument"
            )
        value = timestep.reshape(-1)[0].item() if isinstance(timestep, torch.Tensor) else float(timestep)
        self.state.tick(float(value))
        return args, kwargs


class ComponentCacheHook(ModelHook):
    """On one component module: compute, reuse or skip it as the schedule's actions say this step."""

    def __init__(self, state: RunState, block: int, index: int, component: Component) -> None:
        super().__init__()
        self.state = state
        self.block, self.index, self.component = block, index, component
        self.slots: dict[int, Any] = {}
        self.compute: Callable[..., Any] | None = None
        state.on_new_call.append(self.slots.clear)

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        state = self.state
        action = state.actions[state.step][self.block][self.index]
        if action == Action.REUSE:
            state.reused += 1
            return self.slots[state.pass_index]
        if action == Action.REUSE_RELEASE:
            state.reused += 1
            return self.slots.pop(state.pass_index)
        if action == Action.SKIP:
            state.skipped += 1
            assert self.component.placeholder is not None
            return self.component.placeholder(module, args, kwargs)
        state.computed += 1
        compute = self.compute or self.fn_ref.original_forward
        output = compute(*args, **kwargs)
        if action == Action.COMPUTE_STORE:
            self.slots[state.pass_index] = output
        return output

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.slots.clear()
        return module


class InputNormHook(ModelHook):
    """On a norm that feeds one component only: skip it at steps where that component is not computed.

    Its output would only pass through the block's modulation (`x * (1 + scale) + shift`) into the
    component, which then ignores its input. A [batch, 1, 1] stand-in broadcasts through that
    modulation at almost no cost; on CPU in bf16 this dead norm work was 60 % of a fully cached step.
    """

    def __init__(self, state: RunState, block: int, index: int) -> None:
        super().__init__()
        self.state = state
        self.block, self.index = block, index

    def new_forward(self, module: torch.nn.Module, hidden: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        state = self.state
        if state.actions[state.step][self.block][self.index] in _NOT_COMPUTED:
            return hidden.new_zeros((hidden.shape[0], 1, 1))
        return self.fn_ref.original_forward(hidden, *args, **kwargs)
