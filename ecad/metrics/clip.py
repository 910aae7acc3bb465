"""CLIP score: 100 · max(cos(image embedding, prompt embedding), 0), as clip_score and torchmetrics define it.

The paper reports it with ViT-B/32 (`openai/clip-vit-base-patch32`). Images are preprocessed the way
OpenAI's CLIP does (bicubic short-side resize, center crop, CLIP mean/std); prompts are truncated to the
text model's position limit (77 tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from transformers import CLIPModel, CLIPTokenizer

from ecad.dtypes import torch_dtype
from ecad.metrics.base import BatchedMetric, MissingWeightsError
from ecad.metrics.images import CLIP_MEAN, CLIP_STD, clip_pixels

DEFAULT_HUB_REPO = "openai/clip-vit-base-patch32"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# A fast tokenizer file, or the slow vocab + merges pair; the hub repo has both.
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))
HUB_FILES = "config.json, model.safetensors, tokenizer.json, tokenizer_config.json, special_tokens_map.json"


@dataclass
class ClipConfig:
    """`model_dir` is a save_pretrained folder (model and tokenizer); None downloads `hub_repo`."""

    model_dir: Path | str | None = None
    hub_repo: str = DEFAULT_HUB_REPO
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 32
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD


def _check_model_dir(folder: Path) -> None:
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        missing.append(" or ".join(WEIGHT_FILES))
    if not any(all((folder / name).is_file() for name in group) for group in TOKENIZER_FILES):
        missing.append("tokenizer.json or vocab.json + merges.txt")
    if missing:
        raise MissingWeightsError(
            f"clip: missing {', '.join(missing)} in {folder}. Download {HUB_FILES} "
            f"from https://huggingface.co/{DEFAULT_HUB_REPO} into {folder}."
        )


def load_clip(config: ClipConfig) -> tuple[CLIPModel, CLIPTokenizer]:
    """The model (eval mode, on the config's device and dtype) and its tokenizer."""
    if config.model_dir is not None:
        source = str(Path(config.model_dir).expanduser())
        _check_model_dir(Path(source))
        model = CLIPModel.from_pretrained(source, local_files_only=True)
        tokenizer = CLIPTokenizer.from_pretrained(source, local_files_only=True)
    else:
        try:
            model = CLIPModel.from_pretrained(config.hub_repo)
            tokenizer = CLIPTokenizer.from_pretrained(config.hub_repo)
        except OSError as err:
            raise MissingWeightsError(
                f"clip: could not load {config.hub_repo} from the hub ({err}). Without network, download "
                f"{HUB_FILES} from https://huggingface.co/{config.hub_repo} into one folder and pass it "
                f"as model_dir."
            ) from err
    model.to(device=config.device, dtype=torch_dtype(config.dtype))
    return model.eval(), tokenizer


class ClipScoreMetric(BatchedMetric):
    """CLIP score per (image, prompt) in 0..100; higher is better."""

    name = "clip"

    def __init__(self, config: ClipConfig) -> None:
        self.config = config
        self.batch_size = config.batch_size
        self.model, self.tokenizer = load_clip(config)

    def score_batch(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[float]:
        image_size = self.model.config.vision_config.image_size
        pixels = clip_pixels(images, image_size, self.config.mean, self.config.std)
        tokens = self.tokenizer(
            list(prompts),
            padding=True,
            truncation=True,
            max_length=self.model.config.text_config.max_position_embeddings,
            return_tensors="pt",
        ).to(self.config.device)
        with torch.inference_mode():
            image_emb = self.model.get_image_features(
                pixel_values=pixels.to(device=self.config.device, dtype=torch_dtype(self.config.dtype))
            ).pooler_output
            text_emb = self.model.get_text_features(**tokens).pooler_output
        cosine = torch.nn.functional.cosine_similarity(image_emb.float(), text_emb.float(), dim=-1)
        return (100.0 * cosine.clamp(min=0)).cpu().tolist()
