"""ImageReward-v1.0 (Xu et al. 2023) on transformers 5's BLIP vision and text models.

The upstream `image-reward` package does not import beside transformers 5, so this module rebuilds
its scorer from transformers parts: BLIP ViT → BERT with cross-attention to the image tokens → the
first token's hidden state → the MLP head → (r − mean) / std. Preprocessing, prompt handling and
normalisation follow upstream; `scripts/image_reward_equivalence.py` checks the scores against it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from transformers import BertTokenizer, BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

from ecad.dtypes import torch_dtype
from ecad.metrics.base import BatchedMetric, MissingWeightsError
from ecad.metrics.images import clip_pixels

HUB_REPO = "THUDM/ImageReward"
TOKENIZER_HUB_REPO = "google-bert/bert-base-uncased"
CHECKPOINT_FILE = "ImageReward.pt"
MED_CONFIG_FILE = "med_config.json"
VOCAB_FILE = "vocab.txt"

# Upstream's normalisation of the raw head output (ImageReward.py).
SCORE_MEAN = 0.16717362830052426
SCORE_STD = 1.0333394966054072
MAX_PROMPT_TOKENS = 35
HEAD_WIDTHS = (1024, 128, 64, 16)
HEAD_DROPOUTS = (0.2, 0.2, 0.1)

DOWNLOAD_HINT = (
    f"Download {CHECKPOINT_FILE} and {MED_CONFIG_FILE} from https://huggingface.co/{HUB_REPO} "
    f"and {VOCAB_FILE} from https://huggingface.co/{TOKENIZER_HUB_REPO}"
)

# Upstream checkpoint key → our key. Order matters only for readability; the patterns do not overlap.
_KEY_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^blip\.visual_encoder\.cls_token$", "vision.embeddings.class_embedding"),
        (r"^blip\.visual_encoder\.pos_embed$", "vision.embeddings.position_embedding"),
        (r"^blip\.visual_encoder\.patch_embed\.proj\.", "vision.embeddings.patch_embedding."),
        (r"^blip\.visual_encoder\.blocks\.(\d+)\.norm1\.", r"vision.encoder.layers.\1.layer_norm1."),
        (r"^blip\.visual_encoder\.blocks\.(\d+)\.norm2\.", r"vision.encoder.layers.\1.layer_norm2."),
        (r"^blip\.visual_encoder\.blocks\.(\d+)\.attn\.qkv\.", r"vision.encoder.layers.\1.self_attn.qkv."),
        (
            r"^blip\.visual_encoder\.blocks\.(\d+)\.attn\.proj\.",
            r"vision.encoder.layers.\1.self_attn.projection.",
        ),
        (r"^blip\.visual_encoder\.blocks\.(\d+)\.mlp\.", r"vision.encoder.layers.\1.mlp."),
        (r"^blip\.visual_encoder\.norm\.", "vision.post_layernorm."),
        (r"^blip\.text_encoder\.", "text."),
        (r"^mlp\.layers\.", "head."),
    )
)

# In the checkpoint but not part of the reward: BLIP's contrastive projections, and med.py's
# persistent copy of the position-id buffer (an arange, rebuilt by transformers).
IGNORED_KEYS = frozenset(
    {
        "blip.vision_proj.weight",
        "blip.vision_proj.bias",
        "blip.text_proj.weight",
        "blip.text_proj.bias",
        "blip.text_encoder.embeddings.position_ids",
    }
)


@dataclass(frozen=True)
class VisionArchitecture:
    """The BLIP ViT; the defaults are ViT-L/16 at 224 px, the one ImageReward-v1.0 was trained with."""

    image_size: int = 224
    patch_size: int = 16
    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    mlp_size: int = 4096


@dataclass
class ImageRewardConfig:
    """`weights_dir` holds ImageReward.pt, med_config.json and vocab.txt; None downloads from the hub."""

    weights_dir: Path | str | None = None
    hub_repo: str = HUB_REPO
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 8
    vision: VisionArchitecture = field(default_factory=VisionArchitecture)

    def __post_init__(self) -> None:
        # Config files and command lines give the architecture as a plain mapping.
        if isinstance(self.vision, Mapping):
            self.vision = VisionArchitecture(**self.vision)


def text_config_from_med(med: Mapping[str, object], encoder_width: int) -> BlipTextConfig:
    """BLIP's med_config.json (a BertConfig) as the BlipTextConfig of the same network."""
    if not med.get("add_cross_attention"):
        raise ValueError(f"{MED_CONFIG_FILE}: add_cross_attention must be true for ImageReward")
    if med.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{MED_CONFIG_FILE}: only absolute position embeddings are supported")
    return BlipTextConfig(
        vocab_size=med["vocab_size"],
        hidden_size=med["hidden_size"],
        num_hidden_layers=med["num_hidden_layers"],
        num_attention_heads=med["num_attention_heads"],
        intermediate_size=med["intermediate_size"],
        hidden_act=med["hidden_act"],
        hidden_dropout_prob=med["hidden_dropout_prob"],
        attention_probs_dropout_prob=med["attention_probs_dropout_prob"],
        max_position_embeddings=med["max_position_embeddings"],
        layer_norm_eps=med["layer_norm_eps"],
        pad_token_id=med["pad_token_id"],
        # BLIP overrides the file's encoder_width with the ViT width.
        encoder_hidden_size=encoder_width,
        # is_decoder=True is what makes transformers build the cross-attention modules; the forward
        # still runs bidirectionally (is_decoder=False there), as upstream's "multimodal" encoder mode.
        is_decoder=True,
        # The reward model never generates text; BlipTextConfig's default ids would point past
        # small vocabularies.
        bos_token_id=None,
        eos_token_id=None,
        sep_token_id=None,
    )


