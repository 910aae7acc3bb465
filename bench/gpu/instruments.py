"""Measuring one row: wall time, the components that really ran, cache slot bytes, GPU memory, and what
one call launches and syncs."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ecad.cache import CacheEngine
from ecad.models import Architecture, get_adapter
from harness.dispatch import count_forwards


class Stopwatch:
    """Times one generation and its VAE decode: CUDA events on a GPU, where kernels run asynchronously."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: dict[str, Any] = {}

    def mark(self, name: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks[name] = event
        else:
            self.marks[name] = time.perf_counter()

    def between_ms(self, start: str, end: str) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return float(self.marks[start].elapsed_time(self.marks[end]))
        return (self.marks[end] - self.marks[start]) * 1000.0


@dataclass
class Timing:
    total_ms: float
    decode_ms: float


def timed_call(call: Callable[[int], None], steps: int, watch: Stopwatch) -> Timing:
    watch.marks.clear()
    watch.mark("start")
    call(steps)
    watch.mark("end")
    return Timing(watch.between_ms("start", "end"), watch.between_ms("decode", "end"))


# CUDA runtime / driver calls that launch a kernel, as torch.profiler names them.
CUDA_LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")


@dataclass
class Launches:
    """One untimed call: the transformer's ATen kernel ops per step (exact, any device; eager rows only,
    since compiled code launches past the dispatcher), CUDA kernel launches per step over the whole call
    (profiler; None off CUDA) and host reads of a tensor in the call (each a device sync on CUDA)."""

    kernel_ops_per_step: float | None
    cuda_launches_per_step: float | None
    host_syncs_per_call: int | None


def count_launches(
    call: Callable[[int], None], steps: int, transformer: torch.nn.Module, cuda: bool, compiled: bool
) -> Launches:
    kernel_ops = host_syncs = None
    if not compiled:
        with count_forwards(transformer) as (counter, forwards):
            call(steps)
        kernel_ops = sum(forward.kernels for forward in forwards) / steps  # the transformer's, all passes
        host_syncs = counter.totals["host_syncs"]  # the whole call
    cuda_launches = None
    if cuda:
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=activities) as profile:
            call(steps)
            torch.cuda.synchronize()
        names = [event.name for event in profile.events()]
        cuda_launches = sum(name in CUDA_LAUNCHES for name in names) / steps
        if compiled:
            host_syncs = names.count("aten::_local_scalar_dense")
    return Launches(kernel_ops, cuda_launches, host_syncs)


class ComponentCounter:
    """Records which components really ran at each denoising step, whatever caching method is applied.

    Wraps each component's instance `forward` before the method is applied: hooks that replace a forward
    (ECAD, diffusers' TaylorSeer) call the wrapper only when they compute, and methods that skip whole
    blocks (FirstBlockCache, cache-dit) never reach it. Not used under torch.compile, which would trace it.
    """

    def __init__(self, transformer: torch.nn.Module, arch: Architecture) -> None:
        self.transformer = transformer
        adapter = get_adapter(arch.family)
        groups = [
            group
            for group, count in zip(adapter.groups, arch.block_counts, strict=True)
            for _ in range(count)
        ]
        self.modules = [
            (block, index, module.get_submodule(component.module_path))
            for block, (group, module) in enumerate(zip(groups, adapter.blocks(transformer), strict=True))
            for index, component in enumerate(group.components)
        ]
        self.shape = (arch.num_blocks, len(adapter.groups[0].components))
        self.steps: list[set[tuple[int, int]]] = []
        self.runs: list[list[set[tuple[int, int]]]] = []
        self._saved: list[tuple[torch.nn.Module, Any]] = []
        self._handle: Any = None

    def __enter__(self) -> ComponentCounter:
        for block, index, module in self.modules:
            self._saved.append((module, module.__dict__.get("forward")))
            module.forward = self._wrap(module.forward, (block, index))
        self._handle = self.transformer.register_forward_pre_hook(lambda *_: self.steps.append(set()))
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()
        for module, previous in self._saved:
            if previous is None:
                del module.forward
            else:
                module.forward = previous
        self._saved.clear()

    def _wrap(self, forward: Callable[..., Any], where: tuple[int, int]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.steps[-1].add(where)
            return forward(*args, **kwargs)

        return counted

    def start_run(self) -> None:
        self.steps = []
        self.runs.append(self.steps)

    def mask(self, run: list[set[tuple[int, int]]]) -> torch.Tensor:
        mask = torch.zeros(len(run), *self.shape, dtype=torch.bool)
        for step, ran in enumerate(run):
            for block, index in ran:
                mask[step, block, index] = True
        return mask


def tensor_bytes(value: Any, seen: set[int]) -> int:
    """Bytes of the storages a cached value keeps alive, each storage counted once."""
    if isinstance(value, torch.Tensor):
        storage = value.untyped_storage()
        if storage.data_ptr() in seen:
            return 0
        seen.add(storage.data_ptr())
        return storage.nbytes()
    if isinstance(value, tuple | list):
        return sum(tensor_bytes(item, seen) for item in value)
    return 0


class SlotMeter:
    """Peak bytes held in the cache engine's slots after any step: the quantity the liveness bound bounds."""

    def __init__(self, engine: CacheEngine) -> None:
        self.engine = engine
        self.peak = 0
        self._handle: Any = None

    def __enter__(self) -> SlotMeter:
        def measure(*_: Any) -> None:
            seen: set[int] = set()
            held = sum(tensor_bytes(value, seen) for value in self.engine.slot_values())
            self.peak = max(self.peak, held)

        self._handle = self.engine.transformer.register_forward_hook(measure)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()


def restore_forwards(module: torch.nn.Module) -> int:
    """Drop instance forwards a method left behind, so the next row runs the stock model; a safety net
    whose count the row reports."""
    leftovers = [
        sub
        for sub in module.modules()
        if "forward" in sub.__dict__
        and getattr(sub.__dict__["forward"], "__func__", None) is not type(sub).forward
    ]
    for sub in leftovers:
        del sub.forward
    return len(leftovers)


def peak_memory(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def reset_memory(device: torch.device, collect: bool = False) -> None:
    if collect:  # a full collection costs a third of a second: only between sections
        gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
