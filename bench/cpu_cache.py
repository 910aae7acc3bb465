"""Cache engine speed on CPU: real-size PixArt-α transformer (random weights), 20-step denoising.

Runs every schedule round-robin (so machine noise hits all alike), reports the median wall time,
speed-up against the hook-free transformer, the MAC ratio and the measured cache memory.

    python bench/cpu_cache.py [--repeats 3] [--steps 20] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
from diffusers import PixArtTransformer2DModel

from ecad.cache import CacheEngine
from ecad.costs import schedule_cost
from ecad.dtypes import torch_dtype
from ecad.models import architecture_of
from ecad.models.pipelines import pixart_scheduler
from ecad.models.pixart import PIXART_XL_2
from ecad.schedule import Schedule, fora, load_schedule, no_cache

PAPER = (
    Path(__file__).resolve().parents[1]
    / "schedules"
    / "published"
    / "schedules_in_paper"
    / "pixart_alpha_256"
)


def build_transformer(dtype: torch.dtype) -> PixArtTransformer2DModel:
    torch.manual_seed(0)
    model = PixArtTransformer2DModel(**PIXART_XL_2, sample_size=32, use_additional_conditions=False)
    return model.to(dtype).eval()


def denoise(
    model: PixArtTransformer2DModel, steps: int, text: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """The pipeline's loop without text encoder and VAE: CFG batch of 2, DPM-Solver++ updates."""
    scheduler = pixart_scheduler()
    scheduler.set_timesteps(steps)
    latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0)).to(dtype)
    with torch.no_grad():
        for t in scheduler.timesteps:
            model_input = torch.cat([latents] * 2)
            out = model(model_input, encoder_hidden_states=text, timestep=t.expand(2), return_dict=False)[0]
            uncond, cond = out[:, :4].chunk(2)
            latents = scheduler.step(uncond + 4.5 * (cond - uncond), t, latents).prev_sample
    return latents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--threads", type=int, help="torch threads (1 leaves a core to background noise)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch_dtype(args.dtype)

    model = build_transformer(dtype)
    arch = architecture_of(model, "pixart_alpha")
    text = torch.randn(2, 120, 4096, generator=torch.Generator().manual_seed(1)).to(dtype)
    rows: dict[str, Schedule | None] = {
        "stock (no hooks)": None,
        "no cache (hooks)": no_cache(arch, args.steps),
    }
    if args.steps == 20:
        for name in ("ours_fast", "ours_faster", "ours_fastest"):
            rows[name] = load_schedule(PAPER / f"{name}.json")
    rows["FORA N=3"] = fora(arch, args.steps, 3)

    denoise(model, 2, text, dtype)  # warm-up: first bf16 calls pay one-off kernel set-up
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(args.repeats):
        for name, schedule in rows.items():
            start = time.perf_counter()
            if schedule is None:
                denoise(model, args.steps, text, dtype)
            else:
                with CacheEngine(model, schedule):
                    denoise(model, args.steps, text, dtype)
            times[name].append(time.perf_counter() - start)

    stock = statistics.median(times["stock (no hooks)"])
    print(
        f"PixArt-α XL-2 transformer, random weights, {args.dtype}, 256², batch 2 (CFG), 120 text tokens, "
        f"{args.steps} steps, median of {args.repeats}; torch {torch.__version__}, "
        f"{platform.machine()}, {torch.get_num_threads()} threads"
    )
    best_stock = min(times["stock (no hooks)"])
    print(
        "| schedule | median s | runs (s) | speed-up (medians) | speed-up (minima) | MAC ratio "
        "| speed-up / MAC ratio (medians) | peak cache MiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, schedule in rows.items():
        median = statistics.median(times[name])
        speedup = stock / median
        if schedule is None:
            macs, cache = 1.0, 0.0
        else:
            cost = schedule_cost(schedule, text_tokens=120, bytes_per_element=dtype.itemsize)
            macs, cache = cost.macs_ratio, cost.cache_peak_bytes / 2**20
        runs = ", ".join(f"{t:.2f}" for t in times[name])
        ratio = f"{speedup / macs:.0%}"
        by_minima = best_stock / min(times[name])
        print(
            f"| {name} | {median:.2f} | {runs} | {speedup:.2f}× | {by_minima:.2f}× | {macs:.2f}× | {ratio} "
            f"| {cache:.1f} |"
        )


if __name__ == "__main__":
    main()
