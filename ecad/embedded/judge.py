"""The embedded model's reward: a small classifier that reads shape, colour, count, position and background
off an image, and a metric that asks whether the image shows what its caption says.

The judge is trained on rendered scenes of the training captions (with noise and blur so that generated
images are not out of its distribution) and is measured on scenes of the held-out captions.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional
from tqdm import tqdm

from ecad.embedded.scenes import (
    BACKGROUNDS,
    COLOURS,
    GRID,
    IMAGE_SIZE,
    POSITIONS,
    SHAPES,
    Caption,
    Scene,
    all_captions,
    held_out_captions,
    render,
    sample_scene,
    training_captions,
)
from ecad.files import write_json_atomic
from ecad.metrics.base import BatchedMetric, MissingWeightsError

WEIGHTS = "judge.safetensors"
COUNT_CLASSES = (1, 2, 3)
HEADS = {
    "shape": len(SHAPES),
    "colour": len(COLOURS),
    "count": len(COUNT_CLASSES),
    "background": len(BACKGROUNDS),
    "cell": GRID * GRID,  # where a single object sits
}


class SceneJudge(nn.Module):
    """A five-layer CNN over 64² images with one classification head per scene attribute."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = [3, width, width, 2 * width, 2 * width, 2 * width]
        for index, (cin, cout) in enumerate(itertools.pairwise(channels)):
            stride = 1 if index == 0 else 2
            layers += [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout), nn.GELU()]
        self.features = nn.Sequential(*layers, nn.Flatten())
        side = IMAGE_SIZE // 16
        self.trunk = nn.Sequential(nn.Linear(2 * width * side * side, 256), nn.GELU())
        self.heads = nn.ModuleDict({name: nn.Linear(256, classes) for name, classes in HEADS.items()})

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.trunk(self.features(pixels))
        return {name: head(hidden) for name, head in self.heads.items()}


def labels(scene: Scene) -> dict[str, int]:
    """What the judge should read off `scene`; the cell is -1 (ignored) for several objects."""
    caption = scene.caption
    row, column = scene.cells[0]
    return {
        "shape": SHAPES.index(caption.shape),
        "colour": list(COLOURS).index(caption.colour),
        "count": COUNT_CLASSES.index(caption.count),
        "background": list(BACKGROUNDS).index(scene.background),
        "cell": row * GRID + column if caption.count == 1 else -1,
    }


def asked(caption: Caption) -> dict[str, int]:
    """The attributes `caption` pins down, as class indices of the judge's heads."""
    wanted = {
        "shape": SHAPES.index(caption.shape),
        "colour": list(COLOURS).index(caption.colour),
        "count": COUNT_CLASSES.index(caption.count),
    }
    if caption.position is not None:
        row, column = POSITIONS[caption.position]
        wanted["cell"] = row * GRID + column
    if caption.background is not None:
        wanted["background"] = list(BACKGROUNDS).index(caption.background)
    return wanted


