"""Running the sections: batch choice, time budget, one row after another with its baseline first."""

from __future__ import annotations

import argparse
import statistics
import time
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch._dynamo
from diffusers import DiffusionPipeline
from torch._dynamo.utils import counters

from bench.gpu.instruments import (
    ComponentCounter,
    Launches,
    SlotMeter,
    Stopwatch,
    peak_memory,
    profiled_call,
    reset_memory,
    restore_forwards,
    timed_call,
)
from bench.gpu.methods import TAYLOR_ORDER, Method, load_cache_dit, plan_methods
from bench.gpu.report import Report, Row, SectionReport, write_outputs
from bench.gpu.workloads import (
    PAPER_SPEEDUPS,
    Section,
    build_pipeline,
    generation_call,
    section_dtype,
    text_tokens,
)
from ecad.cache import CacheEngine, EngineOptions
from ecad.costs import schedule_cost
from ecad.models import Architecture, Workload, architecture_of, get_adapter
from ecad.schedule import Schedule, no_cache
from ecad.schedule.actions import executed_mask, schedule_actions

# Display order of the row groups (the order) and the order they run in when time is short.
GROUPS = ("baseline", "ecad", "fora", "diffusers", "cache-dit", "steps", "compile")


PRIORITY = ("baseline", "ecad", "fora", "compile", "steps", "cache-dit", "diffusers")


MIN_REPEATS = 2


# What a row's profiled call (torch.profiler and, for eager rows, the op counter) costs in plain calls:
# a guess; each row's profiled_call_s says what it really took.
PROFILED_RUNS = 2.0


SAFETY_S = 5.0  # slack kept in every section for the estimates being off


@dataclass
class Context:
    section: Section
    pipe: DiffusionPipeline
    arch: Architecture
    device: torch.device
    dtype: torch.dtype
    compile_options: tuple[tuple[str, Any], ...]
    deadline: float
    watch: Stopwatch
    compile_estimates: dict[str, float]  # first-compile seconds per family, measured or guessed
    repeats: int
    call: Callable[[int], None] | None = None
    batch: int = 1
    no_cache_run_s: float = 0.0
    compiled_yet: bool = False
    no_cache_peak: int | None = None

    @property
    def compile_s(self) -> float:
        """What compiling still costs in this section (Dynamo keeps nothing across sections)."""
        family = self.section.family
        return 0.0 if self.compiled_yet else self.compile_estimates.get(family.key, family.compile_estimate_s)


def apply_method(ctx: Context, method: Method) -> AbstractContextManager[Any]:
    if method.schedule is not None:
        options = EngineOptions(compile_components=method.compiled, compile_options=ctx.compile_options)
        return CacheEngine(ctx.pipe, method.schedule, options)
    if method.peer is not None:
        return method.peer(ctx.pipe)
    return nullcontext()


def realized_ratio(ctx: Context, mask: torch.Tensor) -> float:
    tokens = text_tokens(ctx.section)
    full = no_cache(ctx.arch, ctx.section.steps)
    full = schedule_cost(full, height=ctx.section.resolution, text_tokens=tokens)
    ran = schedule_cost(Schedule(mask, ctx.arch), height=ctx.section.resolution, text_tokens=tokens)
    return full.tmacs / ran.tmacs


def graphs_compiled() -> int:
    return int(counters["stats"]["unique_graphs"])


