"""Building pipelines from model entries: local folders, a separate transformer, tiny random models."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from ecad.config import ModelConfig, format_validation_error
from ecad.pipelines.loading import ModelLoadError, load_pipeline
from tests.helpers import FAMILIES, assert_same_pipeline, build_pipeline


@pytest.mark.parametrize("family", FAMILIES)
def test_local_folder_loads_the_same_pipeline(family: str, tmp_path: Path) -> None:
    original = build_pipeline(family)
    original.save_pretrained(tmp_path / "pipe")
    loaded = load_pipeline(ModelConfig(id="m", family=family, source=str(tmp_path / "pipe")))
    assert type(loaded) is type(original)
    assert_same_pipeline(loaded, original, family, ["a red circle"], [1])


def test_separate_transformer_folder(tmp_path: Path) -> None:
    base, other = build_pipeline("pixart_alpha", seed=0), build_pipeline("pixart_alpha", seed=5)
    base.save_pretrained(tmp_path / "pipe")
    other.transformer.save_pretrained(tmp_path / "transformer_only")
    loaded = load_pipeline(
        ModelConfig(
            id="m",
            family="pixart_alpha",
            source=str(tmp_path / "pipe"),
            transformer=str(tmp_path / "transformer_only"),
        )
    )
    base.transformer = other.transformer
    assert_same_pipeline(loaded, base, "pixart_alpha", ["two blue squares"], [2])


def test_random_tiny_source_and_dtype() -> None:
    pipe = load_pipeline(ModelConfig(id="tiny", family="flux", source="random:tiny", dtype="bfloat16"))
    assert pipe.transformer.dtype.is_floating_point and str(pipe.transformer.dtype) == "torch.bfloat16"


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here"
    with pytest.raises(ModelLoadError) as caught:
        load_pipeline(ModelConfig(id="m", family="pixart_alpha", source=str(missing)))
    assert str(caught.value) == f"model folder {str(missing)!r} does not exist"
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        ModelLoadError, match=r"cannot load PixArtAlphaPipeline from folder .*empty.*Download the weights"
    ):
        load_pipeline(ModelConfig(id="m", family="pixart_alpha", source=str(tmp_path / "empty")))


def test_bad_model_entry_names_the_key() -> None:
    with pytest.raises(ValidationError) as caught:
        ModelConfig.model_validate(
            {"id": "m", "family": "sdxl", "source": "x", "dtype": "fp8", "device": "gpu"}
        )
    lines = format_validation_error(caught.value, prefix="models.0").splitlines()
    assert [line.split(":")[0] for line in lines] == ["models.0.family", "models.0.dtype", "models.0.device"]
    assert lines[2] == "models.0.device: Value error, 'gpu' is not a device (cpu, cuda, cuda:N, mps)"
