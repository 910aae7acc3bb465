"""The embedded model's parts, built offline from configs: word-level tokenizer, T5 text encoder, VAE and
PixArt transformer. Training (ecad.embedded.train) fills in the weights; the classes and the pipeline are
the ones PixArt-α uses, so the same adapter, hooks and loader serve it.
"""

from __future__ import annotations

import string

from diffusers import AutoencoderKL, PixArtTransformer2DModel
from transformers import T5EncoderModel, T5Tokenizer

from ecad.embedded.scenes import all_captions
from ecad.pipelines.t5 import character_pieces, t5_encoder, t5_tokenizer

TEXT_DIM = 128
LATENT_CHANNELS = 4
VAE_CHANNELS = (16, 32, 64)  # three blocks: 4x spatial downscale, 64² images ↔ 16² latents
LATENT_SIZE = 16
ATTENTION_HEAD_DIM = 32
MAX_CAPTION_TOKENS = 16  # the longest grammar caption has 11 words plus </s>

# Out-of-grammar prompts still tokenize, into characters, so every prompt gets an image. The PixArt
# pipeline lower-cases every prompt before tokenizing, so lower-case pieces are all it needs.
_CHARS = string.ascii_lowercase + string.digits + string.punctuation


def grammar_words() -> list[str]:
    return sorted({word for caption in all_captions() for word in caption.text.split()})


def build_tokenizer() -> T5Tokenizer:
    """T5 (Unigram) tokenizer whose pieces are the grammar's words, with characters as the fallback."""
    # A whole-word piece scores above any spelling of it in characters.
    words = [(f"▁{word}", -1.0) for word in grammar_words()]
    return t5_tokenizer([("▁", -4.0), *words, *character_pieces(_CHARS, word_initial=-3.0, inner=-3.5)])


def build_text_encoder(vocab_size: int) -> T5EncoderModel:
    return t5_encoder(vocab_size, TEXT_DIM, head_width=32, ff_width=256, position_buckets=16)


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=VAE_CHANNELS,
        down_block_types=("DownEncoderBlock2D",) * len(VAE_CHANNELS),
        up_block_types=("UpDecoderBlock2D",) * len(VAE_CHANNELS),
        latent_channels=LATENT_CHANNELS,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
    )


def build_transformer(layers: int = 8, width: int = 128) -> PixArtTransformer2DModel:
    """PixArt-α's block structure with heads of 32 channels; predicts the noise only (no learned variance)."""
    if width % ATTENTION_HEAD_DIM:
        raise ValueError(f"transformer width must be a multiple of {ATTENTION_HEAD_DIM}, got {width}")
    return PixArtTransformer2DModel(
        sample_size=LATENT_SIZE,
        num_layers=layers,
        num_attention_heads=width // ATTENTION_HEAD_DIM,
        attention_head_dim=ATTENTION_HEAD_DIM,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        patch_size=2,
        cross_attention_dim=width,  # the caption is projected to the transformer's width first
        caption_channels=TEXT_DIM,
        norm_type="ada_norm_single",
        use_additional_conditions=False,
    )
