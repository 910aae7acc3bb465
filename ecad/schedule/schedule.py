"""The caching schedule: which component outputs are recomputed at which denoising step."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch

from ecad.models import Architecture, BlockGroup, ModelAdapter, get_adapter


@dataclass
class ScheduleMetadata:
    """Our own facts about a schedule, stored beside the ECAD layout under the `ecad` key."""

    model_id: str | None = None
    resolution: tuple[int, int] | None = None
    text_tokens: int | None = None
    guidance_scale: float | None = None
    quality_metric: str | None = None
    quality_value: float | None = None
    validation_value: float | None = None  # quality_metric on the search's validation prompts
    tier: str | None = None
    generation: int | None = None
    tmacs: float | None = None
    latency_ms: float | None = None
    hardware: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Schedule:
    """A boolean tensor `mask[step, block, component]`: True = recompute, False = reuse the cache.

    Blocks are numbered across the adapter's block groups in order (FLUX: 19 double, then 38 single);
    components follow the group's order. `config` and `metrics` are the ECAD file's own sections,
    carried through unchanged; costs are always recomputed from the architecture, never read from them.
    """

    mask: torch.Tensor
    architecture: Architecture
    name: str = "unnamed"
    metadata: ScheduleMetadata = field(default_factory=ScheduleMetadata)
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        mask = torch.as_tensor(self.mask)
        if mask.dtype != torch.bool or mask.ndim != 3:
            raise ValueError(f"schedule mask must be a 3-D bool tensor, got {mask.dtype} {tuple(mask.shape)}")
        expected = (self.architecture.num_blocks, len(self.adapter.groups[0].components))
        if tuple(mask.shape[1:]) != expected:
            raise ValueError(
                f"schedule mask has {tuple(mask.shape[1:])} (blocks, components); "
                f"{self.family} with {self.architecture.block_counts} blocks needs {expected}"
            )
        if mask.shape[0] < 1:
            raise ValueError("schedule needs at least one step")
        self.mask = mask.cpu().clone()

    @property
    def family(self) -> str:
        return self.architecture.family

    @property
    def adapter(self) -> ModelAdapter:
        return get_adapter(self.architecture.family)

    @property
    def steps(self) -> int:
        return int(self.mask.shape[0])

    @property
    def num_blocks(self) -> int:
        return int(self.mask.shape[1])

    def block_groups(self) -> list[tuple[BlockGroup, int]]:
        """(group, index within its group) of every block, in schedule order."""
        return [
            (group, index)
            for group, count in zip(self.adapter.groups, self.architecture.block_counts, strict=True)
            for index in range(count)
        ]

    def block_key(self, block: int) -> str:
        group, index = self.block_groups()[block]
        return f"{group.key_prefix}{index}"

    def effective_mask(self) -> torch.Tensor:
        """What executes: step 0 always computes, since every cache slot is still empty there."""
        mask = self.mask.clone()
        mask[0] = True
        return mask

    @property
    def recompute_fraction(self) -> float:
        return float(self.mask.float().mean())

    @property
    def is_no_cache(self) -> bool:
        return bool(self.effective_mask().all())

    def genome(self) -> torch.Tensor:
        """The flat bit vector the search evolves (ECAD's order: step, block, component)."""
        return self.mask.reshape(-1)

    def digest(self) -> str:
        """A short content hash of the bits: names the schedule in metrics and dedupes the search archive."""
        bits = self.mask.to(torch.uint8).numpy().tobytes()
        header = f"{self.family}:{tuple(self.mask.shape)}:".encode()
        return hashlib.sha256(header + bits).hexdigest()[:12]

    @classmethod
    def from_genome(
        cls, genome: torch.Tensor, architecture: Architecture, steps: int, **fields: Any
    ) -> Schedule:
        components = len(get_adapter(architecture.family).groups[0].components)
        mask = torch.as_tensor(genome, dtype=torch.bool).reshape(steps, architecture.num_blocks, components)
        return cls(mask=mask, architecture=architecture, **fields)