def measure(ctx: Context, method: Method, row: Row, repeats: int) -> None:
    """Warm-up then `repeats` timed generations under `method`; fills the row's measured fields."""
    assert ctx.call is not None
    reset_memory(ctx.device)
    graphs_before = graphs_compiled()
    with ExitStack() as stack:
        counter = (
            None if method.compiled else stack.enter_context(ComponentCounter(ctx.pipe.transformer, ctx.arch))
        )
        applied = stack.enter_context(apply_method(ctx, method))
        meter = SlotMeter(applied) if isinstance(applied, CacheEngine) else None
        if counter:
            counter.start_run()
        started = time.perf_counter()
        with meter if meter is not None else nullcontext():
            timed_call(ctx.call, method.steps, ctx.watch)
        row.first_run_s = time.perf_counter() - started
        graphs_warm = graphs_compiled()
        timings = []
        for _ in range(repeats):
            if counter:
                counter.start_run()
            timings.append(timed_call(ctx.call, method.steps, ctx.watch))
        graphs_timed = graphs_compiled()
        if counter:
            counter.start_run()
        try:  # the row's timings are in hand: a profiler that fails costs only its own columns
            launches = profiled_call(
                ctx.call, method.steps, ctx.pipe.transformer, ctx.device.type == "cuda", method.compiled
            )
            record_launches(row, launches, method.steps)
        except Exception as error:
            traceback.print_exc()
            row.add_note(f"profiled call failed: {type(error).__name__}: {error}".splitlines()[0][:200])
    row.repeats = repeats
    row.runs_ms_per_image = [t.total_ms / ctx.batch for t in timings]
    row.ms_per_image = statistics.median(row.runs_ms_per_image)
    row.decode_ms_per_image = statistics.median(t.decode_ms for t in timings) / ctx.batch
    row.peak_memory_bytes = peak_memory(ctx.device)
    if method.compiled:
        row.graphs_compiled = graphs_warm - graphs_before
        row.graphs_compiled_while_timed = graphs_timed - graphs_warm
    realized = None
    if counter:
        masks = [counter.mask(run) for run in counter.runs]
        realized = masks[-1]
        row.realized_consistent = all(torch.equal(mask, realized) for mask in masks)
        row.mac_ratio_realized = realized_ratio(ctx, realized)
    if meter is not None:
        record_schedule_costs(ctx, method, row, realized, meter.peak)


def record_launches(row: Row, launches: Launches, steps: int) -> None:
    row.transformer_forwards = launches.forwards
    row.kernel_ops_per_step = launches.kernel_ops_per_step
    row.cuda_launches_per_step = launches.cuda_launches_per_step
    row.cuda_launches_per_call = launches.cuda_launches_per_call
    row.host_syncs_per_call = launches.host_syncs_per_call
    row.cuda_syncs_per_call = launches.cuda_syncs_per_call
    row.profiled_call_s = launches.seconds
    if launches.forwards != steps:
        row.add_note(f"profiled call: {launches.forwards} transformer forwards for {steps} steps")
    if launches.cuda_launches_per_call and not launches.cuda_launches_per_step:
        row.add_note("profiled call: no CUDA launch fell inside a transformer forward")


def record_schedule_costs(
    ctx: Context, method: Method, row: Row, realized: torch.Tensor | None, slot_peak: int
) -> None:
    assert method.schedule is not None
    rows = ctx.section.family.rows_per_image * ctx.batch
    cost = schedule_cost(
        method.schedule,
        height=ctx.section.resolution,
        text_tokens=text_tokens(ctx.section),
        batch=rows,
        bytes_per_element=ctx.dtype.itemsize,
    )
    row.mac_ratio = cost.macs_ratio
    if not method.schedule.is_no_cache:
        row.cache_memory_bytes, row.cache_memory_kind = slot_peak, "slots"
        row.cache_bound_bytes = cost.cache_peak_bytes
    if realized is not None:
        row.realized_matches_plan = torch.equal(realized, executed_mask(schedule_actions(method.schedule)))


def predicted_s(ctx: Context, methods: list[Method], repeats: int) -> float:
    runs = sum(
        (1 + PROFILED_RUNS + repeats) * m.est_fraction * ctx.no_cache_run_s
        for m in methods
        if not m.unavailable
    )
    return runs + (ctx.compile_s if any(m.compiled for m in methods) else 0.0)


def plan_repeats(ctx: Context, methods: list[Method]) -> int:
    """The most timed runs per row that still let every remaining row fit the section's time."""
    left = ctx.deadline - time.perf_counter()
    fewest = min(MIN_REPEATS, ctx.repeats)
    return next((n for n in range(ctx.repeats, fewest, -1) if predicted_s(ctx, methods, n) <= left), fewest)


