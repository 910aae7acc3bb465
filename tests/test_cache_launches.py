"""What the cache engine launches: kernel ops of a fully cached step, host syncs, step-invariant work.

Counts are exact (a TorchDispatchMode, harness.dispatch) and do not depend on width, so real-depth,
tiny-width pipelines give the counts of the real models.
"""

from __future__ import annotations

from contextlib import ExitStack
from functools import cache
from typing import Any

import pytest
import torch

from ecad.cache import CacheEngine
from ecad.models import architecture_of
from ecad.pipelines.tiny import real_depth_call, real_depth_pipeline
from ecad.schedule import Schedule, load_schedule
from harness.dispatch import OpCounts, count_forwards
from tests.helpers import PUBLISHED

STEPS = 20
# Fully cached step: live block math only (adaLN gates, gate multiplies, residual adds) plus the
# per-step embedders and output layer. Stock steps launch 953 (PixArt-α) and 2,377 (FLUX).
CACHED_STEP_KERNELS = {"pixart_alpha": 170, "flux": 390}
OURS_FAST = {
    "pixart_alpha": PUBLISHED / "schedules_in_paper" / "pixart_alpha_256" / "ours_fast.json",
    "flux": PUBLISHED / "schedules_in_paper" / "flux_256" / "ours_fast.json",
}


@cache
def pipeline(family: str) -> Any:
    return real_depth_pipeline(family)


def all_reuse(pipe: Any, family: str) -> Schedule:
    arch = architecture_of(pipe.transformer, family)
    mask = torch.zeros(STEPS, arch.num_blocks, 3, dtype=torch.bool)
    mask[0] = True
    return Schedule(mask, arch, name="all_reuse")


def call(pipe: Any, family: str, **kwargs: Any) -> None:
    real_depth_call(pipe, family, STEPS, **kwargs)


def forwards_under(pipe: Any, family: str, schedule: Schedule | None, **kwargs: Any) -> list[OpCounts]:
    with torch.inference_mode(), count_forwards(pipe.transformer) as (_, forwards):
        if schedule is None:
            call(pipe, family, **kwargs)
        else:
            with CacheEngine(pipe, schedule):
                call(pipe, family, **kwargs)
    return forwards


@pytest.mark.parametrize("family", list(CACHED_STEP_KERNELS))
def test_a_fully_cached_step_launches_only_live_work(family: str) -> None:
    pipe = pipeline(family)
    stock = forwards_under(pipe, family, None)
    cached = forwards_under(pipe, family, all_reuse(pipe, family))
    assert len(cached) == STEPS
    assert all(forward.kernels <= CACHED_STEP_KERNELS[family] for forward in cached[1:]), [
        f.kernels for f in cached
    ]
    # The all-compute first step launches no more than the stock step does.
    assert cached[0].kernels <= stock[0].kernels


@pytest.mark.parametrize("family", list(CACHED_STEP_KERNELS))
def test_no_host_reads_during_a_call(family: str) -> None:
    pipe = pipeline(family)
    schedule = load_schedule(OURS_FAST[family])
    kwargs = {"negative_prompt": ["blur"], "true_cfg_scale": 2.0} if family == "flux" else {}
    forwards = forwards_under(pipe, family, schedule, **kwargs)
    assert len(forwards) == STEPS * (2 if family == "flux" else 1)
    assert sum(forward.host_syncs for forward in forwards) == 0


INVARIANTS = {
    "pixart_alpha": ["caption_projection"],
    "flux": ["pos_embed", "context_embedder", "time_text_embed.text_embedder"],
}


def invariant_ops(pipe: Any, family: str, schedule: Schedule) -> dict[str, list[OpCounts]]:
    """Kernel ops of each forward of every step-invariant submodule during one call."""
    with ExitStack() as stack:
        counted = {
            path: stack.enter_context(count_forwards(pipe.transformer.get_submodule(path)))[1]
            for path in INVARIANTS[family]
        }
        stack.enter_context(torch.inference_mode())
        stack.enter_context(CacheEngine(pipe, schedule))
        call(pipe, family)
    return counted


@pytest.mark.parametrize("family", list(INVARIANTS))
def test_step_invariant_work_runs_once_per_call(family: str) -> None:
    pipe = pipeline(family)
    schedule = load_schedule(OURS_FAST[family])
    for _ in range(2):  # computed again at the start of the next call
        for path, forwards in invariant_ops(pipe, family, schedule).items():
            assert len(forwards) == STEPS, path
            assert forwards[0].kernels > 0, path
            assert all(forward.kernels == 0 for forward in forwards[1:]), path
