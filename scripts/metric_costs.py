"""Per-image cost of each metric at full model size (random weights), on the current device.

    .venv/bin/python scripts/image_reward_equivalence.py --work-dir /tmp/ir   # makes a full-size checkpoint
    .venv/bin/python scripts/metric_costs.py --image-reward-dir /tmp/ir

Random weights cost the same as real ones. Each figure is taken over `--repeats` timed calls on a
batch of `--batch` images after one warm-up call, divided by the batch size: the median and the
minimum wall time, and the median CPU time of the process over all threads. Timings on a shared
machine vary by 2x or more; the minimum is the least disturbed by other jobs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import string
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from ecad.metrics import get_metric
from ecad.metrics.fid import FidStatistics, frechet_distance
from ecad.metrics.inception import FEATURE_DIM, FidInceptionV3


def timings(call: Callable[[], object], repeats: int) -> tuple[float, float, float]:
    """Median and minimum wall seconds, and median process CPU seconds (all threads), after a warm-up."""
    call()
    wall, cpu = [], []
    for _ in range(repeats):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        call()
        wall.append(time.perf_counter() - wall_start)
        cpu.append(time.process_time() - cpu_start)
    return statistics.median(wall), min(wall), statistics.median(cpu)


def report(name: str, seconds: tuple[float, float, float], per: int, unit: str = "image") -> None:
    median, minimum, cpu = (value / per * 1e3 for value in seconds)
    print(f"| {name} | {median:.1f} | {minimum:.1f} | {cpu:.1f} | {unit} |")


def clip_b32_dir(folder: Path) -> Path:
    """CLIPConfig's defaults are ViT-B/32's sizes; a character tokenizer stands in for the BPE one."""
    chars = list(string.ascii_lowercase + string.digits + "!,.'-")
    vocab = {token: i for i, token in enumerate(chars + [c + "</w>" for c in chars])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    CLIPModel(CLIPConfig()).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def inception_weights(path: Path) -> Path:
    state = {k: v for k, v in FidInceptionV3().state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, path)
    return path


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--image-reward-dir", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--size", type=int, default=256, help="generated image size (the paper: 256)")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    shape = (args.size, args.size, 3)
    images = [Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8)) for _ in range(args.batch)]
    references = [
        Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8)) for _ in range(args.batch)
    ]
    prompts = ["a photo of an astronaut riding a horse on the moon"] * args.batch
    work = Path(tempfile.mkdtemp(prefix="metric-costs-"))
    torch.manual_seed(0)

    common = {"device": args.device, "batch_size": args.batch}
    metrics = {
        "image_reward": get_metric("image_reward", weights_dir=args.image_reward_dir, **common),
        "clip (ViT-B/32)": get_metric("clip", model_dir=clip_b32_dir(work / "clip"), **common),
        "psnr": get_metric("psnr"),
        "ssim": get_metric("ssim"),
    }
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
        f"{args.size}² images, batch {args.batch}, {args.repeats} repeats, load {os.getloadavg()[0]:.1f}"
    )
    print("| metric | median ms | min ms | CPU ms | per |")
    print("|---|---|---|---|---|")
    for name, metric in metrics.items():
        report(
            name,
            timings(lambda m=metric: m.score(images, prompts, references), args.repeats),
            args.batch,
        )

    stats = FidStatistics.from_features(rng.normal(size=(4 * FEATURE_DIM, FEATURE_DIM)))
    stats.save(work / "ref.npz")
    fid = get_metric(
        "fid",
        inception_weights=inception_weights(work / "inception.pth"),
        reference=work / "ref.npz",
        **common,
    )
    report("fid features", timings(lambda: fid.features(images), args.repeats), args.batch)
    distance = timings(lambda: frechet_distance(stats, fid.reference), args.repeats)
    report("fid distance", distance, 1, unit="call (2048-d, any image count)")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
