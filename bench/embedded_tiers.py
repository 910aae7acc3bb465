"""Milliseconds per image of every tier of the embedded model, as the server generates them.

    .venv/bin/python -m bench.embedded_tiers [--config config.yaml] [--repeats 7] [--images 4]

The model, tiers and call arguments come from the config's first model (the embedded `ecad-shapes`
by default): one pipeline call of `--images` prompts per measurement, the engine applied around the
call as the server does. Tiers run round-robin, so machine noise hits all alike; medians are printed.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path

import torch

from ecad.cache import CacheEngine
from ecad.config import read_models
from ecad.models import architecture_of
from ecad.pipelines.loading import load_pipeline
from ecad.registry import load_registry
from ecad.tiers import Tier

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["a red circle", "two blue squares on a black background", "a green triangle at the top left"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "config.yaml")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--images", type=int, default=4, help="images per pipeline call")
    args = parser.parse_args()

    model = read_models(args.config)[0]
    pipe = load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    registry = load_registry(
        model.registry_dir(args.config.resolve().parent),
        model_id=model.id,
        family=model.family,
        steps=model.steps,
        architecture=architecture_of(pipe.transformer, model.family),
    )
    width, height = model.native_size
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.images)]

    def generate(tier: Tier) -> float:
        schedule = registry.for_tier(tier).schedule
        engine = nullcontext() if schedule.is_no_cache else CacheEngine(pipe, schedule)
        started = time.perf_counter()
        with torch.inference_mode(), engine:
            pipe(
                prompt=prompts,
                height=height,
                width=width,
                num_inference_steps=model.steps,
                guidance_scale=model.guidance_scale,
                generator=[torch.Generator().manual_seed(seed) for seed in range(len(prompts))],
                output_type="pil",
                **model.adapter.call_kwargs(),
            )
        return (time.perf_counter() - started) * 1000 / len(prompts)

    tiers = [Tier.EXACT, Tier.BEST, Tier.BALANCED, Tier.FAST]
    for tier in tiers:  # warm-up: first calls pay one-off allocations
        generate(tier)
    runs: dict[Tier, list[float]] = {tier: [] for tier in tiers}
    for _ in range(args.repeats):
        for tier in tiers:
            runs[tier].append(generate(tier))

    exact = statistics.median(runs[Tier.EXACT])
    print(
        f"{model.id}, {width}x{height}, {model.steps} steps, {args.images} images per call, "
        f"median of {args.repeats}; torch {torch.__version__}, {platform.machine()}, "
        f"{torch.get_num_threads()} threads, {datetime.now(UTC):%Y-%m-%d}"
    )
    print("| tier | schedule | MAC ratio | ms/image | speed-up | speed-up / MAC ratio |")
    print("|---|---|---|---|---|---|")
    for tier in tiers:
        served = registry.for_tier(tier)
        median = statistics.median(runs[tier])
        speedup = exact / median
        print(
            f"| {tier} | {served.name} | {served.macs_ratio:.2f}× | {median:.1f} | {speedup:.2f}× "
            f"| {speedup / served.macs_ratio:.0%} |"
        )


if __name__ == "__main__":
    main()
