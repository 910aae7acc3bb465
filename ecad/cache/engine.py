"""Apply a schedule to a diffusers pipeline or transformer, and remove it again."""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import torch
from diffusers.hooks import HookRegistry, ModelHook

from ecad.cache.hooks import (
    BLOCK_HOOK,
    CLOCK_HOOK,
    COMPILED_HOOK,
    INVARIANT_HOOK,
    BlockHook,
    CompiledForwardHook,
    InvariantHook,
    StepClockHook,
)
from ecad.cache.state import BlockRunner, RunState, step_counts
from ecad.models import architecture_of
from ecad.schedule import Schedule
from ecad.schedule.actions import schedule_actions


@dataclass(frozen=True)
class EngineOptions:
    # Compile each component's computation; which steps compute stays eager Python, so a schedule
    # that changes from step to step does not recompile.
    compile_components: bool = False
    compile_options: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class CallStats:
    computed: int
    reused: int
    skipped: int


class CacheEngine:
    """Runs a diffusers pipeline (or bare transformer) under a caching schedule.

    Use as a context manager, or `apply()` / `remove()`. Hooks go on the module instances through
    diffusers' `HookRegistry`; removing them restores the original forwards exactly.
    """

    def __init__(self, target: Any, schedule: Schedule, options: EngineOptions | None = None) -> None:
        transformer = getattr(target, "transformer", target)
        if not isinstance(transformer, torch.nn.Module):
            raise TypeError(f"expected a diffusers pipeline or transformer, got {type(target).__name__}")
        architecture = architecture_of(transformer, schedule.family)
        if architecture.block_counts != schedule.architecture.block_counts:
            raise ValueError(
                f"schedule {schedule.name!r} is for {schedule.architecture.block_counts} blocks, "
                f"the model has {architecture.block_counts}"
            )
        blocks = schedule.adapter.blocks(transformer)
        self._runners: list[BlockRunner] = []
        for (group, _), block in zip(schedule.block_groups(), blocks, strict=True):
            group.program.check(block)
        self.transformer = transformer
        self.schedule = schedule
        self.options = options or EngineOptions()
        actions = schedule_actions(schedule)
        self.state = RunState(
            actions=actions.tolist(),
            counts=step_counts(actions),
            pipeline=target if target is not transformer else None,
        )
        # Built once: the server applies an engine around every pipeline call.
        self._hooks: list[tuple[torch.nn.Module, ModelHook, str]] = [
            (transformer, StepClockHook(self.state), CLOCK_HOOK)
        ]
        for invariant in schedule.adapter.invariants:
            hook = InvariantHook(self.state, invariant.inputs)
            self._hooks.append((transformer.get_submodule(invariant.module_path), hook, INVARIANT_HOOK))
        compile_options = dict(self.options.compile_options)
        members: dict[str, list[torch.nn.Module]] = {}
        for (group, _), block in zip(schedule.block_groups(), blocks, strict=True):
            members.setdefault(group.name, []).append(block)
        for position, ((group, index), block) in enumerate(zip(schedule.block_groups(), blocks, strict=True)):
            runner = BlockRunner(self.state, position, index, members[group.name])
            self._runners.append(runner)
            self._hooks.append((block, BlockHook(group.program, runner), BLOCK_HOOK))
            if self.options.compile_components:
                for component in group.components:
                    compiled = CompiledForwardHook(lambda forward: torch.compile(forward, **compile_options))
                    self._hooks.append((block.get_submodule(component.module_path), compiled, COMPILED_HOOK))
        self._hooked: list[tuple[HookRegistry, str]] = []

    @property
    def applied(self) -> bool:
        return bool(self._hooked)

    def apply(self) -> Self:
        if self.applied:
            raise RuntimeError("this engine is already applied")
        registry = HookRegistry.check_if_exists_or_initialize(self.transformer)
        if registry.get_hook(CLOCK_HOOK) is not None:
            raise RuntimeError("the transformer already runs under a cache engine; remove that one first")
        self.state.restart()
        for module, hook, name in self._hooks:
            registry = HookRegistry.check_if_exists_or_initialize(module)
            registry.register_hook(hook, name)
            self._hooked.append((registry, name))
        return self

    def remove(self) -> None:
        self.state.restart()
        for registry, name in self._hooked:
            registry.remove_hook(name, recurse=False)
        self._hooked.clear()

    def reset(self) -> None:
        """Forget the clock and every cached value; the next forward starts a new call."""
        self.state.restart()

    def last_call_stats(self) -> CallStats:
        return CallStats(self.state.computed, self.state.reused, self.state.skipped)

    def slot_values(self) -> list[Any]:
        """Every component output the engine keeps right now for a later step."""
        return [value for runner in self._runners for slots in runner.slots for value in slots.values()]

    def __enter__(self) -> Self:
        return self.apply()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.remove()
