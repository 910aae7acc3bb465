"""PixArt and FLUX pipelines assembled from parts, with the schedulers their published checkpoints ship.

For pipelines built in code (tiny test models, the embedded model, benchmarks) rather than loaded from a
folder. Kept apart from the adapters so that importing `ecad.models` does not import diffusers.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    PixArtAlphaPipeline,
    PixArtSigmaPipeline,
)


def pixart_scheduler() -> DPMSolverMultistepScheduler:
    """The scheduler config shipped with PixArt-XL-2 (α and Σ)."""
    return DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        prediction_type="epsilon",
        solver_order=2,
        algorithm_type="dpmsolver++",
        solver_type="midpoint",
        lower_order_final=True,
        use_karras_sigmas=False,
        timestep_spacing="linspace",
        steps_offset=0,
    )


def flux_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """FLUX.1-dev's scheduler config (resolution-dependent shift)."""
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )


def pixart_pipeline(
    transformer: torch.nn.Module,
    vae: AutoencoderKL,
    tokenizer: Any = None,
    text_encoder: torch.nn.Module | None = None,
    pipeline_class: type[PixArtAlphaPipeline] | type[PixArtSigmaPipeline] = PixArtAlphaPipeline,
) -> PixArtAlphaPipeline | PixArtSigmaPipeline:
    """A PixArt-α (or Σ) pipeline with PixArt's scheduler and no progress bar; without a text encoder it
    runs from prompt embeddings only."""
    pipe = pipeline_class(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=pixart_scheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flux_pipeline(
    transformer: torch.nn.Module,
    vae: AutoencoderKL,
    text_encoders: tuple[torch.nn.Module | None, torch.nn.Module | None] = (None, None),
    tokenizers: tuple[Any, Any] = (None, None),
) -> FluxPipeline:
    """A FLUX.1 pipeline with FLUX.1-dev's scheduler and no progress bar; the text encoders and tokenizers
    are (CLIP, T5), and without them it runs from prompt embeddings only."""
    pipe = FluxPipeline(
        scheduler=flux_scheduler(),
        vae=vae,
        text_encoder=text_encoders[0],
        tokenizer=tokenizers[0],
        text_encoder_2=text_encoders[1],
        tokenizer_2=tokenizers[1],
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
