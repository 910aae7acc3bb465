"""Server overhead: HTTP end to end vs a direct engine call; throughput with batching on vs off.

    .venv/bin/python -m bench.server_overhead [--requests 20] [--clients 8] [--per-client 3]

Direct call = the same pipeline and schedule in this process, plus PNG + base64 encoding (work the
server must also do), so `overhead` is HTTP, JSON, queueing and process hops. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openai
import torch

from ecad.cache import CacheEngine
from ecad.config import ModelConfig
from ecad.pipelines.loading import load_pipeline
from ecad.registry import load_registry
from ecad.tiers import Tier
from harness.launcher import launch
from server.imaging import encode_b64

ROOT = Path(__file__).resolve().parent.parent
SIZE = 256
PROMPT = "a watercolor painting of a lighthouse at dawn"
MODEL = {
    "id": "ecad-tiny",
    "family": "pixart_alpha",
    "source": "random:tiny",
    "steps": 20,
    "default_size": f"{SIZE}x{SIZE}",
    "min_side": 64,
    "max_side": 512,
    "schedules": str(ROOT / "schedules" / "ecad-tiny"),
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class DirectCall:
    """The same pipeline and schedule in this process, plus the PNG + base64 encoding the server does."""

    def __init__(self) -> None:
        self.model = ModelConfig(**MODEL)
        self.pipe = load_pipeline(self.model)
        self.registry = load_registry(
            ROOT / "schedules" / "ecad-tiny",
            model_id=self.model.id,
            family=self.model.family,
            steps=self.model.steps,
        )

    def __call__(self, tier: str, seed: int) -> float:
        schedule = self.registry.for_tier(tier).schedule
        engine = nullcontext() if schedule.is_no_cache else CacheEngine(self.pipe, schedule)  # as the server
        started = time.perf_counter()
        with torch.inference_mode(), engine:
            image = self.pipe(
                prompt=[PROMPT],
                height=SIZE,
                width=SIZE,
                num_inference_steps=self.model.steps,
                guidance_scale=self.model.guidance_scale,
                generator=[torch.Generator().manual_seed(seed)],
                output_type="pil",
                **self.model.adapter.call_kwargs(),
            ).images[0]
        encode_b64(image, "png", None)
        return (time.perf_counter() - started) * 1000


def http_call(client: openai.OpenAI, tier: str, seed: int) -> float:
    started = time.perf_counter()
    client.images.generate(prompt=PROMPT, extra_body={"quality": tier, "seed": seed})
    return (time.perf_counter() - started) * 1000


def overhead_rows(client: openai.OpenAI, repeats: int) -> list[tuple[str, float, float, float]]:
    """HTTP and direct calls interleaved one by one, so machine load drifts hit both alike."""
    direct = DirectCall()
    rows = []
    for tier in (Tier.FAST, Tier.EXACT):
        http_call(client, tier, 0), direct(tier, 0)  # warm-up
        pairs = [(http_call(client, tier, seed), direct(tier, seed)) for seed in range(1, repeats + 1)]
        http, local = [h for h, _ in pairs], [d for _, d in pairs]
        rows.append((tier, statistics.median(local), statistics.median(http), percentile(http, 0.9)))
    return rows


def throughput(base_url: str, clients: int, per_client: int) -> tuple[float, float]:
    """Images per second and mean batch size with `clients` concurrent clients."""

    def run(client_index: int) -> list[int]:
        client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0, timeout=600)
        sizes = []
        for request in range(per_client):
            response = client.images.generate(
                prompt=PROMPT, extra_body={"quality": Tier.FAST, "seed": client_index * 100 + request}
            )
            sizes.append(response.model_extra["x_ecad"]["batch_images"])
        return sizes

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        batches = [size for sizes in pool.map(run, range(clients)) for size in sizes]
    elapsed = time.perf_counter() - started
    return len(batches) / elapsed, statistics.mean(batches)


def serve(folder: Path, **server: Any) -> Any:
    config = {"server": {"max_queue": 64, "deadline_s": 300, **server}, "models": [MODEL]}
    return launch(config, folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--per-client", type=int, default=3)
    args = parser.parse_args()

    print(f"# Server overhead ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)")
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads")
    print(f"model: ecad-tiny (random PixArt-α, 2 blocks), {SIZE}x{SIZE}, 20 steps, n=1, png\n")
    with tempfile.TemporaryDirectory() as tmp:
        server = serve(Path(tmp) / "on", batch_window_ms=0, max_batch_images=8)
        try:
            client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0, timeout=600)
            rows = overhead_rows(client, args.requests)
            batched = throughput(server.base_url, args.clients, args.per_client)
        finally:
            server.stop()
        server = serve(Path(tmp) / "off", batch_window_ms=0, max_batch_images=1)
        try:
            unbatched = throughput(server.base_url, args.clients, args.per_client)
        finally:
            server.stop()

    print("| tier | direct median ms | HTTP median ms | HTTP p90 ms | overhead ms | overhead % |")
    print("|---|---|---|---|---|---|")
    for tier, direct, http, p90 in rows:
        overhead = http - direct
        print(
            f"| {tier} | {direct:.1f} | {http:.1f} | {p90:.1f} | {overhead:.1f} | {overhead / direct:.1%} |"
        )
    print(f"\n{args.clients} concurrent clients × {args.per_client} requests (quality=fast):\n")
    print("| batching | images/s | mean images per pipeline call |")
    print("|---|---|---|")
    print(f"| on (≤ 8 images, no extra window) | {batched[0]:.2f} | {batched[1]:.2f} |")
    print(f"| off (1 image per call) | {unbatched[0]:.2f} | {unbatched[1]:.2f} |")


if __name__ == "__main__":
    main()
