"""ImageReward on a tiny random configuration, loaded from a checkpoint in upstream's key layout.

The full-size model is checked against the upstream package by scripts/image_reward_equivalence.py
(recorded in docs/metrics.md); here the same code path runs on a model small enough for CI, against
values committed below. The checkpoint is written key by key in upstream's naming, so a change in
our key mapping fails these tests.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ecad.metrics import MissingWeightsError, get_metric
from ecad.metrics.image_reward import ImageRewardConfig, ImageRewardMetric, VisionArchitecture
from ecad.metrics.images import center_crop, resize_short_side
from tests.helpers import noise_images

TINY_VISION = VisionArchitecture(
    image_size=32, patch_size=8, hidden_size=32, num_layers=2, num_heads=2, mlp_size=64
)
VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    *["a", "photo", "of", "cat", "dog", "red", "blue", "on", "the", "grass", ",", "."],
]
TINY_MED = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 40,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": len(VOCAB) + 2,  # + [DEC] and [ENC]
    "encoder_width": 768,  # BLIP overrides it with the ViT width; the file's value is not used
    "add_cross_attention": True,
}
PROMPTS = ["a photo of a cat", "a red dog on the grass", "blue", "a cat , a dog . " * 10]

# Scores of the four (image, prompt) cases below for the checkpoint made with seed 0.
EXPECTED = [-0.974396288394928, -0.17102575302124023, -1.1683310270309448, -0.6107619404792786]


def upstream_shapes(vision: VisionArchitecture, med: dict) -> dict[str, tuple[int, ...]]:
    """Every key of an upstream ImageReward.pt with its shape, as the upstream modules name them."""
    d, m, p = vision.hidden_size, vision.mlp_size, vision.patch_size
    tokens = (vision.image_size // p) ** 2 + 1
    shapes: dict[str, tuple[int, ...]] = {
        "blip.visual_encoder.cls_token": (1, 1, d),
        "blip.visual_encoder.pos_embed": (1, tokens, d),
        "blip.visual_encoder.patch_embed.proj.weight": (d, 3, p, p),
        "blip.visual_encoder.patch_embed.proj.bias": (d,),
    }
    for i in range(vision.num_layers):
        block = f"blip.visual_encoder.blocks.{i}"
        for name, shape in {
            "norm1": (d,),
            "attn.qkv": (3 * d, d),
            "attn.proj": (d, d),
            "norm2": (d,),
            "mlp.fc1": (m, d),
            "mlp.fc2": (d, m),
        }.items():
            shapes[f"{block}.{name}.weight"] = shape
            shapes[f"{block}.{name}.bias"] = (shape[0],)
    shapes["blip.visual_encoder.norm.weight"] = (d,)
    shapes["blip.visual_encoder.norm.bias"] = (d,)
    h, inner = med["hidden_size"], med["intermediate_size"]
    text = "blip.text_encoder"
    shapes[f"{text}.embeddings.word_embeddings.weight"] = (med["vocab_size"], h)
    shapes[f"{text}.embeddings.position_embeddings.weight"] = (med["max_position_embeddings"], h)
    shapes[f"{text}.embeddings.LayerNorm.weight"] = (h,)
    shapes[f"{text}.embeddings.LayerNorm.bias"] = (h,)
    for i in range(med["num_hidden_layers"]):
        layer = f"{text}.encoder.layer.{i}"
        linears = {
            "attention.self.query": (h, h),
            "attention.self.key": (h, h),
            "attention.self.value": (h, h),
            "attention.output.dense": (h, h),
            "attention.output.LayerNorm": (h,),
            "crossattention.self.query": (h, h),
            "crossattention.self.key": (h, d),
            "crossattention.self.value": (h, d),
            "crossattention.output.dense": (h, h),
            "crossattention.output.LayerNorm": (h,),
            "intermediate.dense": (inner, h),
            "output.dense": (h, inner),
            "output.LayerNorm": (h,),
        }
        for name, shape in linears.items():
            shapes[f"{layer}.{name}.weight"] = shape
            shapes[f"{layer}.{name}.bias"] = (shape[0],)
    for name, shape in {"blip.vision_proj": (256, d), "blip.text_proj": (256, h)}.items():
        shapes[f"{name}.weight"] = shape
        shapes[f"{name}.bias"] = (256,)
    for index, shape in {0: (1024, h), 2: (128, 1024), 4: (64, 128), 6: (16, 64), 7: (1, 16)}.items():
        shapes[f"mlp.layers.{index}.weight"] = shape
        shapes[f"mlp.layers.{index}.bias"] = (shape[0],)
    return shapes


def random_upstream_checkpoint(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape in upstream_shapes(TINY_VISION, TINY_MED).items():
        noise = torch.randn(shape, generator=generator)
        if "norm" in key.lower() and key.endswith(".weight"):
            state[key] = 1 + 0.1 * noise
        elif key.startswith("mlp.") and key.endswith(".weight"):
            # 1/sqrt(fan_in) keeps the head's output O(1), so the scores vary with the input.
            state[key] = noise / math.sqrt(shape[1])
        else:
            state[key] = 0.2 * noise
    state["blip.text_encoder.embeddings.position_ids"] = torch.arange(TINY_MED["max_position_embeddings"])[
        None
    ]
    return state


def write_weights(folder: Path, state: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "ImageReward.pt")
    (folder / "med_config.json").write_text(json.dumps(TINY_MED))
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return folder


def cases() -> list[Image.Image]:
    square, wide, transparent = noise_images((40, 40, 3), (30, 50, 3), (64, 48, 4))
    return [square, wide, Image.new("RGB", (32, 32), (250, 10, 10)), transparent]


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_weights(tmp_path_factory.mktemp("image_reward"), random_upstream_checkpoint(seed=0))


def test_tiny_model_matches_committed_scores(weights_dir: Path) -> None:
    metric = get_metric("image_reward", weights_dir=weights_dir, vision=TINY_VISION, batch_size=4)
    assert metric.score(cases(), PROMPTS) == pytest.approx(EXPECTED, abs=1e-5)


def test_vision_architecture_may_be_given_as_a_mapping() -> None:
    # As it comes from a YAML config or a command line.
    assert ImageRewardConfig(vision=dataclasses.asdict(TINY_VISION)).vision == TINY_VISION


def test_scores_do_not_depend_on_batching(weights_dir: Path) -> None:
    one = ImageRewardMetric(ImageRewardConfig(weights_dir=weights_dir, vision=TINY_VISION, batch_size=1))
    three = ImageRewardMetric(ImageRewardConfig(weights_dir=weights_dir, vision=TINY_VISION, batch_size=3))
    assert one.score(cases(), PROMPTS) == pytest.approx(three.score(cases(), PROMPTS), abs=1e-6)


def test_missing_files_name_what_to_download(tmp_path: Path) -> None:
    (tmp_path / "med_config.json").write_text(json.dumps(TINY_MED))
    with pytest.raises(MissingWeightsError) as error:
        get_metric("image_reward", weights_dir=tmp_path, vision=TINY_VISION)
    assert str(error.value) == (
        f"image_reward: missing ImageReward.pt, vocab.txt in {tmp_path}. Download ImageReward.pt and "
        "med_config.json from https://huggingface.co/THUDM/ImageReward and vocab.txt from "
        f"https://huggingface.co/google-bert/bert-base-uncased, and put all three files in {tmp_path}."
    )


def test_a_checkpoint_missing_a_key_is_refused(tmp_path: Path) -> None:
    state = random_upstream_checkpoint(seed=0)
    del state["blip.text_encoder.encoder.layer.1.crossattention.self.key.bias"]
    with pytest.raises(ValueError, match="missing") as error:
        get_metric("image_reward", weights_dir=write_weights(tmp_path, state), vision=TINY_VISION)
    assert str(error.value) == (
        "ImageReward.pt: keys differ from the model: "
        "missing ['text.encoder.layer.1.crossattention.self.key.bias'], unexpected []"
    )


def test_a_checkpoint_with_an_unknown_key_is_refused(tmp_path: Path) -> None:
    state = random_upstream_checkpoint(seed=0)
    state["blip.itm_head.weight"] = torch.zeros(2, 32)
    with pytest.raises(ValueError, match="unexpected") as error:
        get_metric("image_reward", weights_dir=write_weights(tmp_path, state), vision=TINY_VISION)
    assert str(error.value) == "ImageReward.pt: unexpected keys ['blip.itm_head.weight']"


@pytest.mark.parametrize(
    ("size", "resized"),
    [((300, 200), (336, 224)), ((200, 300), (224, 336)), ((224, 224), (224, 224)), ((150, 100), (336, 224))],
)
def test_resize_keeps_aspect_and_truncates_the_long_side(
    size: tuple[int, int], resized: tuple[int, int]
) -> None:
    assert resize_short_side(Image.new("RGB", size), 224).size == resized


@pytest.mark.parametrize(
    ("width", "first_column"),
    [
        (7, 2),  # 3 spare columns: round(1.5) = 2, where floor division would give 1
        (9, 2),  # 5 spare columns: round(2.5) = 2 (half to even), where rounding half up would give 3
    ],
)
def test_center_crop_offsets_round_like_torchvision(width: int, first_column: int) -> None:
    image = Image.fromarray(np.arange(width, dtype=np.uint8)[None, :].repeat(4, 0))
    assert np.asarray(center_crop(image, 4))[0].tolist() == list(range(first_column, first_column + 4))
