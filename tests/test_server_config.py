"""A bad config stops start-up with a message naming the key."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ecad.config import ConfigError
from ecad.search.config import SearchConfig, find_model
from harness.launcher import ECAD, served_config
from server.config import load_config
from tests.server_configs import server_config


def write(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    ("patch", "key"),
    [
        ({"server": {"max_queue": 0}}, "server.max_queue"),
        ({"server": {"port": 80}}, "server.port"),
        ({"server": {"deadline_s": -1}}, "server.deadline_s"),
        ({"server": {"auth": {"api_keys_env": "1BAD"}}}, "server.auth.api_keys_env"),
        ({"server": {"url_responses": {"ttl_s": 0}}}, "server.url_responses.ttl_s"),
        ({"server": {"auto": {"idle_tier": "exact"}}}, "server.auto.idle_tier"),
        ({"server": {"tier_rule": {"best": 0.5, "fast": 0.1}}}, "server.tier_rule"),
        ({"server": {"typo": 1}}, "server.typo"),
        ({"models": [{"id": "m", "family": "sd15", "source": "random:tiny"}]}, "models.0.family"),
        ({"models": [{"id": "m", "family": "flux", "source": "x", "dtype": "int8"}]}, "models.0.dtype"),
        ({"models": []}, "models"),
        (
            {"models": [{"id": "m", "family": "pixart_alpha", "source": "x", "render_size": "64"}]},
            "models.0.render_size",
        ),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, patch: dict[str, Any], key: str) -> None:
    config = server_config()
    config = {**config, **{k: v if k == "models" else {**config[k], **v} for k, v in patch.items()}}
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, config))
    assert f"\n{key}" in str(caught.value)


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, {"models": [{"id": "m", "family": "pixart_alpha", "source": "random:tiny"}]})
    )
    assert config.server.port == 8000
    assert config.server.host == "127.0.0.1"
    assert config.registry_dir(config.models[0]) == tmp_path / "schedules" / "m"


def test_local_model_folders_resolve_against_the_config(tmp_path: Path) -> None:
    (tmp_path / "weights" / "transformer").mkdir(parents=True)
    models = [
        {
            "id": "local",
            "family": "pixart_alpha",
            "source": "./weights",
            "transformer": "weights/transformer",
        },
        {"id": "hub", "family": "pixart_alpha", "source": "PixArt-alpha/PixArt-XL-2-1024-MS"},
    ]
    local, hub = load_config(write(tmp_path, {"models": models})).models
    assert (local.source, local.transformer) == (
        str(tmp_path / "weights"),
        str(tmp_path / "weights/transformer"),
    )
    assert hub.source == "PixArt-alpha/PixArt-XL-2-1024-MS"
    assert (local.native_size, hub.native_size) == ((256, 256), (256, 256))


def test_repository_configs_are_valid() -> None:
    root = Path(__file__).resolve().parent.parent
    assert [m.id for m in load_config(root / "config.yaml").models] == ["ecad-shapes"]
    assert len(load_config(root / "config.gpu.example.yaml").models) == 3


def test_serve_refuses_bad_config_and_mismatched_registry(tmp_path: Path) -> None:
    bad = write(tmp_path, {**server_config(), "server": {"max_queue": "many"}})
    result = subprocess.run([ECAD, "serve", "--config", bad], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "server.max_queue" in result.stderr
    mismatched = server_config()
    mismatched["models"][0]["steps"] = 10  # the ecad-tiny registry holds 20-step schedules
    path = write(tmp_path, mismatched)
    result = subprocess.run([ECAD, "serve", "--config", path], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "front.json" in result.stderr
    assert "20" in result.stderr


def test_serve_search_and_load_test_resolve_relative_paths_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One resolver: relative paths in a models config resolve against that file's folder, whatever the
    working directory and whichever command reads it."""
    (tmp_path / "weights" / "m").mkdir(parents=True)
    models = [
        {"id": "m", "family": "pixart_alpha", "source": "weights/m", "schedules": "regs/m"},
        {"id": "hub", "family": "flux", "source": "black-forest-labs/FLUX.1-dev"},
    ]
    path = write(tmp_path, {"models": models})
    monkeypatch.chdir(tmp_path.parent)
    served = load_config(path)
    searched = [
        find_model(SearchConfig(models_config=path)),
        find_model(SearchConfig(model="hub", models_config=path)),
    ]
    tested = served_config(path)["models"]
    assert [m.source for m in served.models] == [m.source for m in searched] == [t["source"] for t in tested]
    assert served.models[0].source == str(tmp_path / "weights" / "m")
    assert served.models[1].source == "black-forest-labs/FLUX.1-dev"  # no such folder: a hub id
    assert served.models[0].schedules == searched[0].schedules == tmp_path / "regs" / "m"
    assert [Path(t["schedules"]) for t in tested] == [tmp_path / "regs" / "m", tmp_path / "schedules" / "hub"]
    with pytest.raises(ConfigError) as caught:
        find_model(SearchConfig(model="other", models_config=path))
    assert str(caught.value) == f"{path}: no model with id 'other' (known: m, hub)"
