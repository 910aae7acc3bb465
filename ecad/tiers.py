"""Tiers: the named points of a model's Pareto front that serve requests, and how OpenAI's `quality`
values map onto them. The one place that names them.

`exact` is the no-cache schedule, always available. A tier a registry does not fill is served by the
next milder one (fast → balanced → best → exact).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class Tier(StrEnum):
    FAST = "fast"
    BALANCED = "balanced"
    BEST = "best"
    EXACT = "exact"

    @property
    def milder(self) -> Tier | None:
        """The tier that serves this one when a registry leaves it empty (None for exact)."""
        order = list(Tier)
        return None if self is Tier.EXACT else order[order.index(self) + 1]

    @property
    def openai_quality(self) -> str:
        """The OpenAI-legal `quality` a response echoes for this tier."""
        return _ECHO[self]


# Fastest first; `exact` is not a cached tier.
CACHED_TIERS: tuple[Tier, ...] = (Tier.FAST, Tier.BALANCED, Tier.BEST)
AUTO = "auto"
QUALITY_TO_TIER: Mapping[str, Tier] = {
    "low": Tier.FAST,
    "standard": Tier.FAST,
    "medium": Tier.BALANCED,
    "high": Tier.BEST,
    "hd": Tier.BEST,
    "xhigh": Tier.BEST,
    "max": Tier.BEST,
    **{tier.value: tier for tier in Tier},
}
_ECHO = {Tier.FAST: "low", Tier.BALANCED: "medium", Tier.BEST: "high", Tier.EXACT: "high"}


def known_qualities() -> list[str]:
    """Every `quality` a request may send: OpenAI's values, the tier names, and `auto`."""
    return [*QUALITY_TO_TIER, AUTO]


__all__ = ["AUTO", "CACHED_TIERS", "QUALITY_TO_TIER", "Tier", "known_qualities"]