def to_pixels(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images → [-1, 1] tensor at the judge's size (generated images may be served larger)."""
    arrays = [
        np.asarray(image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR))
        for image in images
    ]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _augment(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Blur, colour gain and noise of the kind a small diffusion model's samples show."""
    n = len(pixels)
    blurred = functional.avg_pool2d(pixels, 3, stride=1, padding=1, count_include_pad=False)
    blend = torch.rand(n, 1, 1, 1, generator=generator)
    pixels = pixels + blend * (blurred - pixels)
    gain = 1 + 0.08 * (torch.rand(n, 3, 1, 1, generator=generator) - 0.5)
    sigma = 0.08 * torch.rand(n, 1, 1, 1, generator=generator)
    return (pixels * gain + sigma * torch.randn(pixels.shape, generator=generator)).clamp(-1, 1)


def _rendered(captions: list[Caption], count: int, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    rng = random.Random(seed)
    scenes = [sample_scene(rng.choice(captions), rng) for _ in range(count)]
    pixels = to_pixels([render(scene) for scene in scenes])
    table = [labels(scene) for scene in scenes]
    return pixels, {name: torch.tensor([row[name] for row in table]) for name in HEADS}


@dataclass
class JudgeTrainConfig:
    seed: int = 0
    images: int = 20_000
    steps: int = 800
    batch: int = 64
    lr: float = 2e-3
    test_images: int = 2_000


def train_judge(config: JudgeTrainConfig, out: Path) -> dict[str, float]:
    """Train on the training captions, measure on fresh scenes of the held-out ones, save to `out`."""
    torch.manual_seed(config.seed)
    began = time.monotonic()
    pixels, targets = _rendered(training_captions(), config.images, config.seed)
    model = SceneJudge()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.steps)
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    bar = tqdm(range(config.steps), desc="judge")
    for _ in bar:
        rows = torch.randint(len(pixels), (config.batch,), generator=generator)
        logits = model(_augment(pixels[rows], generator))
        loss = cast(
            torch.Tensor,
            sum(
                functional.cross_entropy(logits[name], targets[name][rows], ignore_index=-1) for name in HEADS
            ),
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    model.eval()
    report = evaluate_judge(model, held_out_captions(), config.test_images, seed=config.seed + 1)
    report["train_s"] = round(time.monotonic() - began, 1)
    out.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(out / WEIGHTS))
    write_json_atomic(out / "config.json", {"heads": HEADS, "train": asdict(config), "held_out": report})
    return report


def evaluate_judge(model: SceneJudge, captions: list[Caption], count: int, seed: int) -> dict[str, float]:
    """Accuracy per attribute and for whole captions, on real rendered scenes of `captions`."""
    rng = random.Random(seed)
    chosen = [rng.choice(captions) for _ in range(count)]
    scenes = [sample_scene(caption, rng) for caption in chosen]
    with torch.no_grad():
        logits = model(to_pixels([render(scene) for scene in scenes]))
    predicted = {name: value.argmax(dim=1) for name, value in logits.items()}
    report: dict[str, float] = {}
    for name in HEADS:
        truth = torch.tensor([labels(scene)[name] for scene in scenes])
        valid = truth >= 0
        report[f"{name}_accuracy"] = float((predicted[name][valid] == truth[valid]).float().mean())
    correct = [
        all(int(predicted[name][i]) == value for name, value in asked(caption).items())
        for i, caption in enumerate(chosen)
    ]
    report["caption_accuracy"] = float(np.mean(correct))
    return report


def load_judge(folder: Path) -> SceneJudge:
    path = folder / WEIGHTS
    if not path.is_file():
        raise MissingWeightsError(
            f"scene_match: no {WEIGHTS} in {folder}. It is committed under models/; "
            "retrain it with `python -m ecad.embedded.train judge`."
        )
    model = SceneJudge()
    model.load_state_dict(load_file(str(path)))
    return model.eval()


_CAPTIONS_BY_TEXT = {caption.text: caption for caption in all_captions()}


def parse_caption(text: str) -> Caption | None:
    """The grammar caption `text` says (case and a final period ignored), or None outside the grammar."""
    return _CAPTIONS_BY_TEXT.get(" ".join(text.strip().rstrip(".").lower().split()))


@dataclass
class SceneMatchConfig:
    """`judge_dir` holds judge.safetensors; `score` is the probability that every asked attribute holds,
    or 1/0 for whether the judge's best reading matches them all."""

    judge_dir: Path | str = Path(__file__).resolve().parents[2] / "models" / "ecad-shapes-judge"
    score: str = "probability"
    batch_size: int = 64


class SceneMatchMetric(BatchedMetric):
    """Does the image show what its caption says? Prompts must come from the embedded grammar."""

    def __init__(self, config: SceneMatchConfig) -> None:
        if config.score not in ("probability", "correct"):
            raise ValueError(f"scene_match: score must be 'probability' or 'correct', got {config.score!r}")
        self.config = config
        self.name = "scene_match" if config.score == "probability" else "scene_correct"
        self.batch_size = config.batch_size
        self.model = load_judge(Path(config.judge_dir))

    def score_batch(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[float]:
        wanted = [asked(self._caption(prompt)) for prompt in prompts]
        with torch.no_grad():
            logits = self.model(to_pixels(images))
        probabilities = {name: value.softmax(dim=1) for name, value in logits.items()}
        if self.config.score == "correct":
            return [
                float(all(int(probabilities[n][row].argmax()) == v for n, v in asks.items()))
                for row, asks in enumerate(wanted)
            ]
        return [
            float(np.prod([float(probabilities[n][row, v]) for n, v in asks.items()]))
            for row, asks in enumerate(wanted)
        ]

    def _caption(self, prompt: str) -> Caption:
        caption = parse_caption(prompt)
        if caption is None:
            raise ValueError(f"{self.name}: {prompt!r} is not a caption of the embedded model's grammar")
        return caption
