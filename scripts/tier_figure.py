"""The README's tier figure: one prompt at every tier of a served model, each with its latency.

    .venv/bin/python scripts/tier_figure.py --config config.yaml --prompt "a red circle at the top left"

Each tier's schedule comes from the model's registry exactly as the server loads it; latency is the
median wall time of `--repeats` single-image pipeline calls after one warm-up, on this machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from ecad.cache import CacheEngine
from ecad.models import architecture_of, get_adapter
from ecad.pipelines.loading import load_pipeline
from ecad.registry import load_registry
from ecad.tiers import Tier
from server.config import load_config
from server.imaging import fit_to

ORDER = tuple(Tier)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=Path("config.yaml"))
    parser.add_argument("--model", help="model id [the config's first]")
    parser.add_argument("--prompt", default="a red circle at the top left")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=256, help="shown (served) image side")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("docs/images/tiers.png"))
    args = parser.parse_args()

    config = load_config(args.config)
    model = next(m for m in config.models if args.model in (None, m.id))
    pipe = load_pipeline(model)
    registry = load_registry(
        config.registry_dir(model),
        model_id=model.id,
        family=model.family,
        steps=model.steps,
        architecture=architecture_of(pipe.transformer, model.family),
        rule=config.server.tier_rule,
    )
    width, height = model.native_size
    adapter = get_adapter(model.family)
    panels = []
    for tier in ORDER:
        chosen = registry.tiers[tier]
        engine = CacheEngine(pipe, chosen.schedule) if tier != Tier.EXACT else nullcontext()
        times, image = [], None
        for repeat in range(args.repeats + 1):
            started = time.perf_counter()
            with engine, torch.inference_mode():
                image = pipe(
                    args.prompt,
                    generator=torch.Generator().manual_seed(args.seed),
                    num_inference_steps=model.steps,
                    guidance_scale=model.guidance_scale,
                    height=height,
                    width=width,
                    **adapter.call_kwargs(),
                ).images[0]
            if repeat:
                times.append(time.perf_counter() - started)
        assert image is not None
        latency_ms = statistics.median(times) * 1000
        panels.append((tier, chosen, fit_to(image, args.size, args.size), latency_ms))
        print(f"{tier:9s} {chosen.name:28s} {chosen.macs_ratio:5.2f}x MACs  {latency_ms:7.1f} ms")

    figure, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.6))
    for axis, (tier, chosen, image, latency_ms) in zip(axes, panels, strict=True):
        axis.imshow(image)
        axis.set_axis_off()
        saving = "no cache" if tier == Tier.EXACT else f"{chosen.macs_ratio:.2f}× fewer MACs"
        axis.set_title(f"{tier}\n{latency_ms:.0f} ms · {saving}", fontsize=10)
    figure.suptitle(f'"{args.prompt}" — {model.id}, {model.steps} steps, seed {args.seed}, CPU', fontsize=11)
    figure.tight_layout(rect=(0, 0, 1, 0.92))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