def run_method(ctx: Context, method: Method, row: Row) -> None:
    if method.unavailable:
        row.status, row.note = "unavailable", method.unavailable
        return
    left = ctx.deadline - time.perf_counter()
    fewest = min(MIN_REPEATS, ctx.repeats)
    fitting = [n for n in range(ctx.repeats, fewest - 1, -1) if predicted_s(ctx, [method], n) <= left]
    if method.key != "no_cache" and not fitting:
        row.status = "skipped"
        row.note = (
            f"time budget: needs ≈{predicted_s(ctx, [method], fewest):.1f} s, {max(left, 0):.1f} s left"
        )
        return
    started = time.perf_counter()
    try:
        measure(ctx, method, row, fitting[0] if fitting else fewest)
        row.status = "ok"
    except torch.OutOfMemoryError:
        row.status, row.note = "failed", f"out of GPU memory at batch {ctx.batch}"
    except Exception as error:  # one method failing must not cost the other rows
        traceback.print_exc()  # the full story goes to the log; the table keeps one line
        row.status, row.note = "failed", f"{type(error).__name__}: {error}".splitlines()[0][:300]
    finally:
        row.wall_s = time.perf_counter() - started
        if method.compiled and not ctx.compiled_yet and row.first_run_s is not None:
            first_compile_s = max(0.0, row.first_run_s - ctx.no_cache_run_s)
            ctx.compile_estimates[ctx.section.family.key] = first_compile_s
            ctx.compiled_yet = True
        restored = restore_forwards(ctx.pipe.transformer)
        if restored:
            row.add_note(f"left {restored} module forwards patched (restored)")


def finish_row(ctx: Context, method: Method, row: Row, rows: dict[str, Row]) -> None:
    """Speed-up, MAC ratio and notes that need a baseline; the baselines run first in their groups."""
    if row.status != "ok" or row.ms_per_image is None:
        return
    eager = rows["no_cache"].ms_per_image
    base = rows["compile:no_cache"].ms_per_image if method.compiled else eager
    row.speedup = None if base is None else base / row.ms_per_image
    row.speedup_vs_eager_no_cache = None if eager is None else eager / row.ms_per_image
    if row.mac_ratio is None:
        row.mac_ratio = row.mac_ratio_realized if method.key != "no_cache" else 1.0
    if row.speedup is not None and row.mac_ratio:
        row.efficiency = row.speedup / row.mac_ratio
    if method.peer is not None and row.peak_memory_bytes is not None and ctx.no_cache_peak is not None:
        row.cache_memory_bytes = max(0, row.peak_memory_bytes - ctx.no_cache_peak)
        row.cache_memory_kind = "peak growth over no cache"
    if method.compiled and row.speedup_vs_eager_no_cache is not None:
        row.add_note(
            f"vs eager no cache {row.speedup_vs_eager_no_cache:.2f}×; {row.graphs_compiled} graphs "
            f"compiled, {row.graphs_compiled_while_timed} while timed"
        )
    if row.realized_matches_plan is False:
        row.add_note("components that ran differ from the schedule's plan")
    if row.realized_consistent is False:
        row.add_note("components that ran differ between runs")


