"""The load-aware choice behind `quality: auto` (tier names and the quality mapping: `ecad.tiers`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ecad.tiers import CACHED_TIERS, Tier


def choose_auto_tier(
    *,
    idle_tier: Tier,
    objective_ms: float,
    wait_ms: float,
    estimate_ms: Mapping[Tier, float | None],
) -> Tier:
    """The mildest tier, starting at `idle_tier`, whose expected latency (wait + own run) meets the
    objective; the fastest tier when none does. A tier with no estimate yet counts as meeting it."""
    mild_to_fast = CACHED_TIERS[::-1]
    candidates = mild_to_fast[mild_to_fast.index(idle_tier) :]
    for tier in candidates:
        estimate = estimate_ms.get(tier)
        if estimate is None or wait_ms + estimate <= objective_ms:
            return tier
    return candidates[-1]


@dataclass
class LatencyModel:
    """Per-process running estimate for one model, from completed requests: the generation time of
    one image at no-cache cost, learned from any tier by scaling with that tier's MACs ratio (no-cache
    MACs / tier MACs, i.e. its theoretical speed-up). Queue wait comes from `ModelQueue.wait_s`."""

    alpha: float = 0.2
    exact_ms_per_image: float | None = None

    def observe(self, *, generation_ms: float, images: int, macs_ratio: float) -> None:
        per_image = generation_ms / max(1, images) * macs_ratio
        old = self.exact_ms_per_image
        blended = per_image if old is None else (1 - self.alpha) * old + self.alpha * per_image
        self.exact_ms_per_image = blended

    def estimate_ms(self, macs_ratio: float, images: int) -> float | None:
        if self.exact_ms_per_image is None:
            return None
        return self.exact_ms_per_image / max(macs_ratio, 1e-3) * images
