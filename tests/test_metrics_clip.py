"""CLIP score on a tiny random CLIP, checked against transformers' own processor and model outputs."""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from ecad.metrics import MissingWeightsError, get_metric
from ecad.metrics.clip import ClipConfig, ClipScoreMetric
from tests.helpers import noise_images

PROMPTS = ["a cat", "two red dogs on the grass", "x", "a very long prompt " * 12]


def tiny_tokenizer() -> CLIPTokenizer:
    # Characters and their end-of-word forms, no merges: every word splits into letters.
    chars = list(string.ascii_lowercase + string.digits + "!,.'-")
    vocab = {token: i for i, token in enumerate(chars + [c + "</w>" for c in chars])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clip")
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def images() -> list[Image.Image]:
    # Square, or with an even crop margin, where OpenAI's and transformers' center crops agree.
    return [*noise_images((32, 32, 3), (48, 40, 3), (64, 64, 3)), Image.new("RGB", (40, 40), (0, 128, 255))]


def transformers_cosines(model_dir: Path) -> list[float]:
    """The cosine computed the torchmetrics way: transformers' processor, tokenizer and model."""
    model = CLIPModel.from_pretrained(model_dir).eval()
    tokenizer = CLIPTokenizer.from_pretrained(model_dir)
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pixels = torch.as_tensor(np.array(processor(images=images(), return_tensors="np")["pixel_values"]))
    tokens = tokenizer(PROMPTS, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.inference_mode():
        image_emb = model.get_image_features(pixel_values=pixels).pooler_output
        text_emb = model.get_text_features(**tokens).pooler_output
    image_emb = image_emb / image_emb.norm(dim=-1, keepdim=True)
    text_emb = text_emb / text_emb.norm(dim=-1, keepdim=True)
    return (image_emb * text_emb).sum(-1).tolist()


def test_scores_are_100_times_the_clamped_cosine(model_dir: Path) -> None:
    cosines = transformers_cosines(model_dir)
    scores = get_metric("clip", model_dir=model_dir).score(images(), PROMPTS)
    assert scores == pytest.approx([100 * max(c, 0.0) for c in cosines], abs=1e-4)


def test_negative_cosines_score_zero(model_dir: Path) -> None:
    # Flipping the text projection negates every cosine: each case is zero on exactly one side.
    metric = ClipScoreMetric(ClipConfig(model_dir=model_dir))
    before = metric.score(images(), PROMPTS)
    with torch.no_grad():
        metric.model.text_projection.weight.neg_()
    after = metric.score(images(), PROMPTS)
    cosines = transformers_cosines(model_dir)
    for b, a, cosine in zip(before, after, cosines, strict=True):
        assert min(a, b) == 0.0
        assert max(a, b) == pytest.approx(100 * abs(cosine), abs=1e-4)


def test_scores_do_not_depend_on_batching(model_dir: Path) -> None:
    # Batches pad prompts to different lengths; the attention mask must make that irrelevant.
    one = ClipScoreMetric(ClipConfig(model_dir=model_dir, batch_size=1)).score(images(), PROMPTS)
    four = ClipScoreMetric(ClipConfig(model_dir=model_dir, batch_size=4)).score(images(), PROMPTS)
    assert one == pytest.approx(four, abs=1e-4)


def test_missing_files_say_what_to_download(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(MissingWeightsError) as error:
        get_metric("clip", model_dir=tmp_path)
    assert str(error.value) == (
        f"clip: missing model.safetensors or pytorch_model.bin, tokenizer.json or vocab.json + merges.txt "
        f"in {tmp_path}. Download config.json, model.safetensors, tokenizer.json, tokenizer_config.json, "
        f"special_tokens_map.json from https://huggingface.co/openai/clip-vit-base-patch32 into {tmp_path}."
    )
