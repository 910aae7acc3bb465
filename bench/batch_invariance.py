"""How far an image generated in a batch is from the same request generated alone.

The server batches compatible requests into one pipeline call, and image i of a request uses seed + i,
so the same seed gives the same noise alone or batched. The arithmetic is not the same, though: BLAS
and oneDNN pick kernels by the shapes they see (a batch of 3 rows is not one row three times) and by
the CPU, so the last bits of a float can differ, and a pixel can land one 8-bit level away. This
script measures that distance for the models the tests and `make serve` use, per tier, in 8-bit levels
of the PNG the server would send.

    python bench/batch_invariance.py [--seeds 8] [--batch 3]

Run it under other CPU code paths to see how kernels move the numbers, e.g.
`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python bench/...`.
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import numpy as np
import torch

from ecad.cache import CacheEngine
from ecad.config import ModelConfig
from ecad.models import architecture_of
from ecad.pipelines.loading import load_pipeline
from ecad.schedule import Schedule, fora, no_cache

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "two blue squares on a gray background"
MODELS = {
    # The test server's model (tests/server_configs.py) and the embedded default (config.yaml).
    "random:tiny 64x64": ModelConfig(id="ecad-tiny", family="pixart_alpha", source="random:tiny"),
    "ecad-shapes 64x64": ModelConfig(
        id="ecad-shapes", family="pixart_alpha", source=str(ROOT / "models" / "ecad-shapes")
    ),
}


def images(pipe: object, model: ModelConfig, seeds: list[int], steps: int) -> np.ndarray:
    """8-bit RGB images, one per seed, in one pipeline call (the server's call, without the server)."""
    adapter = model.adapter
    output = pipe(  # type: ignore[operator]
        prompt=[PROMPT] * len(seeds),
        negative_prompt=[""] * len(seeds),
        generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
        num_inference_steps=steps,
        guidance_scale=model.guidance_scale,
        height=64,
        width=64,
        output_type="pil",
        **adapter.call_kwargs(),
    )
    return np.stack([np.asarray(image, dtype=np.int16) for image in output.images])


def schedules(pipe: object, model: ModelConfig, steps: int) -> dict[str, Schedule]:
    architecture = architecture_of(pipe.transformer, model.family)  # type: ignore[attr-defined]
    return {
        "exact": no_cache(architecture, steps),
        "fora N=2": fora(architecture, steps, 2),
        "fora N=4": fora(architecture, steps, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=8, help="requests compared per row")
    parser.add_argument("--batch", type=int, default=3, help="images per batched call")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    flags = {k: v for k, v in os.environ.items() if k.startswith(("ATEN_CPU", "ONEDNN", "MKL_"))}
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, env {flags or '-'}")
    print("| model | tier | pairs differing | pixels differing | max levels |")
    print("| --- | --- | --- | --- | --- |")
    with torch.inference_mode():
        for label, model in MODELS.items():
            pipe = load_pipeline(model)
            for tier, schedule in schedules(pipe, model, args.steps).items():
                differing = pixels = worst = 0
                with CacheEngine(pipe, schedule):
                    for seed in range(1, args.seeds + 1):
                        alone = images(pipe, model, [seed], args.steps)[0]
                        neighbours = list(range(seed - 1, seed - 1 + args.batch))
                        batched = images(pipe, model, neighbours, args.steps)
                        gap = np.abs(batched[1] - alone)
                        differing += int(gap.any())
                        pixels += int((gap > 0).any(axis=-1).sum())
                        worst = max(worst, int(gap.max()))
                total = args.seeds * 64 * 64
                print(
                    f"| {label} | {tier} | {differing}/{args.seeds} | {pixels / total:.3%} | {worst} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
