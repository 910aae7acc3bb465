"""`ecad registry …` in-process through typer's runner: what it writes, and how it refuses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from ecad.registry import load_registry
from ecad.tiers import CACHED_TIERS, Tier
from server.cli import app
from tests.server_configs import ROOT, server_config

PUBLISHED = ROOT / "schedules" / "pixart-alpha"
runner = CliRunner()


def test_registry_create_copies_the_files_and_serves_them(tmp_path: Path) -> None:
    target = tmp_path / "pixart-alpha"
    tiers = ["fast=ours_fastest.json", "balanced=ours_faster.json", "best=ours_fast.json"]
    args = [f"--tier={tier.split('=')[0]}={PUBLISHED / tier.split('=')[1]}" for tier in tiers]
    result = runner.invoke(
        app,
        ["registry", "create", str(target), "--model-id", "pixart-alpha", "--family", "pixart_alpha", *args],
    )
    assert result.exit_code == 0, result.output
    assert result.output == f"wrote {target / 'front.json'}\n"
    for name in ("ours_fastest.json", "ours_faster.json", "ours_fast.json"):
        assert (target / name).read_bytes() == (PUBLISHED / name).read_bytes()
    registry = load_registry(target, model_id="pixart-alpha", family="pixart_alpha", steps=20)
    published = load_registry(PUBLISHED, model_id="pixart-alpha", family="pixart_alpha", steps=20)
    for tier in CACHED_TIERS:
        assert registry.for_tier(tier).digest == published.for_tier(tier).digest


def test_registry_create_refuses_an_unknown_tier(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "registry",
            "create",
            str(tmp_path / "r"),
            "--model-id",
            "m",
            "--family",
            "pixart_alpha",
            "--tier",
            f"ultra={PUBLISHED / 'ours_fast.json'}",
        ],
    )
    assert result.exit_code == 2
    assert (
        result.output
        == "error: --tier 'ultra="
        + str(PUBLISHED / "ours_fast.json")
        + "': expected one of fast, balanced, best=FILE\n"
    )
    assert not (tmp_path / "r").exists()


def test_registry_heuristic_writes_fora_tiers_for_the_model(tmp_path: Path) -> None:
    config = server_config()
    config["models"][0]["schedules"] = str(tmp_path / "tiny")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = runner.invoke(app, ["registry", "heuristic", "--config", str(path), "--fast", "5"])
    assert result.exit_code == 0, result.output
    registry = load_registry(tmp_path / "tiny", model_id="ecad-tiny", family="pixart_alpha", steps=20)
    assert [registry.for_tier(tier).name for tier in CACHED_TIERS] == [
        "fora_every_5",
        "fora_every_3",
        "fora_every_2",
    ]
    assert registry.for_tier(Tier.EXACT).macs_ratio == 1.0


def test_registry_heuristic_names_an_unknown_model(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(server_config()))
    result = runner.invoke(app, ["registry", "heuristic", "--config", str(path), "--model", "nope"])
    assert (result.exit_code, result.output) == (2, f"error: no model 'nope' in {path}\n")


def test_the_cli_starts_without_diffusers() -> None:
    # A fresh interpreter: this test process has imported diffusers long ago.
    probe = "import sys, server.cli; print(sorted(m for m in sys.modules if m.split('.')[0] == 'diffusers'))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout == "[]\n"
