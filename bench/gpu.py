"""GPU benchmark (issue 7): ECAD schedules next to diffusers' and cache-dit's caches, on one GPU.

Real-size PixArt-α (28 × 1152, fp16) and FLUX.1-dev (19 + 38 blocks, width 3072, bf16) with random weights
(speed does not depend on weights), called through their diffusers pipelines from random text embeddings of
the right shape, VAE decode included: the paper's latency protocol (ecad.md §6). All rows of a section run
in one process on one model, so every speed-up compares like with like.

    python bench/gpu.py --out DIR                         # one H100/H200, about 7 minutes
    python bench/gpu.py --out DIR --quick --device cpu    # tiny models, every row, for CI

Writes DIR/gpu.md and DIR/gpu.json, rewritten after every row so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch._dynamo
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    FirstBlockCacheConfig,
    FluxPipeline,
    FluxTransformer2DModel,
    PixArtAlphaPipeline,
    PixArtTransformer2DModel,
    TaylorSeerCacheConfig,
)
from torch._dynamo.utils import counters

from ecad.cache import CacheEngine, EngineOptions, build_plan
from ecad.cache.hooks import COMPONENT_HOOK, ComponentCacheHook
from ecad.cache.plan import executed_mask
from ecad.costs import schedule_cost
from ecad.models import Architecture, Workload, architecture_of, get_adapter
from ecad.pipelines.tiny import flux_scheduler, pixart_scheduler
from ecad.schedule import Schedule, fora, load_schedule, no_cache

PUBLISHED = Path(__file__).resolve().parents[1] / "schedules" / "published" / "schedules_in_paper"
FBC_THRESHOLD = 0.08  # ParaAttention's FLUX.1-dev setting (peers.md)
TAYLOR_INTERVAL, TAYLOR_ORDER = 5, 2  # the paper's TaylorSeer baseline, N=5 O=2
CACHE_DIT_PRESETS = ("slow", "medium", "fast", "ultra")
# Display order of the row groups (the order) and the order they run in when time is short.
GROUPS = ("baseline", "ecad", "fora", "diffusers", "cache-dit", "steps", "compile")
PRIORITY = ("baseline", "ecad", "fora", "compile", "steps", "cache-dit", "diffusers")
MIN_REPEATS = 2
SAFETY_S = 5.0  # slack kept in every section for the estimates being off


@dataclass(frozen=True)
class Family:
    key: str  # the ECAD family name
    label: str
    dtype: torch.dtype
    schedules: tuple[str, ...]
    schedule_dir: str
    rows_per_image: int  # transformer batch rows per image: PixArt runs CFG as one batch of 2
    compile_estimate_s: float  # first compile of the components, until a section has measured it


PIXART = Family(
    "pixart_alpha",
    "PixArt-α XL-2 (28 × 1152)",
    torch.float16,
    ("ours_fast", "ours_faster", "ours_fastest"),
    "pixart_alpha_256",
    2,
    45.0,
)
FLUX = Family(
    "flux", "FLUX.1-dev (19 + 38 × 3072)", torch.bfloat16, ("ours_fast", "ours_faster"), "flux_256", 1, 90.0
)

# The paper's A6000 speed-ups for the same rows (ecad.md §7); FLUX at 1024² ran the 256²-searched schedule.
PAPER_SPEEDUPS: dict[tuple[str, int], dict[str, float]] = {
    ("pixart_alpha", 256): {
        "ecad:ours_fast": 1.97,
        "ecad:ours_faster": 2.40,
        "ecad:ours_fastest": 2.58,
        "fora_3": 2.01,
    },
    ("flux", 256): {"ecad:ours_fast": 2.58, "ecad:ours_faster": 3.37, "fora_3": 2.44},
    ("flux", 1024): {"ecad:ours_fast": 2.63, "fora_3": 2.40},
}


@dataclass(frozen=True)
class Section:
    family: Family
    resolution: int
    paper_batch: int  # the batch the paper timed this setting at (ecad.md §6)
    probe_batch: int
    weight: float  # share of the time budget
    tiny: bool
    steps: int  # the published schedules' 20; the tiny CPU run cuts them short to stay fast

    @property
    def key(self) -> str:
        return f"{self.family.key}_{self.resolution}"


def full_sections() -> list[Section]:
    return [
        Section(PIXART, 256, 100, 8, 0.20, False, 20),
        Section(FLUX, 256, 18, 1, 0.25, False, 20),
        Section(PIXART, 1024, 20, 1, 0.20, False, 20),
        Section(FLUX, 1024, 3, 1, 0.35, False, 20),
    ]


def quick_sections() -> list[Section]:
    return [
        Section(PIXART, 64, 2, 2, 0.25, True, 8),
        Section(FLUX, 64, 2, 2, 0.25, True, 8),
        Section(PIXART, 128, 2, 2, 0.25, True, 8),
        Section(FLUX, 128, 2, 2, 0.25, True, 8),
    ]


# --- models -------------------------------------------------------------------------------------------


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def section_dtype(section: Section, device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "cpu" else section.family.dtype  # CPUs lack fast fp16 kernels


def text_tokens(section: Section) -> int:
    if section.family is PIXART:
        return 8 if section.tiny else 120
    return 16 if section.tiny else 512


def transformer_for(section: Section) -> torch.nn.Module:
    tiny, latent = section.tiny, section.resolution // 8
    if section.family is PIXART:
        return PixArtTransformer2DModel(
            sample_size=latent,
            num_layers=3 if tiny else 28,
            num_attention_heads=2 if tiny else 16,
            attention_head_dim=16 if tiny else 72,
            in_channels=4,
            out_channels=8,
            patch_size=2,
            cross_attention_dim=32 if tiny else 1152,
            caption_channels=32 if tiny else 4096,
            norm_type="ada_norm_single",
            # Left to diffusers, which adds the 1024-MS checkpoint's resolution conditioning at 1024².
            use_additional_conditions=None,
        )
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=2 if tiny else 19,
        num_single_layers=2 if tiny else 38,
        attention_head_dim=16 if tiny else 128,
        num_attention_heads=2 if tiny else 24,
        joint_attention_dim=32 if tiny else 4096,
        pooled_projection_dim=32 if tiny else 768,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6) if tiny else (16, 56, 56),
    )


def vae_for(section: Section) -> AutoencoderKL:
    """The SD VAE (PixArt) or the FLUX VAE; both decode ×8, both decode time counts in the paper."""
    shape = (
        {"block_out_channels": (16, 16, 32, 32), "layers_per_block": 1, "norm_num_groups": 8}
        if section.tiny
        else {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "norm_num_groups": 32}
    )
    family = (
        {"latent_channels": 4, "scaling_factor": 0.18215}
        if section.family is PIXART
        else {
            "latent_channels": 16,
            "scaling_factor": 0.3611,
            "shift_factor": 0.1159,
            "use_quant_conv": False,
            "use_post_quant_conv": False,
        }
    )
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=section.resolution,
        **shape,
        **family,
    )


def build_pipeline(section: Section, device: torch.device, dtype: torch.dtype) -> DiffusionPipeline:
    """Random weights created directly on the device in the target dtype: FLUX in fp32 would not fit."""
    torch.manual_seed(0)
    with torch.device(device), default_dtype(dtype):
        transformer = transformer_for(section)
        vae = vae_for(section)
    transformer = transformer.to(device=device, dtype=dtype).eval()
    vae = vae.to(device=device, dtype=dtype).eval()
    if section.family is PIXART:
        scheduler: Any = pixart_scheduler()
        pipe: DiffusionPipeline = PixArtAlphaPipeline(
            tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler
        )
    else:
        scheduler = flux_scheduler()
        pipe = FluxPipeline(
            scheduler=scheduler,
            vae=vae,
            text_encoder=None,
            tokenizer=None,
            text_encoder_2=None,
            tokenizer_2=None,
            transformer=transformer,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generation_call(
    section: Section, pipe: DiffusionPipeline, batch: int, device: torch.device, dtype: torch.dtype
) -> Callable[[int], None]:
    """One pipeline call for `batch` images from fixed random embeddings and fixed noise."""
    config = pipe.transformer.config
    tokens = text_tokens(section)
    gen = torch.Generator("cpu").manual_seed(1)
    size = {"height": section.resolution, "width": section.resolution, "output_type": "pt"}

    def embeddings(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    if section.family is PIXART:
        cond = embeddings(batch, tokens, config.caption_channels)
        uncond = embeddings(batch, tokens, config.caption_channels)
        mask = torch.ones(batch, tokens, device=device)
        kwargs: dict[str, Any] = {
            "prompt_embeds": cond,
            "prompt_attention_mask": mask,
            "negative_prompt": None,
            "negative_prompt_embeds": uncond,
            "negative_prompt_attention_mask": mask,
            "guidance_scale": 4.5,
            "use_resolution_binning": False,
            "clean_caption": False,
        }
    else:
        kwargs = {
            "prompt_embeds": embeddings(batch, tokens, config.joint_attention_dim),
            "pooled_prompt_embeds": embeddings(batch, config.pooled_projection_dim),
            "guidance_scale": 5.0,
        }

    def call(steps: int) -> None:
        noise = torch.Generator(device).manual_seed(0)  # the same noise for every row
        pipe(num_inference_steps=steps, generator=noise, **size, **kwargs)

    return call


# --- measurement ----------------------------------------------------------------------------------------


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

    def __init__(self, transformer: torch.nn.Module) -> None:
        self.transformer = transformer
        self.peak = 0
        self._handle: Any = None

    def __enter__(self) -> SlotMeter:
        hooks = [
            hook
            for module in self.transformer.modules()
            if (registry := getattr(module, "_diffusers_hook", None)) is not None
            and isinstance(hook := registry.get_hook(COMPONENT_HOOK), ComponentCacheHook)
        ]

        def measure(*_: Any) -> None:
            seen: set[int] = set()
            held = sum(tensor_bytes(value, seen) for hook in hooks for value in hook.slots.values())
            self.peak = max(self.peak, held)

        self._handle = self.transformer.register_forward_hook(measure)
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


# --- methods (table rows) -----------------------------------------------------------------------------


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


# --- results ----------------------------------------------------------------------------------------------


@dataclass
class Row:
    key: str
    label: str
    group: str
    steps: int
    compiled: bool
    status: str = "pending"  # ok | skipped | failed | unavailable
    note: str = ""
    repeats: int = 0
    ms_per_image: float | None = None
    runs_ms_per_image: list[float] = field(default_factory=list)
    decode_ms_per_image: float | None = None
    first_run_s: float | None = None
    wall_s: float | None = None
    speedup: float | None = None
    speedup_vs_eager_no_cache: float | None = None
    mac_ratio: float | None = None
    mac_ratio_realized: float | None = None
    efficiency: float | None = None
    peak_memory_bytes: int | None = None
    cache_memory_bytes: int | None = None
    cache_memory_kind: str | None = None
    cache_bound_bytes: int | None = None
    paper_speedup: float | None = None
    graphs_compiled: int | None = None
    graphs_compiled_while_timed: int | None = None
    realized_consistent: bool | None = None
    realized_matches_plan: bool | None = None

    def add_note(self, text: str) -> None:
        self.note = f"{self.note}; {text}" if self.note else text


@dataclass
class SectionReport:
    key: str
    model: str
    family: str
    resolution: int
    dtype: str
    tiny: bool
    steps: int
    text_tokens: int
    paper_batch: int
    batch: int | None = None
    batch_limit: str = ""
    repeats: int | None = None
    budget_s: float = 0.0
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)


@dataclass
class Report:
    environment: dict[str, Any]
    settings: dict[str, Any]
    sections: list[SectionReport] = field(default_factory=list)


def gib(value: int | None) -> str:
    if value is None:
        return "–"
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.1f} MiB"


def times(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def cache_cell(row: Row) -> str:
    if row.cache_memory_bytes is None:
        return "–"
    if row.cache_bound_bytes is not None:
        return f"{gib(row.cache_memory_bytes)} / {gib(row.cache_bound_bytes)}"
    return f"{gib(row.cache_memory_bytes)} ({row.cache_memory_kind})"


def markdown_table(section: SectionReport) -> list[str]:
    batch = f"batch {section.batch}" if section.batch else "batch –"
    lines = [
        f"### {section.model}, {section.dtype}, {section.resolution}², {section.steps} steps, {batch} "
        f"(paper: {section.paper_batch}{'; ' + section.batch_limit if section.batch_limit else ''})",
        "",
        *[f"- {note}" for note in section.notes],
        "",
        "| method | ms/image | speed-up | MAC ratio | wall/MAC | peak GPU mem | cache mem (measured / bound) "
        "| paper A6000 | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in section.rows:
        ms = "–" if row.ms_per_image is None else f"{row.ms_per_image:.1f}"
        efficiency = "–" if row.efficiency is None else f"{row.efficiency:.0%}"
        note = row.note if row.status == "ok" else f"**{row.status}**: {row.note}"
        lines.append(
            f"| {row.label} | {ms} | {times(row.speedup)} | {times(row.mac_ratio)} | {efficiency} "
            f"| {gib(row.peak_memory_bytes)} | {cache_cell(row)} | {times(row.paper_speedup)} "
            f"| {note.replace('|', '/')} |"
        )
    return [*lines, ""]


def markdown(report: Report) -> str:
    env = report.environment
    lines = [
        "## GPU benchmark (issue 7) — results",
        "",
        f"{env.get('gpu', env['device'])} · driver {env.get('driver', '–')} · CUDA {env.get('cuda')} · "
        f"torch {env['torch']} · diffusers {env['diffusers']} · cache-dit {env['cache_dit']} · "
        f"Python {env['python']}",
        "",
        "Random weights and text embeddings; VAE decode included; ms/image = median of the "
        "timed runs after one warm-up, ÷ batch. Speed-ups are against no cache in the same run (compiled "
        "rows: against no cache compiled the same way). MAC ratio: ECAD/FORA from the schedule (paper "
        "convention, ecad.md §5), other rows from the components that really ran. Cache memory: ECAD rows "
        "measured slot bytes / liveness bound; peers: peak-memory growth over no cache.",
        "",
    ]
    for section in report.sections:
        lines += markdown_table(section)
    return "\n".join(lines)


def write_outputs(out: Path, report: Report) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    (out / "gpu.md").write_text(markdown(report))


# --- running ----------------------------------------------------------------------------------------------


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
        stack.enter_context(apply_method(ctx, method))
        meter = SlotMeter(ctx.pipe.transformer) if method.schedule is not None else None
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
    row.repeats = repeats
    row.runs_ms_per_image = [t.total_ms / ctx.batch for t in timings]
    row.ms_per_image = statistics.median(row.runs_ms_per_image)
    row.decode_ms_per_image = statistics.median(t.decode_ms for t in timings) / ctx.batch
    row.peak_memory_bytes = peak_memory(ctx.device)
    if method.compiled:
        row.graphs_compiled = graphs_warm - graphs_before
        row.graphs_compiled_while_timed = graphs_compiled() - graphs_warm
    realized = None
    if counter:
        masks = [counter.mask(run) for run in counter.runs]
        realized = masks[-1]
        row.realized_consistent = all(torch.equal(mask, realized) for mask in masks)
        row.mac_ratio_realized = realized_ratio(ctx, realized)
    if meter is not None:
        record_schedule_costs(ctx, method, row, realized, meter.peak)


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
        row.realized_matches_plan = torch.equal(realized, executed_mask(build_plan(method.schedule)))


def predicted_s(ctx: Context, methods: list[Method], repeats: int) -> float:
    runs = sum((1 + repeats) * m.est_fraction * ctx.no_cache_run_s for m in methods if not m.unavailable)
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
    units = sum((1 + ctx.repeats) * m.est_fraction for m in methods if not m.unavailable)
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


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def gpu_driver() -> str:
    try:
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        return subprocess.run(query, capture_output=True, text=True, timeout=20, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as error:
        return f"unknown ({type(error).__name__})"


def environment(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": package_version("diffusers"),
        "cache_dit": package_version("cache-dit"),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {
            "gpu": props.name,
            "gpu_memory_bytes": props.total_memory,
            "multiprocessors": props.multi_processor_count,
            "driver": gpu_driver(),
        }
    return info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu.md and gpu.json")
    parser.add_argument("--quick", action="store_true", help="tiny models at 64²/128², every row, seconds")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--budget-s", type=float, help="time for all sections (default 420; quick 600)")
    parser.add_argument("--repeats", type=int, help="timed runs per row after one warm-up (default 3)")
    parser.add_argument("--batch", type=int, help="images per call in every section (default: auto)")
    parser.add_argument("--only", action="append", help="run only these sections, e.g. flux_256")
    parser.add_argument(
        "--compile-backend", help="torch.compile backend (default inductor; eager for --quick on CPU)"
    )
    args = parser.parse_args(argv)
    args.budget_s = args.budget_s or (600.0 if args.quick else 420.0)
    args.repeats = max(1, args.repeats or (MIN_REPEATS if args.quick else 3))
    # Inductor needs minutes of C++ compilation on a CPU; eager still exercises Dynamo's tracing.
    if args.compile_backend is None and args.quick and args.device == "cpu":
        args.compile_backend = "eager"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    sections = quick_sections() if args.quick else full_sections()
    if args.only:
        unknown = set(args.only) - {s.key for s in sections}
        if unknown:
            raise SystemExit(
                f"unknown section(s) {sorted(unknown)}; this mode has {[s.key for s in sections]}"
            )
        sections = [s for s in sections if s.key in args.only]
    report = Report(environment=environment(device), settings={k: str(v) for k, v in vars(args).items()})
    run = Run(args, device, report)
    print(json.dumps(report.environment, indent=2), flush=True)
    deadline = time.perf_counter() + args.budget_s
    for index, section in enumerate(sections):
        weights = [s.weight for s in sections[index:]]
        budget = max(0.0, deadline - time.perf_counter()) * section.weight / sum(weights)
        entry = SectionReport(
            key=section.key,
            model=f"{section.family.label}{' (tiny)' if section.tiny else ''}",
            family=section.family.key,
            resolution=section.resolution,
            dtype=str(section_dtype(section, device)).removeprefix("torch."),
            tiny=section.tiny,
            steps=section.steps,
            text_tokens=text_tokens(section),
            paper_batch=section.paper_batch,
        )
        report.sections.append(entry)
        print(f"== {section.key}: budget {budget:.0f} s", flush=True)
        run_section(run, section, entry, budget)
        print("\n".join(markdown_table(entry)), flush=True)
    run.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