def _vision_config(vision: VisionArchitecture) -> BlipVisionConfig:
    return BlipVisionConfig(
        hidden_size=vision.hidden_size,
        intermediate_size=vision.mlp_size,
        num_hidden_layers=vision.num_layers,
        num_attention_heads=vision.num_heads,
        image_size=vision.image_size,
        patch_size=vision.patch_size,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
    )


def _head(input_size: int) -> nn.Sequential:
    # Dropouts are kept (inactive in eval) so module indices equal upstream's `mlp.layers.N` keys.
    widths = (input_size, *HEAD_WIDTHS)
    layers: list[nn.Module] = []
    for i in range(len(HEAD_WIDTHS)):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(HEAD_DROPOUTS):
            layers.append(nn.Dropout(HEAD_DROPOUTS[i]))
    layers.append(nn.Linear(HEAD_WIDTHS[-1], 1))
    return nn.Sequential(*layers)


class ImageRewardModel(nn.Module):
    """BLIP ViT + BERT with cross-attention + MLP head; forward returns normalised rewards [B]."""

    def __init__(self, vision: VisionArchitecture, text_config: BlipTextConfig) -> None:
        super().__init__()
        self.vision = BlipVisionModel(_vision_config(vision))
        self.text = BlipTextModel(text_config, add_pooling_layer=False)
        self.head = _head(text_config.hidden_size)

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        image_tokens = self.vision(pixel_values=pixel_values).last_hidden_state
        # Every image token is valid, so no encoder attention mask is needed.
        text = self.text(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_tokens,
            is_decoder=False,
        ).last_hidden_state
        features = text[:, 0, :].float()
        reward = self.head(features).squeeze(-1)
        return (reward - SCORE_MEAN) / SCORE_STD


