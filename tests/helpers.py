"""Shared test inputs: tiny pipelines and the call arguments each family needs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ecad.models import Architecture, architecture_of
from ecad.pipelines.tiny import tiny_flux_pipeline, tiny_pixart_pipeline

REPO = Path(__file__).resolve().parents[1]
# The installed `ecad` console script of the interpreter running the tests.
ECAD = str(Path(sys.executable).parent / "ecad")
PUBLISHED = REPO / "schedules" / "published"
FAMILIES = ("pixart_alpha", "pixart_sigma", "flux")
STEPS = 6
SIZE = 64


def build_pipeline(family: str, seed: int = 0) -> Any:
    if family == "flux":
        return tiny_flux_pipeline(seed=seed)
    return tiny_pixart_pipeline("sigma" if family == "pixart_sigma" else "alpha", seed=seed)


def architecture(pipe: Any, family: str) -> Architecture:
    return architecture_of(pipe.transformer, family)


def generate(
    pipe: Any, family: str, prompts: list[str], seeds: list[int], steps: int = STEPS, **pipeline_kwargs: Any
) -> np.ndarray:
    """Images as float arrays, one generator per image so each image's noise depends only on its seed."""
    extra: dict[str, Any] = (
        {} if family == "flux" else {"use_resolution_binning": False, "clean_caption": False}
    )
    return pipe(
        prompt=prompts,
        generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
        num_inference_steps=steps,
        height=SIZE,
        width=SIZE,
        output_type="np",
        **extra,
        **pipeline_kwargs,
    ).images
