"""MAC accounting reproduces the paper's numbers from the architecture alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from ecad.costs import schedule_cost
from ecad.models import get_adapter
from ecad.schedule import fora, load_schedule, no_cache
from ecad.schedule.actions import Action, schedule_actions
from server.cli import app
from tests.helpers import PUBLISHED

PAPER = PUBLISHED / "schedules_in_paper"


@pytest.mark.parametrize(
    ("path", "tmacs"),
    [
        ("pixart_alpha_256/ours_fast.json", 2.135),
        ("pixart_alpha_256/ours_faster.json", 1.456),
        ("pixart_alpha_256/ours_fastest.json", 1.175),
        ("flux_256/ours_fast.json", 63.02),
        ("flux_256/ours_faster.json", 43.60),
    ],
)
def test_paper_tmacs(path: str, tmacs: float) -> None:
    cost = schedule_cost(load_schedule(PAPER / path))
    assert cost.tmacs == pytest.approx(tmacs, rel=0.005)
    assert cost.macs_ratio == pytest.approx(cost.tmacs_no_cache / cost.tmacs)


def test_no_cache_totals() -> None:
    pixart = schedule_cost(no_cache(get_adapter("pixart_alpha").reference))
    flux = schedule_cost(no_cache(get_adapter("flux").reference))
    assert pixart.tmacs == pytest.approx(5.714, rel=0.005) and pixart.macs_ratio == 1.0
    assert flux.tmacs == pytest.approx(198.69, rel=0.005)
    # The paper's 1024² numbers (N = 4096 image tokens).
    assert schedule_cost(no_cache(get_adapter("pixart_alpha").reference), height=1024).tmacs == pytest.approx(
        85.63, rel=0.005
    )
    assert schedule_cost(no_cache(get_adapter("flux").reference), height=1024).tmacs == pytest.approx(
        1190.25, rel=0.005
    )


WITH_TOTALS = [
    p for p in sorted(PUBLISHED.rglob("*.json")) if "total_macs_T" in json.loads(p.read_text())["metrics"]
]


def test_most_published_files_carry_totals() -> None:
    assert len(WITH_TOTALS) == 96  # the 24 FLUX seed candidates have none


@pytest.mark.parametrize("path", WITH_TOTALS, ids=lambda p: str(p.relative_to(PUBLISHED)))
def test_every_published_total_is_reproduced(path: Path) -> None:
    """Each file's own `total_macs_T` (at the resolution in its `config`) matches our formula."""
    schedule = load_schedule(path)
    published = schedule.metrics["total_macs_T"]
    height = schedule.config.get("height", 256) if schedule.family == "flux" else 256
    # The authors counted PixArt-Σ with PixArt-α's 120 text tokens.
    assert schedule_cost(
        schedule, height=height, text_tokens=None if schedule.family == "flux" else 120
    ).tmacs == (pytest.approx(published, rel=1e-3))


def test_dead_work_and_liveness() -> None:
    schedule = load_schedule(PAPER / "flux_256/ours_fast.json")
    cost = schedule_cost(schedule)
    # The paper's analysis: 0.23 % of ours_fast's MACs are dead work in single blocks.
    assert (cost.tmacs - cost.tmacs_executed) / cost.tmacs == pytest.approx(0.0023, abs=0.0003)
    # Every published schedule has a fully cached step, so all reused slots are live at once.
    pixart = schedule_cost(load_schedule(PAPER / "pixart_alpha_256/ours_fast.json"))
    assert pixart.cache_peak_bytes == 2 * 84 * 256 * 1152 * 2  # CFG rows × slots × N × d × fp16
    actions = schedule_actions(fora(get_adapter("pixart_alpha").reference, 20, 4))
    assert (actions[0] == Action.COMPUTE_STORE).all() and (actions[3] == Action.REUSE_RELEASE).all()
    assert (actions[19] == Action.REUSE_RELEASE).all()


def run_cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def test_schedule_info_cli_json() -> None:
    result = run_cli("schedule", "info", str(PAPER / "pixart_alpha_256/ours_fast.json"), "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    for key in (
        "family",
        "steps",
        "blocks",
        "components",
        "recompute_fraction",
        "tmacs_no_cache",
        "macs_ratio",
    ):
        assert key in info
    assert (info["family"], info["steps"], info["blocks"], info["components"]) == (
        "pixart_alpha",
        20,
        28,
        ["attn1", "attn2", "ff"],
    )
    assert info["tmacs"] == pytest.approx(2.135, rel=0.005)
    assert info["tmacs_executed"] == pytest.approx(info["tmacs"])
    assert info["recompute_fraction"] == pytest.approx(0.356, abs=0.001)

    bigger = run_cli(
        "schedule",
        "info",
        str(PAPER / "flux_256/ours_faster.json"),
        "--resolution",
        "1024",
        "--batch",
        "1",
        "--json",
    )
    assert json.loads(bigger.stdout)["batch"] == 1
    assert json.loads(bigger.stdout)["resolution"] == [1024, 1024]


def test_schedule_info_cli_text_and_errors(tmp_path: Path) -> None:
    text = run_cli("schedule", "info", str(PAPER / "flux_256/ours_fast.json"))
    assert text.exit_code == 0
    assert "TMACs scheduled     63.023  (no cache 198.692, ratio 3.15×)" in text.stdout
    bad = tmp_path / "bad.json"
    bad.write_text('{"cache_schedule": {"num_blocks": 28')
    failed = run_cli("schedule", "info", str(bad))
    assert failed.exit_code == 2
    assert (
        failed.stderr.strip()
        == f"error: {bad}: <json>: not valid JSON (Expecting ',' delimiter at line 1 column 37)"
    )
    odd = run_cli("schedule", "info", str(PAPER / "flux_256/ours_fast.json"), "--resolution", "100")
    assert odd.exit_code == 2
    assert odd.stderr.strip() == "error: --resolution must be a positive multiple of 16, got 100"
