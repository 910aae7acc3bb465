"""Tiny random-weight diffusers pipelines built offline from configs, for tests.

The components mirror the real PixArt-α/Σ and FLUX.1-dev architectures (same classes, schedulers and
call paths) at a size that builds and runs in well under a second on CPU. Nothing touches the hub.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from diffusers import (
    AutoencoderKL,
    FluxPipeline,
    FluxTransformer2DModel,
    PixArtAlphaPipeline,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
)
from tokenizers import pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5Tokenizer

from ecad.models.pipelines import flux_pipeline, pixart_pipeline
from ecad.pipelines.t5 import character_pieces, t5_encoder, t5_tokenizer

__all__ = [
    "TINY_FLUX_TRANSFORMER",
    "TINY_PIXART_TRANSFORMER",
    "real_depth_call",
    "real_depth_pipeline",
    "tiny_flux_pipeline",
    "tiny_pixart_pipeline",
]

TEXT_DIM = 32  # T5 d_model == PixArt caption_channels == FLUX joint_attention_dim
CLIP_DIM = 32  # CLIP hidden size == FLUX pooled_projection_dim
LATENT_CHANNELS = 4
CLIP_MAX_LENGTH = 77

# The tiny transformers' configs: the real classes and block structure, two heads of 16 channels.
TINY_PIXART_TRANSFORMER: dict[str, Any] = {
    "sample_size": 16,
    "num_layers": 2,
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "in_channels": LATENT_CHANNELS,
    "out_channels": 2 * LATENT_CHANNELS,  # learned sigma: the pipeline keeps the first half
    "patch_size": 2,
    "cross_attention_dim": TEXT_DIM,
    "caption_channels": TEXT_DIM,
    "norm_type": "ada_norm_single",
    "use_additional_conditions": False,
}
TINY_FLUX_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 4 * LATENT_CHANNELS,  # latents are packed into 2x2 patches
    "num_layers": 2,
    "num_single_layers": 4,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": TEXT_DIM,
    "pooled_projection_dim": CLIP_DIM,
    "guidance_embeds": True,
    "axes_dims_rope": (4, 6, 6),  # must sum to attention_head_dim
}

# Characters every tiny tokenizer can spell; anything else maps to <unk>.
_CHARS = string.ascii_letters + string.digits + string.punctuation


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU RNG for the block without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _t5_tokenizer() -> T5Tokenizer:
    """Character-level Unigram T5 tokenizer: any English prompt yields several distinct ids."""
    return t5_tokenizer([("▁", -3.0), *character_pieces(_CHARS, word_initial=-2.0, inner=-2.5)])


def _t5_encoder(vocab_size: int) -> T5EncoderModel:
    return t5_encoder(vocab_size, TEXT_DIM, head_width=8, ff_width=64, position_buckets=8).eval()


def _clip_tokenizer() -> CLIPTokenizer:
    """Byte-level BPE with no merges: words split into characters, each with a "</w>" word-final form."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    # The whole byte-level alphabet, so no input falls back to <unk> (which is also the eos token).
    for c in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(f"{c}</w>", len(vocab))
    # FluxPipeline reads model_max_length for padding; without it the default is effectively infinite.
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_MAX_LENGTH)


def _clip_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=CLIP_DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CLIP_MAX_LENGTH,
        projection_dim=CLIP_DIM,
        # The pooled output is read at the first eos id, so these must match the tokenizer.
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config).eval()


def _vae(scaling_factor: float, shift_factor: float | None = None) -> AutoencoderKL:
    # Four blocks give the real 8x spatial downscale.
    return AutoencoderKL(
        block_out_channels=(16, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=LATENT_CHANNELS,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
    ).eval()


def tiny_pixart_pipeline(
    variant: Literal["alpha", "sigma"] = "alpha", num_layers: int = 2, seed: int = 0
) -> PixArtAlphaPipeline | PixArtSigmaPipeline:
    """Random-weight PixArt-α or PixArt-Σ pipeline (CPU, float32).

    Call it with ``use_resolution_binning=False`` and ``clean_caption=False``.
    """
    if variant not in ("alpha", "sigma"):
        raise ValueError(f"variant must be 'alpha' or 'sigma', got {variant!r}")
    # Σ's real transformer sets interpolation_scale explicitly; α derives it from sample_size.
    extra = {"interpolation_scale": 1} if variant == "sigma" else {}
    with _seeded(seed):
        config = {**TINY_PIXART_TRANSFORMER, "num_layers": num_layers, **extra}
        transformer = PixArtTransformer2DModel(**config).eval()
    tokenizer = _t5_tokenizer()
    with _seeded(seed + 1):
        text_encoder = _t5_encoder(len(tokenizer))
    with _seeded(seed + 2):
        # α ships the SD VAE, Σ the SDXL VAE; they differ only in scaling factor here.
        vae = _vae(scaling_factor=0.18215 if variant == "alpha" else 0.13025)
    cls = PixArtAlphaPipeline if variant == "alpha" else PixArtSigmaPipeline
    return pixart_pipeline(transformer, vae, tokenizer, text_encoder, pipeline_class=cls)


def tiny_flux_pipeline(num_layers: int = 2, num_single_layers: int = 4, seed: int = 0) -> FluxPipeline:
    """Random-weight FLUX.1-dev-style pipeline (CPU, float32). Height and width must be multiples of 16."""
    with _seeded(seed):
        config = {**TINY_FLUX_TRANSFORMER, "num_layers": num_layers, "num_single_layers": num_single_layers}
        transformer = FluxTransformer2DModel(**config).eval()
    tokenizer = _clip_tokenizer()
    tokenizer_2 = _t5_tokenizer()
    with _seeded(seed + 1):
        text_encoder = _clip_encoder(tokenizer)
    with _seeded(seed + 2):
        text_encoder_2 = _t5_encoder(len(tokenizer_2))
    with _seeded(seed + 3):
        # The FLUX VAE normalises latents with both a shift and a scale (values from FLUX.1-dev).
        vae = _vae(scaling_factor=0.3611, shift_factor=0.1159)
    return flux_pipeline(transformer, vae, (text_encoder, text_encoder_2), (tokenizer, tokenizer_2))


def real_depth_pipeline(family: str, seed: int = 0) -> Any:
    """A tiny-width pipeline with the real model's depth (PixArt 28 blocks; FLUX.1-dev 19 + 38).

    What a step launches depends on depth, not width: at this width a forward costs what it launches,
    as a GPU forward at small batch does.
    """
    if family == "flux":
        return tiny_flux_pipeline(num_layers=19, num_single_layers=38, seed=seed)
    if family not in ("pixart_alpha", "pixart_sigma"):
        raise ValueError(f"unknown family {family!r}")
    return tiny_pixart_pipeline("sigma" if family == "pixart_sigma" else "alpha", num_layers=28, seed=seed)


# PixArt renders at its transformer's sample size (16 latent pixels), where the patch embedding keeps its
# position table, as the real model does at its native resolution.
REAL_DEPTH_SIZES = {"pixart_alpha": 128, "pixart_sigma": 128, "flux": 64}


def real_depth_call(pipe: Any, family: str, steps: int, **kwargs: Any) -> Any:
    """One denoising run of a `real_depth_pipeline` to latents (no decode), 16 text tokens."""
    extra = {} if family == "flux" else {"use_resolution_binning": False, "clean_caption": False}
    size = REAL_DEPTH_SIZES[family]
    return pipe(
        prompt=["a red circle"],
        num_inference_steps=steps,
        height=size,
        width=size,
        max_sequence_length=16,
        output_type="latent",
        **extra,
        **kwargs,
    ).images
