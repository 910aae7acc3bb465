"""The embedded model's parts, built offline from configs: word-level tokenizer, T5 text encoder, VAE and
PixArt transformer. Training (ecad.embedded.train) fills in the weights; the classes and the pipeline are
the ones PixArt-α uses, so the same adapter, hooks and loader serve it.
"""

from __future__ import annotations

import string

from diffusers import AutoencoderKL, PixArtTransformer2DModel
from transformers import T5Config, T5EncoderModel, T5Tokenizer

from ecad.embedded.scenes import all_captions

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
    # T5 layout: <pad>=0, </s>=1, <unk>=2. A whole-word piece scores above any spelling of it in characters.
    vocab: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -4.0)]
    vocab += [(f"▁{word}", -1.0) for word in grammar_words()]
    vocab += [(f"▁{c}", -3.0) for c in _CHARS]
    vocab += [(c, -3.5) for c in _CHARS]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def build_text_encoder(vocab_size: int) -> T5EncoderModel:
    config = T5Config(
        vocab_size=vocab_size,
        d_model=TEXT_DIM,
        d_kv=32,
        d_ff=256,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=32,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config)


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
