"""Generate images from pre-encoded prompts with per-image seeds, the way search and evaluation need."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from ecad.models import get_adapter


@dataclass(frozen=True)
class EncodedPrompts:
    """Text-encoder outputs for a list of prompts, encoded once and sliced per call."""

    family: str
    prompts: tuple[str, ...]
    tensors: dict[str, torch.Tensor]

    @classmethod
    def encode(
        cls,
        pipe: Any,
        family: str,
        prompts: Sequence[str],
        text_tokens: int | None = None,
        negative_prompt: str = "",
    ) -> EncodedPrompts:
        with torch.no_grad():
            tensors = get_adapter(family).encode_prompts(pipe, list(prompts), text_tokens, negative_prompt)
        return cls(family, tuple(prompts), tensors)

    def rows(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(list(indices), dtype=torch.long)
        return {
            name: tensor.index_select(0, index.to(tensor.device)) for name, tensor in self.tensors.items()
        }


def render(
    pipe: Any,
    encoded: EncodedPrompts,
    indices: Sequence[int],
    seeds: Sequence[int],
    steps: int,
    guidance_scale: float,
    height: int,
    width: int,
    **pipeline_kwargs: Any,
) -> list[Image.Image]:
    """One image per (prompt index, seed) pair; each image's noise depends on its seed alone."""
    if len(indices) != len(seeds):
        raise ValueError(f"{len(indices)} prompts but {len(seeds)} seeds")
    generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]
    with torch.no_grad():
        return pipe(
            **encoded.rows(indices),
            generator=generators,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            height=height,
            width=width,
            output_type="pil",
            **get_adapter(encoded.family).call_kwargs(with_embeds=True),
            **pipeline_kwargs,
        ).images
