"""The default config serves the embedded model: real server, official client, pictures the judge reads."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable

import openai
import pytest
from PIL import Image

from ecad.metrics import get_metric
from harness.launcher import RunningServer, served_config
from server.config import load_config
from tests.server_configs import ROOT


def test_default_config_serves_the_embedded_model() -> None:
    config = load_config(ROOT / "config.yaml")
    (model,) = config.models
    assert model.id == "ecad-shapes"
    assert model.source == str(ROOT / "models" / "ecad-shapes")
    assert model.render_size == "64x64"
    assert config.registry_dir(model) == ROOT / "schedules" / "ecad-shapes"


@pytest.fixture(scope="module")
def server(start_server: Callable[..., RunningServer]) -> RunningServer:
    return start_server(served_config(ROOT / "config.yaml"))


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_start_up_log_is_quiet(server: RunningServer) -> None:
    """Loading real weights from a folder: no deprecation warnings, no progress bars."""
    log = server.log_text()
    for noise in ("Warning", "torch_dtype", "Loading pipeline components", "Traceback"):
        assert noise not in log


def _image(b64: str | None) -> Image.Image:
    assert b64 is not None
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def test_served_pictures_show_the_prompt_at_every_tier(client: openai.OpenAI) -> None:
    prompt = "a yellow triangle at the top left"
    judge = get_metric("scene_correct")
    for quality in ("low", "medium", "high", "exact"):
        result = client.images.generate(
            model="ecad-shapes", prompt=prompt, quality=quality, n=2, size="256x256", extra_body={"seed": 0}
        )
        assert result.model_extra is not None
        assert result.model_extra["x_ecad"]["model"] == "ecad-shapes"
        images = [_image(item.b64_json) for item in result.data]
        assert [image.size for image in images] == [(256, 256)] * 2
        assert judge.score(images, [prompt] * 2) == [1.0, 1.0], quality


def test_prompts_outside_the_grammar_still_get_an_image(client: openai.OpenAI) -> None:
    result = client.images.generate(model="ecad-shapes", prompt="a cat wearing a hat", size="512x512")
    assert _image(result.data[0].b64_json).size == (512, 512)