def choose_batch(ctx: Context, methods: list[Method], forced: int | None) -> tuple[int, str]:
    """The paper's batch, or the largest that fits the GPU's memory and the section's time budget."""
    section = ctx.section
    if forced is not None:
        return forced, "set by --batch"
    assert ctx.call is not None
    weights = torch.cuda.memory_allocated(ctx.device) if ctx.device.type == "cuda" else 0
    reset_memory(ctx.device)
    timed_call(ctx.call, section.steps, ctx.watch)  # first call pays one-off set-up
    probe = timed_call(ctx.call, section.steps, ctx.watch)
    per_image_s = probe.total_ms / 1000.0 / section.probe_batch
    limits = {"paper": section.paper_batch}
    if ctx.device.type == "cuda":
        activations = (peak_memory(ctx.device) or 0) - weights
        free = 0.9 * torch.cuda.get_device_properties(ctx.device).total_memory - weights
        limits["GPU memory"] = int(
            free // (activations / section.probe_batch + cache_bytes_per_image(ctx, methods))
        )
    units = sum((1 + PROFILED_RUNS + ctx.repeats) * m.est_fraction for m in methods if not m.unavailable)
    compile_s = ctx.compile_s if any(m.compiled for m in methods) else 0.0
    left = ctx.deadline - time.perf_counter() - compile_s - SAFETY_S
    limits["time budget"] = int(left // (units * per_image_s))
    binding = min(limits, key=lambda name: limits[name])
    return max(1, limits[binding]), "" if binding == "paper" else f"limited by {binding}"


def cache_bytes_per_image(ctx: Context, methods: list[Method]) -> int:
    """The most any row caches per image: ECAD's liveness bound, or TaylorSeer's order + 1 factors of
    every component output."""
    section, size = ctx.section, ctx.dtype.itemsize
    tokens, rows = text_tokens(section), section.family.rows_per_image
    ecad = max(
        schedule_cost(
            m.schedule, height=section.resolution, text_tokens=tokens, batch=rows, bytes_per_element=size
        ).cache_peak_bytes
        for m in methods
        if m.schedule is not None
    )
    if not any(m.key.startswith("diffusers:taylorseer") for m in methods):
        return ecad
    adapter = get_adapter(ctx.arch.family)
    work = Workload(adapter.image_tokens(ctx.arch, section.resolution, section.resolution), tokens, rows)
    elements = adapter.slot_elements(ctx.arch, work)
    every = sum(
        count * sum(elements[name] for name in group.component_names)
        for group, count in zip(adapter.groups, ctx.arch.block_counts, strict=True)
    )
    return max(ecad, (TAYLOR_ORDER + 1) * every * size)


@dataclass
class Run:
    """What all sections of one invocation share."""

    args: argparse.Namespace
    device: torch.device
    report: Report
    compile_estimates: dict[str, float] = field(default_factory=dict)

    def write(self) -> None:
        write_outputs(self.args.out, self.report)


def run_section(run: Run, section: Section, report: SectionReport, budget_s: float) -> None:
    started = time.perf_counter()
    report.budget_s = budget_s
    try:
        measure_section(run, section, report, started + budget_s)
    except Exception as error:  # a section that cannot even run its baseline still reports why
        report.notes.append(f"section stopped: {type(error).__name__}: {error}".splitlines()[0][:300])
        for row in report.rows:
            if row.status == "pending":
                row.status, row.note = "skipped", "section stopped"
    finally:
        report.elapsed_s = time.perf_counter() - started
        report.notes.append(f"section took {report.elapsed_s:.0f} s of a {budget_s:.0f} s budget")
        reset_memory(run.device, collect=True)  # the section's pipeline went with measure_section's frame
        run.write()


def measure_section(run: Run, section: Section, report: SectionReport, deadline: float) -> None:
    args, device = run.args, run.device
    started = time.perf_counter()
    torch._dynamo.reset()  # a fresh model per section: old graphs would only count towards recompile limits
    dtype = section_dtype(section, device)
    pipe = build_pipeline(section, device, dtype)
    arch = architecture_of(pipe.transformer, section.family.key)
    methods = plan_methods(section, arch, *load_cache_dit())
    paper = {} if section.tiny else PAPER_SPEEDUPS.get((section.family.key, section.resolution), {})
    rows = {
        m.key: Row(m.key, m.label, m.group, m.steps, m.compiled, note=m.note, paper_speedup=paper.get(m.key))
        for m in methods
    }
    report.rows = sorted(rows.values(), key=lambda row: GROUPS.index(row.group))
    watch = Stopwatch(device)
    ctx = Context(
        section=section,
        pipe=pipe,
        arch=arch,
        device=device,
        dtype=dtype,
        compile_options=(("backend", args.compile_backend),) if args.compile_backend else (),
        deadline=deadline,
        watch=watch,
        compile_estimates=run.compile_estimates,
        repeats=args.repeats,
    )
    pipe.vae.decoder.register_forward_pre_hook(lambda *_: watch.mark("decode"))
    ctx.batch = args.batch or section.probe_batch
    ctx.call = generation_call(section, pipe, ctx.batch, device, dtype)
    batch, report.batch_limit = choose_batch(ctx, methods, args.batch)
    if batch != ctx.batch:
        ctx.batch, ctx.call = batch, generation_call(section, pipe, batch, device, dtype)
    report.batch = ctx.batch
    report.notes.append(f"model built and batch chosen in {time.perf_counter() - started:.0f} s")
    ordered = sorted(methods, key=lambda m: PRIORITY.index(m.group))
    for index, method in enumerate(ordered):
        run_method(ctx, method, rows[method.key])
        finish_row(ctx, method, rows[method.key], rows)
        if method.key == "no_cache":
            baseline = rows["no_cache"]
            if baseline.status != "ok" or baseline.ms_per_image is None:
                raise RuntimeError(f"no-cache baseline failed: {baseline.note}")
            ctx.no_cache_run_s = baseline.ms_per_image * ctx.batch / 1000.0
            ctx.no_cache_peak = baseline.peak_memory_bytes
            ctx.repeats = report.repeats = plan_repeats(ctx, ordered[index + 1 :])
        run.write()
    baseline = rows["no_cache"]
    report.notes.append(
        f"VAE decode: {baseline.decode_ms_per_image:.1f} of {baseline.ms_per_image:.1f} ms/image, no cache"
    )
