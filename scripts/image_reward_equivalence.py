"""Check that ecad's ImageReward scorer gives upstream `image-reward` 1.5's scores (max |diff| ≤ 1e-4).

Run with the project venv:  .venv/bin/python scripts/image_reward_equivalence.py

1. Creates (once) a throwaway venv with upstream image-reward, pinned so it keeps CPU torch 2.13.0.
   It never touches the project venv: upstream needs torchvision, which breaks transformers here.
2. Writes a full-size med_config.json (BERT-base with cross-attention), a small home-made vocab.txt,
   ten fixed images (sizes, aspect ratios and modes that exercise resize, crop and RGB conversion)
   and prompts (one longer than the 35-token limit; one repeated with three different images).
3. In the throwaway venv, `image_reward_upstream.py` builds a random upstream model (446.7 M params),
   saves its checkpoint and scores every pair with `ImageReward.score`.
4. Here, ecad loads that checkpoint strictly and scores the same pairs in batches; prints both.

No network except PyPI (for step 1); no hub downloads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ecad.metrics.image_reward import ImageRewardConfig, ImageRewardMetric

SCRIPTS = Path(__file__).resolve().parent

# Versions from the project's environment notes: torch pinned first, torchvision pinned to the one
# wheel that exists, setuptools < 81 for openai-clip's pkg_resources.
TORCH_PIN = "torch==2.13.0"
CONSTRAINTS = "torch==2.13.0\ntorchvision==0.28.0\n"
UPSTREAM_PACKAGES = (
    "setuptools<81",
    "torchvision==0.28.0",
    "image-reward==1.5",
    "openai-clip",
    "transformers==5.24.0",
    "diffusers==0.42.1",
    "accelerate",
    "safetensors",
    "numpy",
    "pillow",
)

# BERT-base values of ImageReward's med_config.json (vocab 30522 + [DEC] + [ENC]).
MED_CONFIG = {
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "model_type": "bert",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": 30524,
    "encoder_width": 768,
    "add_cross_attention": True,
}

WORDS = " ".join(
    (
        "a an the of on in with and photo painting portrait cat dog red blue green city street night",
        "sunset mountain lake river forest castle robot astronaut horse riding oil detailed highly",
        "realistic style by , . ! art digital",
    )
).split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "##s", "##ing", "##ed"]

PROMPTS = (
    "a photo of a cat",
    "A red robot riding a horse on the street at night",
    "an oil painting of a castle by a lake, highly detailed",
    "portrait of an astronaut, digital art",
    "a blue dog",
    "sunset over the mountain and the river in the forest " * 4,  # > 35 tokens: truncated
    "cats and dogs",
    "zebra unicorn spaceship",  # words missing from the vocab: [UNK]
    # The first prompt again with other images: scores must move with the image alone.
    "a photo of a cat",
    "a photo of a cat",
)


def make_images(rng: np.random.Generator) -> list[Image.Image]:
    noise = rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
    ramp = np.linspace(0, 255, 320, dtype=np.float64)
    gradient = np.stack(
        [np.tile(ramp, (200, 1)), np.tile(ramp[::-1], (200, 1)), np.full((200, 320), 90.0)], 2
    )
    rgba = rng.integers(0, 256, size=(260, 300, 4), dtype=np.uint8)
    gray = rng.integers(0, 256, size=(200, 150), dtype=np.uint8)
    blocks = np.kron(rng.integers(0, 256, size=(8, 6, 3)), np.ones((64, 64, 1))).astype(np.uint8)
    return [
        Image.fromarray(noise),
        Image.fromarray(gradient.astype(np.uint8)),
        Image.new("RGB", (224, 224), (0, 0, 0)),
        Image.new("RGB", (512, 384), (255, 255, 255)),
        Image.fromarray(rgba, mode="RGBA"),
        Image.fromarray(gray, mode="L"),
        Image.fromarray(blocks),
        Image.fromarray(noise[:225, :301]),
        Image.new("RGB", (256, 256), (0, 0, 0)),
        Image.new("RGB", (256, 256), (255, 255, 255)),
    ]


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def ensure_upstream_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if python.is_file():
        probe = subprocess.run([python, "-c", "import importlib.metadata as m; m.version('image-reward')"])
        if probe.returncode == 0:
            return python
    print(f"creating the upstream venv at {venv} (PyPI only, about 1.5 min)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", venv], check=True)
    pip = [python, "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, TORCH_PIN], check=True)
    constraints = venv / "constraints.txt"
    constraints.write_text(CONSTRAINTS)
    subprocess.run([*pip, "-c", constraints, *UPSTREAM_PACKAGES], check=True)
    return python


def write_inputs(work: Path, seed: int) -> list[Image.Image]:
    (work / "med_config.json").write_text(json.dumps(MED_CONFIG, indent=2))
    (work / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    images = make_images(np.random.default_rng(seed))
    cases = []
    for i, (image, prompt) in enumerate(zip(images, PROMPTS, strict=True)):
        name = f"image_{i}.png"
        image.save(work / name)
        cases.append({"image": name, "prompt": prompt})
    (work / "cases.json").write_text(json.dumps(cases, indent=2))
    # Score what was saved, as upstream does: both sides read the same PNG files.
    loaded = []
    for case in cases:
        with Image.open(work / case["image"]) as image:
            image.load()
            loaded.append(image)
    return loaded


def main() -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--venv", type=Path, default=Path("/tmp/image-reward-venv"))
    parser.add_argument("--work-dir", type=Path, help="default: a new temporary folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=3, help="ecad side; upstream scores one at a time")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()

    python = ensure_upstream_venv(args.venv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="image-reward-equivalence-"))
    work.mkdir(parents=True, exist_ok=True)
    images = write_inputs(work, args.seed)

    started = time.perf_counter()
    upstream_script = SCRIPTS / "image_reward_upstream.py"
    subprocess.run([python, upstream_script, "--work-dir", work, "--seed", str(args.seed)], check=True)
    upstream_s = time.perf_counter() - started
    upstream = json.loads((work / "upstream_scores.json").read_text())["scores"]

    started = time.perf_counter()
    metric = ImageRewardMetric(ImageRewardConfig(weights_dir=work, batch_size=args.batch_size))
    ours = metric.score(images, list(PROMPTS))
    ours_s = time.perf_counter() - started

    checkpoint = torch.load(work / "ImageReward.pt", map_location="cpu", weights_only=True)
    params = sum(p.numel() for p in metric.model.parameters())
    diffs = [abs(a - b) for a, b in zip(upstream, ours, strict=True)]
    max_diff = max(diffs)
    print(f"date: {datetime.now(UTC).isoformat(timespec='seconds')}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {cpu_model()}, torch {torch.__version__}")
    print(f"checkpoint: {len(checkpoint)} upstream keys, loaded strictly into {params / 1e6:.1f} M params")
    print(f"upstream (incl. build): {upstream_s:.1f} s; ecad (incl. load): {ours_s:.1f} s")
    print(f"{'case':>4} {'upstream':>14} {'ecad':>14} {'abs diff':>10}  prompt")
    for i, (a, b, d) in enumerate(zip(upstream, ours, diffs, strict=True)):
        print(f"{i:>4} {a:>14.8f} {b:>14.8f} {d:>10.2e}  {PROMPTS[i][:40]!r}")
    print(f"score spread (upstream): {min(upstream):.6f} .. {max(upstream):.6f}")
    passed = max_diff <= args.tolerance
    print(f"max abs diff: {max_diff:.3e} (tolerance {args.tolerance:g}) -> {'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
