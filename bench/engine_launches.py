"""What a cached step launches, and what that costs the host: the cache engine in the launch-bound regime.

    .venv/bin/python -m bench.engine_launches [--repeats 7] [--families pixart_alpha flux]

Real depth (PixArt-α 28 blocks; FLUX.1-dev 19 + 38), tiny width (2 heads of 16 channels), random
weights, 20 steps, called through the real pipelines. At this width the math is negligible and each
forward costs what it launches, as a GPU at small batch does: kernel ops per step and host syncs per
call are exact counts (harness.dispatch); host time per forward is the median over round-robin runs.
MAC ratios are the schedules' own at the paper's 256² workload.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from ecad.cache import CacheEngine
from ecad.costs import schedule_cost
from ecad.models import get_adapter
from ecad.pipelines.tiny import real_depth_call, real_depth_pipeline
from ecad.schedule import Schedule, fora, load_schedule, no_cache
from harness.dispatch import count_forwards

STEPS = 20
PAPER = Path(__file__).resolve().parents[1] / "schedules" / "published" / "schedules_in_paper"
PUBLISHED = {
    "pixart_alpha": [f"pixart_alpha_256/{name}" for name in ("ours_fast", "ours_faster", "ours_fastest")],
    "flux": ["flux_256/ours_fast", "flux_256/ours_faster"],
}


@dataclass
class Row:
    name: str
    schedule: Schedule | None
    kernels_per_step: float = 0.0
    cached_step_kernels: int | None = None
    host_syncs: int = 0
    forward_ms: list[float] | None = None


def all_reuse(family: str) -> Schedule:
    """Every component computes at step 0 only: from step 1 on, every step is fully cached."""
    arch = get_adapter(family).reference
    mask = torch.zeros(STEPS, arch.num_blocks, 3, dtype=torch.bool)
    mask[0] = True
    return Schedule(mask, arch, name="all_reuse")


def rows_for(family: str) -> list[Row]:
    arch = get_adapter(family).reference
    rows = [Row("stock (no engine)", None), Row("all-compute", no_cache(arch, STEPS))]
    for name in PUBLISHED[family]:
        rows.append(Row(name.split("/")[1], load_schedule(PAPER / f"{name}.json")))
    rows += [Row("FORA N=3", fora(arch, STEPS, 3)), Row("fully cached", all_reuse(family))]
    return rows


def call(pipe: Any, family: str) -> None:
    real_depth_call(pipe, family, STEPS, generator=torch.Generator().manual_seed(0))


def engine(pipe: Any, row: Row) -> Any:
    return nullcontext() if row.schedule is None else CacheEngine(pipe, row.schedule)


@contextmanager
def timed_forwards(module: torch.nn.Module) -> Iterator[list[float]]:
    """Host wall time of each forward of `module` (the engine's hooks included)."""
    times: list[float] = []
    started: list[float] = []
    pre = module.register_forward_pre_hook(lambda *_: started.append(time.perf_counter()))
    post = module.register_forward_hook(lambda *_: times.append(time.perf_counter() - started.pop()))
    try:
        yield times
    finally:
        pre.remove()
        post.remove()


def count(pipe: Any, family: str, row: Row) -> None:
    with torch.inference_mode(), engine(pipe, row), count_forwards(pipe.transformer) as (_, forwards):
        call(pipe, family)
    row.kernels_per_step = statistics.mean(f.kernels for f in forwards)
    row.host_syncs = sum(f.host_syncs for f in forwards)
    if row.name == "fully cached":
        row.cached_step_kernels = forwards[-1].kernels


def time_rows(pipe: Any, family: str, rows: list[Row], repeats: int) -> None:
    for row in rows:
        row.forward_ms = []
    for _ in range(repeats + 1):  # the first round warms up
        for row in rows:
            with torch.inference_mode(), engine(pipe, row), timed_forwards(pipe.transformer) as times:
                call(pipe, family)
            assert row.forward_ms is not None
            row.forward_ms.append(statistics.mean(times) * 1000)
    for row in rows:
        assert row.forward_ms is not None
        row.forward_ms = row.forward_ms[1:]


def report(family: str, rows: list[Row], repeats: int) -> None:
    stock = rows[0]
    assert stock.forward_ms is not None
    stock_ms = statistics.median(stock.forward_ms)
    print(f"\n### {family}: real depth, tiny width, {STEPS} steps, median of {repeats}\n")
    print(
        "| schedule | kernel ops / step | vs stock | host syncs / call | host ms / forward | speed-up "
        "| MAC ratio | speed-up / MAC ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        assert row.forward_ms is not None
        median = statistics.median(row.forward_ms)
        speedup = stock_ms / median
        macs = 1.0 if row.schedule is None else schedule_cost(row.schedule).macs_ratio
        kernels = f"{row.kernels_per_step:.0f}"
        if row.cached_step_kernels is not None:
            kernels += f" (cached step {row.cached_step_kernels})"
        print(
            f"| {row.name} | {kernels} | {row.kernels_per_step / stock.kernels_per_step:.2f} "
            f"| {row.host_syncs} | {median:.2f} | {speedup:.2f}× | {macs:.2f}× | {speedup / macs:.0%} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--families", nargs="+", default=list(PUBLISHED), choices=list(PUBLISHED))
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {platform.machine()}, {platform.processor() or 'cpu'}, "
        f"{torch.get_num_threads()} threads, {datetime.now(UTC):%Y-%m-%d}"
    )
    for family in args.families:
        pipe = real_depth_pipeline(family)
        pipe.set_progress_bar_config(disable=True)
        rows = rows_for(family)
        for row in rows:
            count(pipe, family, row)
        time_rows(pipe, family, rows, args.repeats)
        report(family, rows, args.repeats)


if __name__ == "__main__":
    main()
