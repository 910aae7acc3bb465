"""`quality` mapping, the tier rule's ceilings and the load-aware choice behind `quality=auto`."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ecad.registry import TierRule
from ecad.tiers import QUALITY_TO_TIER, Tier
from server.tiers import LatencyModel, choose_auto_tier


def test_openai_names_map_to_tiers_and_echo_legal_values() -> None:
    assert {q: QUALITY_TO_TIER[q] for q in ("low", "standard", "medium", "high", "hd", "xhigh", "max")} == {
        "low": "fast",
        "standard": "fast",
        "medium": "balanced",
        "high": "best",
        "hd": "best",
        "xhigh": "best",
        "max": "best",
    }
    assert [tier.openai_quality for tier in Tier] == ["low", "medium", "high", "high"]
    assert [tier.milder for tier in Tier] == [Tier.BALANCED, Tier.BEST, Tier.EXACT, None]


def test_auto_prefers_the_idle_tier_and_degrades_under_load() -> None:
    estimates = {"best": 800.0, "balanced": 500.0, "fast": 300.0}

    def pick(wait: float) -> str:
        return choose_auto_tier(idle_tier="best", objective_ms=1000, wait_ms=wait, estimate_ms=estimates)

    assert pick(0) == "best"
    assert pick(400) == "balanced"
    assert pick(650) == "fast"
    assert pick(5000) == "fast"
    assert (
        choose_auto_tier(idle_tier="balanced", objective_ms=1000, wait_ms=0, estimate_ms=estimates)
        == "balanced"
    )
    cold = {"best": None, "balanced": None, "fast": None}
    assert choose_auto_tier(idle_tier="best", objective_ms=1, wait_ms=0, estimate_ms=cold) == "best"


def test_latency_model_scales_by_macs_ratio() -> None:
    model = LatencyModel()
    assert model.estimate_ms(2.0, 1) is None
    model.observe(generation_ms=500, images=1, macs_ratio=2.0)  # a 2× schedule took 500 ms
    assert model.estimate_ms(1.0, 1) == 1000
    assert model.estimate_ms(4.0, 2) == 500


@pytest.mark.parametrize(
    ("ceilings", "message"),
    [
        (
            {"best": 0.5},
            "ceilings must satisfy best ≤ balanced ≤ fast, got fast=0.1, balanced=0.05, best=0.5",
        ),
        ({"exact": 0.0}, "exact has no loss ceiling (it is the no-cache schedule)"),
        ({"fast": -0.1}, "ceilings must be ≥ 0"),
    ],
)
def test_tier_rule_refuses_what_it_cannot_apply(ceilings: dict[str, float], message: str) -> None:
    with pytest.raises(ValidationError) as error:
        TierRule.model_validate(ceilings)
    assert error.value.errors()[0]["msg"] == f"Value error, {message}"


def test_tier_rule_fills_unnamed_tiers_with_their_defaults() -> None:
    assert TierRule.model_validate({"fast": 0.2}).root == {
        Tier.FAST: 0.2,
        Tier.BALANCED: 0.05,
        Tier.BEST: 0.02,
    }
    with pytest.raises(ValidationError) as error:
        TierRule.model_validate({"fastest": 0.2})
    assert error.value.errors()[0]["loc"] == ("fastest", "[key]")
