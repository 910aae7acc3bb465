"""Model-family adapters: the only place that knows a family's blocks, components and costs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch

from ecad.models.base import Architecture, BlockGroup, Component, ModelAdapter, Role, Workload
from ecad.models.flux import FluxAdapter
from ecad.models.pixart import PixArtAdapter

ADAPTERS: dict[str, ModelAdapter] = {
    "pixart_alpha": PixArtAdapter(
        "pixart_alpha", default_text_tokens=120, pipeline_class="PixArtAlphaPipeline"
    ),
    "pixart_sigma": PixArtAdapter(
        "pixart_sigma", default_text_tokens=300, pipeline_class="PixArtSigmaPipeline"
    ),
    "flux": FluxAdapter(),
}


def get_adapter(family: str) -> ModelAdapter:
    try:
        return ADAPTERS[family]
    except KeyError:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(sorted(ADAPTERS))}") from None


def architecture_of(transformer: torch.nn.Module, family: str) -> Architecture:
    """The architecture of a loaded transformer, checked against the family it should belong to."""
    adapter = get_adapter(family)
    if type(transformer).__name__ != adapter.transformer_class:
        raise TypeError(f"{type(transformer).__name__} is not a {family} transformer")
    return adapter.architecture(dict(cast(Mapping[str, Any], transformer.config)))


__all__ = [
    "ADAPTERS",
    "Architecture",
    "BlockGroup",
    "Component",
    "ModelAdapter",
    "Role",
    "Workload",
    "architecture_of",
    "get_adapter",
]