def convert_upstream_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an upstream ImageReward.pt state dict to ours; unknown keys are an error, never dropped."""
    converted: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, tensor in state_dict.items():
        if key in IGNORED_KEYS:
            continue
        for pattern, replacement in _KEY_RULES:
            new_key, count = pattern.subn(replacement, key)
            if count:
                converted[new_key] = tensor
                break
        else:
            unexpected.append(key)
    if unexpected:
        raise ValueError(f"{CHECKPOINT_FILE}: unexpected keys {sorted(unexpected)}")
    return converted


def load_state_dict_strictly(model: ImageRewardModel, upstream: Mapping[str, torch.Tensor]) -> None:
    """Load an upstream checkpoint, comparing key sets first so a gap is named, then strict=True."""
    converted = convert_upstream_state_dict(upstream)
    expected = set(model.state_dict())
    missing = sorted(expected - set(converted))
    extra = sorted(set(converted) - expected)
    if missing or extra:
        raise ValueError(
            f"{CHECKPOINT_FILE}: keys differ from the model: missing {missing}, unexpected {extra}"
        )
    model.load_state_dict(converted, strict=True)


def build_tokenizer(vocab_file: Path) -> BertTokenizer:
    """bert-base-uncased's tokenizer plus BLIP's two special tokens ([DEC] = 30522, [ENC] = 30523)."""
    tokenizer = BertTokenizer(vocab=str(vocab_file))
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


def resolve_weight_files(config: ImageRewardConfig) -> tuple[Path, Path, Path]:
    """(checkpoint, med_config.json, vocab.txt): from weights_dir, or downloaded from the hub."""
    if config.weights_dir is not None:
        folder = Path(config.weights_dir).expanduser()
        files = (folder / CHECKPOINT_FILE, folder / MED_CONFIG_FILE, folder / VOCAB_FILE)
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise MissingWeightsError(
                f"image_reward: missing {', '.join(missing)} in {folder}. "
                f"{DOWNLOAD_HINT}, and put all three files in {folder}."
            )
        return files
    from huggingface_hub import hf_hub_download

    try:
        return (
            Path(hf_hub_download(config.hub_repo, CHECKPOINT_FILE)),
            Path(hf_hub_download(config.hub_repo, MED_CONFIG_FILE)),
            Path(hf_hub_download(TOKENIZER_HUB_REPO, VOCAB_FILE)),
        )
    except Exception as err:
        raise MissingWeightsError(
            f"image_reward: could not download from the hub ({type(err).__name__}: {err}). "
            f"{DOWNLOAD_HINT} into one folder and pass it as weights_dir."
        ) from err


def load_image_reward_model(
    checkpoint: Path, med_config: Path, vision: VisionArchitecture
) -> ImageRewardModel:
    """Build the network from med_config.json and load the upstream checkpoint strictly (eval mode)."""
    med = json.loads(med_config.read_text())
    model = ImageRewardModel(vision, text_config_from_med(med, encoder_width=vision.hidden_size))
    upstream = torch.load(checkpoint, map_location="cpu", weights_only=True)
    load_state_dict_strictly(model, upstream)
    return model.eval()


class ImageRewardMetric(BatchedMetric):
    """ImageReward-v1.0 score per (image, prompt); higher is better, roughly N(0, 1) over real images."""

    name = "image_reward"

    def __init__(self, config: ImageRewardConfig) -> None:
        self.config = config
        self.batch_size = config.batch_size
        checkpoint, med_config, vocab = resolve_weight_files(config)
        self.tokenizer = build_tokenizer(vocab)
        model = load_image_reward_model(checkpoint, med_config, config.vision)
        model.to(device=config.device, dtype=torch_dtype(config.dtype))
        # The head stays fp32 as in upstream, which casts the text features to float before it.
        model.head.float()
        self.model = model

    def score_batch(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[float]:
        pixels = clip_pixels(images, self.config.vision.image_size)
        tokens = self.tokenizer(
            list(prompts),
            padding="max_length",
            truncation=True,
            max_length=MAX_PROMPT_TOKENS,
            return_tensors="pt",
        )
        with torch.inference_mode():
            rewards = self.model(
                pixels.to(device=self.config.device, dtype=torch_dtype(self.config.dtype)),
                tokens.input_ids.to(self.config.device),
                tokens.attention_mask.to(self.config.device),
            )
        return rewards.float().cpu().tolist()
