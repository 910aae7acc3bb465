"""The cache engine against ECAD's semantics, step by step and bit for bit.

The reference here is deliberately simple and independent of the engine: plain torch forward hooks on
the component modules, where every module always runs and, at steps the schedule reuses it, its output
is replaced by the last output it computed (per pass). Real depth (PixArt 28 blocks, FLUX 19 + 38),
tiny width, the published schedules, FORA and an all-reuse schedule, float32 and bfloat16.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch

from ecad.cache import CacheEngine
from ecad.models import architecture_of
from ecad.pipelines.tiny import real_depth_pipeline
from ecad.schedule import Schedule, fora, load_schedule, no_cache
from tests.helpers import PUBLISHED, EcadReference, generate

STEPS = 20
PAPER = PUBLISHED / "schedules_in_paper"
PUBLISHED_SCHEDULES: dict[str, list[Path]] = {
    "pixart_alpha": sorted((PAPER / "pixart_alpha_256").glob("ours_*.json")),
    "pixart_sigma": [PAPER / "pixart_sigma_256" / "ours_fast.json"],
    "flux": sorted((PAPER / "flux_256").glob("ours_*.json")),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@cache
def cached_pipeline(family: str, dtype_name: str) -> Any:
    return real_depth_pipeline(family).to(DTYPES[dtype_name])


def all_reuse(pipe: Any, family: str) -> Schedule:
    """Every component computes at step 0 only and is reused for the rest of the call."""
    arch = architecture_of(pipe.transformer, family)
    mask = torch.zeros(STEPS, arch.num_blocks, 3, dtype=torch.bool)
    mask[0] = True
    return Schedule(mask, arch, name="all_reuse")


def schedules(pipe: Any, family: str) -> dict[str, Schedule]:
    arch = architecture_of(pipe.transformer, family)
    found = {path.stem: load_schedule(path) for path in PUBLISHED_SCHEDULES[family]}
    # Published files name their family; PixArt-Σ's transfer file is read as the Σ architecture.
    found = {name: Schedule(s.mask, arch, name=name) for name, s in found.items()}
    return {**found, "fora_3": fora(arch, STEPS, 3), "all_reuse": all_reuse(pipe, family)}


@contextmanager
def recording(pipe: Any) -> Iterator[list[torch.Tensor]]:
    """Every transformer output of the calls made inside, in order."""
    outputs: list[torch.Tensor] = []
    handle = pipe.transformer.register_forward_hook(lambda _m, _a, output: outputs.append(output[0].clone()))
    try:
        yield outputs
    finally:
        handle.remove()


def run(pipe: Any, family: str, **kwargs: Any) -> None:
    prompts = ["a red circle", "two blue squares"]
    generate(pipe, family, prompts, [3, 4], steps=STEPS, max_sequence_length=16, **kwargs)


def assert_steps_equal(engine: list[torch.Tensor], reference: list[torch.Tensor]) -> None:
    assert len(engine) == len(reference)
    for step, (got, expected) in enumerate(zip(engine, reference, strict=True)):
        assert torch.equal(got, expected), f"forward {step} differs from the reference"


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("family", list(PUBLISHED_SCHEDULES))
def test_every_schedule_matches_the_reference_at_every_step(family: str, dtype_name: str) -> None:
    pipe = cached_pipeline(family, dtype_name)
    with torch.inference_mode():
        with recording(pipe) as stock:
            run(pipe, family)
        all_compute_schedule = no_cache(architecture_of(pipe.transformer, family), STEPS)
        with CacheEngine(pipe, all_compute_schedule), recording(pipe) as all_compute:
            run(pipe, family)
        assert_steps_equal(all_compute, stock)
        for name, schedule in schedules(pipe, family).items():
            reference = EcadReference(pipe, schedule)
            with recording(pipe) as expected:
                run(pipe, family)
            reference.remove()
            with CacheEngine(pipe, schedule), recording(pipe) as got:
                run(pipe, family)
            assert got != [] and not all(torch.equal(g, s) for g, s in zip(got, stock, strict=True)), name
            assert_steps_equal(got, expected)


def test_flux_true_cfg_passes_match_the_reference() -> None:
    """True CFG runs the transformer twice per step on the same latents; each pass keeps its own values."""
    pipe = cached_pipeline("flux", "float32")
    schedule = schedules(pipe, "flux")["ours_fast"]
    cfg = {"negative_prompt": ["noise", "blur"], "true_cfg_scale": 2.0}
    with torch.inference_mode():
        reference = EcadReference(pipe, schedule, passes_per_step=2)
        with recording(pipe) as expected:
            run(pipe, "flux", **cfg)
        reference.remove()
        with CacheEngine(pipe, schedule), recording(pipe) as got:
            run(pipe, "flux", **cfg)
    assert len(got) == 2 * STEPS
    assert_steps_equal(got, expected)
