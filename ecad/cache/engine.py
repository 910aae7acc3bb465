"""Apply a schedule to a diffusers pipeline or transformer, and remove it again."""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import torch
from diffusers.hooks import HookRegistry, ModelHook

from ecad.cache.hooks import (
    CLOCK_HOOK,
    COMPONENT_HOOK,
    INPUT_NORM_HOOK,
    ComponentCacheHook,
    InputNormHook,
    RunState,
    StepClockHook,
)
from ecad.models import architecture_of
from ecad.schedule import Schedule
from ecad.schedule.actions import schedule_actions


@dataclass(frozen=True)
class EngineOptions:
    # Skip work whose result is never read: FLUX single-block attention/MLP while `proj_out` is
    # reused, and norms feeding a reused component. Outputs are identical either way.
    skip_dead_work: bool = True
    # Compile each component's computation; the per-step reuse dispatch stays eager, so a schedule
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
        # Chunked feed-forward calls the `ff` module once per chunk: one cached value per step no longer
        # fits, and the stand-in for a skipped norm cannot be chunked.
        if any(getattr(block, "_chunk_size", None) for block in schedule.adapter.blocks(transformer)):
            raise ValueError(
                "feed-forward chunking is on; turn it off (set_chunk_feed_forward(None)) to cache"
            )
        self.transformer = transformer
        self.schedule = schedule
        self.options = options or EngineOptions()
        self.state = RunState(schedule_actions=schedule_actions(schedule, self.options.skip_dead_work))
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
        self._register(self.transformer, StepClockHook(self.state), CLOCK_HOOK)
        blocks = self.schedule.adapter.blocks(self.transformer)
        for block, ((group, _), module) in enumerate(zip(self.schedule.block_groups(), blocks, strict=True)):
            for index, component in enumerate(group.components):
                hook = ComponentCacheHook(self.state, block, index, component)
                self._register(module.get_submodule(component.module_path), hook, COMPONENT_HOOK)
                if self.options.compile_components:
                    options = dict(self.options.compile_options)
                    hook.compute = torch.compile(hook.fn_ref.original_forward, **options)
                if self.options.skip_dead_work and component.input_norm is not None:
                    norm_hook = InputNormHook(self.state, block, index)
                    self._register(module.get_submodule(component.input_norm), norm_hook, INPUT_NORM_HOOK)
        return self

    def _register(self, module: torch.nn.Module, hook: ModelHook, name: str) -> None:
        registry = HookRegistry.check_if_exists_or_initialize(module)
        registry.register_hook(hook, name)
        self._hooked.append((registry, name))

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

    def __enter__(self) -> Self:
        return self.apply()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.remove()
