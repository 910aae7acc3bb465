"""The tiny offline pipelines run end to end, deterministically, and survive a save/load round trip."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from ecad.pipelines.tiny import tiny_flux_pipeline, tiny_pixart_pipeline
from tests.helpers import assert_same_pipeline

VARIANTS = ["alpha", "sigma", "flux"]
SIZE = 64


def _build(variant: str, seed: int = 0) -> DiffusionPipeline:
    if variant == "flux":
        return tiny_flux_pipeline(seed=seed)
    return tiny_pixart_pipeline(variant, seed=seed)  # type: ignore[arg-type]


def _generate(pipe: DiffusionPipeline, variant: str, prompt: str = "a red cat on a mat") -> np.ndarray:
    kwargs: dict[str, Any] = {}
    if variant in ("alpha", "sigma"):
        # Binning would resize to the 1024px aspect-ratio buckets; captions need bs4/ftfy to clean.
        kwargs = {"use_resolution_binning": False, "clean_caption": False}
        kwargs["max_sequence_length"] = 120 if variant == "alpha" else 300
    out = pipe(
        prompt,
        height=SIZE,
        width=SIZE,
        num_inference_steps=4,
        output_type="np",
        generator=torch.Generator("cpu").manual_seed(0),
        **kwargs,
    )
    return out.images


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    # The models are too small to gain from intra-op threads, and on a busy 2-core box the spinning
    # OpenMP workers make each call 10-30x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def pipe(variant: str) -> DiffusionPipeline:
    return _build(variant)


def test_output_shape_and_values(pipe: DiffusionPipeline, variant: str) -> None:
    images = _generate(pipe, variant)
    assert images.shape == (1, SIZE, SIZE, 3)
    assert np.isfinite(images).all()
    assert images.std() > 1e-3


def test_same_seed_same_output(pipe: DiffusionPipeline, variant: str) -> None:
    np.testing.assert_array_equal(_generate(pipe, variant), _generate(pipe, variant))


def test_builder_is_deterministic(pipe: DiffusionPipeline, variant: str) -> None:
    rng_before = torch.random.get_rng_state()
    rebuilt = _build(variant)
    # Building must not consume the caller's global RNG.
    assert torch.equal(rng_before, torch.random.get_rng_state())
    np.testing.assert_array_equal(_generate(pipe, variant), _generate(rebuilt, variant))
    assert not np.array_equal(_generate(pipe, variant), _generate(_build(variant, seed=1), variant))


def test_prompt_changes_output(pipe: DiffusionPipeline, variant: str) -> None:
    a = _generate(pipe, variant, "a red cat on a mat")
    b = _generate(pipe, variant, "Lighthouse at dusk, oil painting")
    assert np.abs(a - b).max() > 1e-3


def test_save_load_round_trip(pipe: DiffusionPipeline, variant: str, tmp_path: Path) -> None:
    pipe.save_pretrained(tmp_path)
    reloaded = type(pipe).from_pretrained(tmp_path)
    reloaded.set_progress_bar_config(disable=True)
    assert type(reloaded.tokenizer) is type(pipe.tokenizer)
    family = {"alpha": "pixart_alpha", "sigma": "pixart_sigma", "flux": "flux"}[variant]
    assert_same_pipeline(reloaded, pipe, family, ["a red cat on a mat"], [0])
