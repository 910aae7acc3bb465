"""Measuring one row: wall time, the components that really ran, cache slot bytes, GPU memory, and what
one call launches and syncs."""

from __future__ import annotations

import bisect
import gc
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd import DeviceType

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


# torch.profiler's names (CUDA runtime and driver API, any `_ptsz` / `Ex` form) for a kernel launch, and
# for a call that blocks the host until the GPU has caught up: `.item()`, `nonzero` and copies from
# pageable host memory end in a stream synchronize, `cudaMemcpy` blocks by itself.
CUDA_LAUNCHES = ("LaunchKernel", "LaunchCooperativeKernel")
CUDA_SYNCS = (
    "cudaStreamSynchronize",
    "cudaDeviceSynchronize",
    "cudaEventSynchronize",
    "cuStreamSynchronize",
    "cuCtxSynchronize",
    "cuEventSynchronize",
)
BLOCKING_COPIES = ("cudaMemcpy", "cudaMemcpy2D", "cuMemcpy", "cuMemcpyDtoH", "cuMemcpyHtoD")
# A host read of a tensor (`.item()`, `bool(t)`, `nonzero`'s count is not one) as an ATen op.
HOST_READ = "aten::_local_scalar_dense"
CALL_RANGE = "bench.gpu::call"
FORWARD_RANGE = "bench.gpu::transformer_forward"


def is_cuda_launch(name: str) -> bool:
    return any(mark in name for mark in CUDA_LAUNCHES)


def is_cuda_sync(name: str) -> bool:
    return name.startswith(CUDA_SYNCS) or name.split("_")[0] in BLOCKING_COPIES


@dataclass
class EventCounts:
    """What a profiled call's events add up to; events outside the call's range do not count."""

    forwards: int  # ranges of FORWARD_RANGE inside the call
    forward_launches: int  # CUDA kernel launches inside those ranges
    call_launches: int  # CUDA kernel launches in the whole call (VAE decode, scheduler, ...)
    host_reads: int  # HOST_READ ops
    cuda_syncs: int  # blocking CUDA calls


def count_events(events: list[tuple[str, int, int]]) -> EventCounts:
    """Counts host-side (name, start, end) events, all on one clock, by the ranges `profiled_call` marks."""
    calls = [(start, end) for name, start, end in events if name == CALL_RANGE]
    if not calls:
        return EventCounts(0, 0, 0, 0, 0)
    call_start, call_end = calls[0]
    inside = [event for event in events if call_start <= event[1] <= call_end]
    forwards = sorted((start, end) for name, start, end in inside if name == FORWARD_RANGE)
    starts = [start for start, _ in forwards]

    def in_forward(time: int) -> bool:
        index = bisect.bisect_right(starts, time) - 1
        return index >= 0 and time <= forwards[index][1]

    launches = [start for name, start, _ in inside if is_cuda_launch(name)]
    return EventCounts(
        forwards=len(forwards),
        forward_launches=sum(in_forward(start) for start in launches),
        call_launches=len(launches),
        host_reads=sum(name == HOST_READ for name, _, _ in inside),
        cuda_syncs=sum(is_cuda_sync(name) for name, _, _ in inside),
    )


class ForwardRanges:
    """Marks each forward of `module` as a FORWARD_RANGE profiler range, around every other hook."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.open: list[Any] = []
        self.handles: list[Any] = []

    def __enter__(self) -> ForwardRanges:
        def start(*_: Any) -> None:
            self.open.append(torch.profiler.record_function(FORWARD_RANGE).__enter__())

        def stop(*_: Any) -> None:
            self.open.pop().__exit__(None, None, None)

        self.handles = [
            self.module.register_forward_pre_hook(start, prepend=True),
            self.module.register_forward_hook(stop, always_call=True),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        while self.open:
            self.open.pop().__exit__(None, None, None)


@dataclass
class Launches:
    """One untimed call under torch.profiler (and, for eager rows, `harness.dispatch`'s op counter).

    Per step = per transformer forward: one forward a step in every section (PixArt-α batches both CFG
    halves, FLUX.1-dev is guidance-distilled). Kernel ops: the transformer's ATen ops that launch a
    kernel (exact, any device; eager rows only, since compiled code launches past the dispatcher). CUDA
    launches: kernel launch calls inside the transformer's forwards, and in the whole call (None off
    CUDA). Host syncs: host reads of a tensor in the call (each a device sync on CUDA); CUDA syncs:
    blocking CUDA calls in the call, host reads included (None off CUDA)."""

    forwards: int
    kernel_ops_per_step: float | None
    cuda_launches_per_step: float | None
    cuda_launches_per_call: int | None
    host_syncs_per_call: int
    cuda_syncs_per_call: int | None
    seconds: float


def host_events(profile: torch.profiler.profile) -> list[tuple[str, int, int]]:
    """(name, start ns, end ns) of the host-side events (ops, ranges, CUDA API calls), from the raw
    results where this torch has them: parsing a GPU call's events into FunctionEvents takes seconds."""
    raw = getattr(profile.profiler, "kineto_results", None)
    if raw is not None:
        return [
            (e.name(), e.start_ns(), e.end_ns()) for e in raw.events() if e.device_type() == DeviceType.CPU
        ]
    return [
        (e.name, int(e.time_range.start * 1000), int(e.time_range.end * 1000))
        for e in profile.events()
        if e.device_type == DeviceType.CPU
    ]


def profiled_call(
    call: Callable[[int], None], steps: int, transformer: torch.nn.Module, cuda: bool, compiled: bool
) -> Launches:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    started = time.perf_counter()
    with ExitStack() as stack:
        # The op counter re-dispatches every op, so the profiler sees each twice while it is on: its own
        # counts are used only where the counter is off.
        ops = None if compiled else stack.enter_context(count_forwards(transformer))
        stack.enter_context(ForwardRanges(transformer))
        profile = stack.enter_context(torch.profiler.profile(activities=activities))
        with torch.profiler.record_function(CALL_RANGE):
            call(steps)
        if cuda:
            torch.cuda.synchronize()  # outside the call's range: the benchmark's, not the call's
    counts = count_events(host_events(profile))
    kernel_ops = host_syncs = None
    if ops is not None:
        counter, forwards = ops
        kernel_ops = sum(forward.kernels for forward in forwards) / max(1, len(forwards))
        host_syncs = counter.totals["host_syncs"]
    return Launches(
        forwards=counts.forwards,
        kernel_ops_per_step=kernel_ops,
        cuda_launches_per_step=counts.forward_launches / max(1, counts.forwards) if cuda else None,
        cuda_launches_per_call=counts.call_launches if cuda else None,
        host_syncs_per_call=counts.host_reads if host_syncs is None else host_syncs,
        cuda_syncs_per_call=counts.cuda_syncs if cuda else None,
        seconds=time.perf_counter() - started,
    )


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
