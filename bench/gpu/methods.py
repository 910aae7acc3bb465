"""The table rows: ECAD schedules, FORA, fewer steps, torch.compile and the peers (diffusers' and
cache-dit's caches), each as a `Method`."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from diffusers import DiffusionPipeline, FirstBlockCacheConfig, TaylorSeerCacheConfig

from bench.gpu.workloads import FLUX, Section, text_tokens
from ecad.costs import schedule_cost
from ecad.models import Architecture
from ecad.schedule import Schedule, fora, load_schedule, no_cache

PUBLISHED = Path(__file__).resolve().parents[2] / "schedules" / "published" / "schedules_in_paper"


FBC_THRESHOLD = 0.08  # ParaAttention's FLUX.1-dev setting (peers.md)


TAYLOR_INTERVAL, TAYLOR_ORDER = 5, 2  # the paper's TaylorSeer baseline, N=5 O=2


CACHE_DIT_PRESETS = ("slow", "medium", "fast", "ultra")


Peer = Callable[[DiffusionPipeline], AbstractContextManager[Any]]


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    group: str
    steps: int
    schedule: Schedule | None = None  # rows run by the ECAD cache engine
    compiled: bool = False
    peer: Peer | None = None  # rows run by diffusers' or cache-dit's own hooks
    unavailable: str = ""  # why an optional peer cannot run here
    est_fraction: float = 1.0  # expected time relative to no cache, for the time budget
    note: str = ""


def fit_schedule(schedule: Schedule, arch: Architecture, steps: int) -> Schedule:
    """The published schedule on this model; the tiny CPU models take each block group's first blocks
    and the first `steps` steps."""
    if schedule.architecture.block_counts == arch.block_counts and schedule.steps == steps:
        return schedule
    parts, start = [], 0
    for published, wanted in zip(schedule.architecture.block_counts, arch.block_counts, strict=True):
        parts.append(schedule.mask[:steps, start : start + wanted])
        start += published
    return Schedule(torch.cat(parts, dim=1), arch, name=schedule.name)


def expected_fraction(mac_ratio: float) -> float:
    # Wall-clock falls slower than MACs (VAE, fixed per-step work): a deliberately pessimistic guess.
    return min(1.0, 0.1 + 1.0 / mac_ratio)


@contextmanager
def diffusers_cache(pipe: DiffusionPipeline, config: Any) -> Iterator[None]:
    pipe.transformer.enable_cache(config)
    try:
        yield
    finally:
        pipe.transformer.disable_cache()


def taylorseer_all_components() -> TaylorSeerCacheConfig:
    """TaylorSeer forecasting every ECAD component of FLUX, closer to the paper's baseline than the
    diffusers default, which forecasts attention only."""
    return TaylorSeerCacheConfig(
        cache_interval=TAYLOR_INTERVAL,
        max_order=TAYLOR_ORDER,
        cache_identifiers=[
            r"transformer_blocks\.\d+\.(attn|ff|ff_context)",
            r"single_transformer_blocks\.\d+\.(attn|proj_mlp|proj_out)",
        ],
    )


def diffusers_methods(steps: int) -> list[Method]:
    dynamic = "dynamic: decisions on random weights are not those of real weights, compare at its MAC ratio"
    return [
        Method(
            "diffusers:fbc",
            f"diffusers FirstBlockCache (threshold {FBC_THRESHOLD})",
            "diffusers",
            steps,
            peer=lambda pipe: diffusers_cache(pipe, FirstBlockCacheConfig(threshold=FBC_THRESHOLD)),
            note=dynamic,
        ),
        Method(
            "diffusers:taylorseer",
            f"diffusers TaylorSeer N={TAYLOR_INTERVAL} O={TAYLOR_ORDER} (default: attention only)",
            "diffusers",
            steps,
            peer=lambda pipe: diffusers_cache(
                pipe, TaylorSeerCacheConfig(cache_interval=TAYLOR_INTERVAL, max_order=TAYLOR_ORDER)
            ),
        ),
        Method(
            "diffusers:taylorseer_all",
            f"diffusers TaylorSeer N={TAYLOR_INTERVAL} O={TAYLOR_ORDER} (all components)",
            "diffusers",
            steps,
            peer=lambda pipe: diffusers_cache(pipe, taylorseer_all_components()),
            est_fraction=0.5,
        ),
    ]


def load_cache_dit() -> tuple[ModuleType | None, str]:
    """cache-dit is optional: its rows say why when it cannot be imported."""
    os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "warning")  # its info logs would bury the tables
    try:
        return importlib.import_module("cache_dit"), ""
    except Exception as error:  # any import-time failure of an optional peer only disables its rows
        return None, f"cache-dit unavailable: {type(error).__name__}: {error}".splitlines()[0]


@contextmanager
def cache_dit_dbcache(cache_dit: ModuleType, mask: list[int], pipe: DiffusionPipeline) -> Iterator[None]:
    """DBCache F1B0 on a static step mask, through the pipeline as users call it: in transformer-only
    mode cache-dit starts each call one step late unless its context is refreshed by hand."""
    config = cache_dit.DBCacheConfig(
        Fn_compute_blocks=1,
        Bn_compute_blocks=0,
        num_inference_steps=len(mask),
        steps_computation_mask=mask,
        steps_computation_policy="static",
        enable_separate_cfg=False,  # PixArt batches CFG into one forward; FLUX.1-dev has none
    )
    transformer = pipe.transformer
    order = list(transformer._modules)
    cache_dit.enable_cache(pipe, cache_config=config)
    try:
        yield
    finally:
        cache_dit.disable_cache(pipe)
        # disable_cache leaves FLUX's patched transformer forward and its flag behind, and re-adds the block
        # lists at the end of the submodules, after which diffusers' FirstBlockCache takes a single-stream
        # block for its head block and fails. Undo all three so the next row runs the stock model.
        if getattr(transformer, "_is_patched", False):
            del transformer._is_patched
            transformer.__dict__.pop("forward", None)
        for name in order:
            transformer._modules[name] = transformer._modules.pop(name)


def cache_dit_methods(
    cache_dit: ModuleType | None, reason: str, arch: Architecture, steps: int
) -> list[Method]:
    methods = []
    for preset in CACHE_DIT_PRESETS:
        key, label = f"cache-dit:{preset}", f"cache-dit DBCache F1B0 + SCM {preset} (static)"
        if cache_dit is None:
            methods.append(Method(key, label, "cache-dit", steps, unavailable=reason))
            continue
        mask = list(cache_dit.steps_mask(mask_policy=preset, total_steps=steps))
        computed = sum(mask)
        fraction = (computed + (steps - computed) / arch.num_blocks) / steps  # cached steps still run F1
        methods.append(
            Method(
                key,
                f"{label}, {computed}/{steps} steps computed",
                "cache-dit",
                steps,
                peer=partial(cache_dit_dbcache, cache_dit, mask),
                est_fraction=min(1.0, fraction + 0.1),
            )
        )
    return methods


def plan_methods(
    section: Section, arch: Architecture, cache_dit: ModuleType | None, cache_dit_reason: str
) -> list[Method]:
    """Every row of a section, in the issue's order."""
    family, steps = section.family, section.steps

    def ratio(schedule: Schedule) -> float:
        return schedule_cost(schedule, height=section.resolution, text_tokens=text_tokens(section)).macs_ratio

    def ecad(key: str, label: str, group: str, schedule: Schedule, compiled: bool = False) -> Method:
        fraction = expected_fraction(ratio(schedule))
        return Method(key, label, group, steps, schedule=schedule, compiled=compiled, est_fraction=fraction)

    ours = {
        name: fit_schedule(load_schedule(PUBLISHED / family.schedule_dir / f"{name}.json"), arch, steps)
        for name in family.schedules
    }
    methods = [Method("no_cache", "no cache", "baseline", steps)]
    methods += [ecad(f"ecad:{name}", f"ECAD {name}", "ecad", schedule) for name, schedule in ours.items()]
    methods.append(ecad("fora_3", "FORA N=3", "fora", fora(arch, steps, 3)))
    if family is FLUX:
        methods += diffusers_methods(steps)
    methods += cache_dit_methods(cache_dit, cache_dit_reason, arch, steps)
    equal_macs: dict[int, list[str]] = {}
    for name, schedule in ours.items():
        equal_macs.setdefault(max(1, round(steps / ratio(schedule))), []).append(name)
    for fewer, names in sorted(equal_macs.items(), reverse=True):
        label = f"no cache, {fewer} steps (≈ MACs of {', '.join(names)})"
        methods.append(Method(f"steps:{fewer}", label, "steps", fewer, est_fraction=(fewer + 1) / steps))
    methods.append(
        ecad("compile:no_cache", "no cache + torch.compile", "compile", no_cache(arch, steps), True)
    )
    methods += [
        ecad(f"compile:{name}", f"ECAD {name} + torch.compile", "compile", schedule, True)
        for name, schedule in ours.items()
    ]
    return methods
