"""What the GPU benchmark runs: model families, sections (family × resolution), the random-weight
pipelines and the generation call timed for every row."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, FluxTransformer2DModel, PixArtTransformer2DModel

from ecad.models.flux import FLUX_1_DEV
from ecad.models.pipelines import flux_pipeline, pixart_pipeline
from ecad.models.pixart import PIXART_XL_2
from ecad.pipelines.tiny import TINY_FLUX_TRANSFORMER, TINY_PIXART_TRANSFORMER


@dataclass(frozen=True)
class Family:
    key: str  # the ECAD family name
    label: str
    dtype: torch.dtype
    schedules: tuple[str, ...]
    schedule_dir: str
    rows_per_image: int  # transformer batch rows per image: PixArt runs CFG as one batch of 2
    compile_estimate_s: float  # first compile of the components, until a section has measured it


PIXART = Family(
    "pixart_alpha",
    "PixArt-α XL-2 (28 × 1152)",
    torch.float16,
    ("ours_fast", "ours_faster", "ours_fastest"),
    "pixart_alpha_256",
    2,
    45.0,
)


FLUX = Family(
    "flux", "FLUX.1-dev (19 + 38 × 3072)", torch.bfloat16, ("ours_fast", "ours_faster"), "flux_256", 1, 90.0
)


# The paper's A6000 speed-ups for the same rows (ecad.md §7); FLUX at 1024² ran the 256²-searched schedule.
PAPER_SPEEDUPS: dict[tuple[str, int], dict[str, float]] = {
    ("pixart_alpha", 256): {
        "ecad:ours_fast": 1.97,
        "ecad:ours_faster": 2.40,
        "ecad:ours_fastest": 2.58,
        "fora_3": 2.01,
    },
    ("flux", 256): {"ecad:ours_fast": 2.58, "ecad:ours_faster": 3.37, "fora_3": 2.44},
    ("flux", 1024): {"ecad:ours_fast": 2.63, "fora_3": 2.40},
}


@dataclass(frozen=True)
class Section:
    family: Family
    resolution: int
    paper_batch: int  # the batch the paper timed this setting at (ecad.md §6)
    probe_batch: int
    weight: float  # share of the time budget
    tiny: bool
    steps: int  # the published schedules' 20; the tiny CPU run cuts them short to stay fast

    @property
    def key(self) -> str:
        return f"{self.family.key}_{self.resolution}"


def full_sections() -> list[Section]:
    return [
        Section(PIXART, 256, 100, 8, 0.20, False, 20),
        Section(FLUX, 256, 18, 1, 0.25, False, 20),
        Section(PIXART, 1024, 20, 1, 0.20, False, 20),
        Section(FLUX, 1024, 3, 1, 0.35, False, 20),
    ]


def quick_sections() -> list[Section]:
    return [
        Section(family, resolution, 2, 2, 0.25, True, 8)
        for resolution in (64, 128)
        for family in (PIXART, FLUX)
    ]


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def section_dtype(section: Section, device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "cpu" else section.family.dtype  # CPUs lack fast fp16 kernels


def text_tokens(section: Section) -> int:
    if section.family is PIXART:
        return 8 if section.tiny else 120
    return 16 if section.tiny else 512


def transformer_for(section: Section) -> torch.nn.Module:
    if section.family is PIXART:
        config = {**TINY_PIXART_TRANSFORMER, "num_layers": 3} if section.tiny else PIXART_XL_2
        # Conditioning left to diffusers, which adds the 1024-MS checkpoint's resolution input at 1024².
        return PixArtTransformer2DModel(
            **{**config, "sample_size": section.resolution // 8, "use_additional_conditions": None}
        )
    # The tiny FLUX reads the 16 latent channels of vae_for's FLUX VAE, packed 2×2.
    tiny_flux = {**TINY_FLUX_TRANSFORMER, "num_single_layers": 2, "in_channels": 64}
    return FluxTransformer2DModel(**(tiny_flux if section.tiny else FLUX_1_DEV))


def vae_for(section: Section) -> AutoencoderKL:
    """The SD VAE (PixArt) or the FLUX VAE; both decode ×8, both decode time counts in the paper."""
    shape = (
        {"block_out_channels": (16, 16, 32, 32), "layers_per_block": 1, "norm_num_groups": 8}
        if section.tiny
        else {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "norm_num_groups": 32}
    )
    family = (
        {"latent_channels": 4, "scaling_factor": 0.18215}
        if section.family is PIXART
        else {
            "latent_channels": 16,
            "scaling_factor": 0.3611,
            "shift_factor": 0.1159,
            "use_quant_conv": False,
            "use_post_quant_conv": False,
        }
    )
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=section.resolution,
        **shape,
        **family,
    )


def build_pipeline(section: Section, device: torch.device, dtype: torch.dtype) -> DiffusionPipeline:
    """Random weights created directly on the device in the target dtype: FLUX in fp32 would not fit."""
    torch.manual_seed(0)
    with torch.device(device), default_dtype(dtype):
        transformer = transformer_for(section)
        vae = vae_for(section)
    transformer = transformer.to(device=device, dtype=dtype).eval()
    vae = vae.to(device=device, dtype=dtype).eval()
    if section.family is PIXART:
        return pixart_pipeline(transformer, vae)
    return flux_pipeline(transformer, vae)


def generation_call(
    section: Section, pipe: DiffusionPipeline, batch: int, device: torch.device, dtype: torch.dtype
) -> Callable[[int], None]:
    """One pipeline call for `batch` images from fixed random embeddings and fixed noise."""
    config = pipe.transformer.config
    tokens = text_tokens(section)
    gen = torch.Generator("cpu").manual_seed(1)
    size = {"height": section.resolution, "width": section.resolution, "output_type": "pt"}

    def embeddings(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    if section.family is PIXART:
        cond = embeddings(batch, tokens, config.caption_channels)
        uncond = embeddings(batch, tokens, config.caption_channels)
        mask = torch.ones(batch, tokens, device=device)
        kwargs: dict[str, Any] = {
            "prompt_embeds": cond,
            "prompt_attention_mask": mask,
            "negative_prompt": None,
            "negative_prompt_embeds": uncond,
            "negative_prompt_attention_mask": mask,
            "guidance_scale": 4.5,
            "use_resolution_binning": False,
            "clean_caption": False,
        }
    else:
        kwargs = {
            "prompt_embeds": embeddings(batch, tokens, config.joint_attention_dim),
            "pooled_prompt_embeds": embeddings(batch, config.pooled_projection_dim),
            "guidance_scale": 5.0,
        }

    def call(steps: int) -> None:
        noise = torch.Generator(device).manual_seed(0)  # the same noise for every row
        pipe(num_inference_steps=steps, generator=noise, **size, **kwargs)

    return call
