"""The metric catalog: names, options, metrics added by other packages, set vs per-image summaries."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
from PIL import Image

from ecad.metrics import (
    QualityMetric,
    SetMetric,
    add_metric,
    available_metrics,
    get_metric,
    higher_is_better,
    remove_metric,
    summary_score,
)
from ecad.metrics.base import Images


class ImageWidth:
    """A stand-in for a third-party metric (e.g. an embedded model's own reward classifier)."""

    name = "image_width"
    higher_is_better = True
    needs_references = False

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def score(self, images: Images, prompts: Sequence[str], references: Images | None = None) -> list[float]:
        return [self.scale * image.width for image in images]


@pytest.fixture
def added_width() -> Iterator[None]:
    add_metric("image_width", ImageWidth)
    yield
    remove_metric("image_width")


def test_builtin_names() -> None:
    assert available_metrics() == [
        "clip",
        "fid",
        "fidelity",
        "image_reward",
        "psnr",
        "scene_correct",
        "scene_match",
        "ssim",
    ]


def test_unknown_name_lists_the_available_ones() -> None:
    with pytest.raises(KeyError) as error:
        get_metric("lpips")
    assert (
        error.value.args[0] == "unknown metric 'lpips'; available: clip, fid, fidelity, image_reward, psnr, "
        "scene_correct, scene_match, ssim"
    )


def test_unknown_option_is_refused() -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'windw'"):
        get_metric("ssim", windw=7)
    with pytest.raises(TypeError, match=r"^psnr takes no options, got \['data_range'\]$"):
        get_metric("psnr", data_range=1.0)


@pytest.mark.usefixtures("added_width")
def test_an_added_metric_is_built_with_its_options() -> None:
    assert "image_width" in available_metrics()
    metric = get_metric("image_width", scale=0.5)
    assert isinstance(metric, QualityMetric)
    assert not isinstance(metric, SetMetric)
    images = [Image.new("RGB", (10, 4)), Image.new("RGB", (30, 4))]
    assert summary_score(metric, images, ["a", "b"]) == 10.0


@pytest.mark.usefixtures("added_width")
def test_names_are_not_silently_replaced() -> None:
    with pytest.raises(ValueError, match=r"^metric 'image_width' is already in the catalog$"):
        add_metric("image_width", ImageWidth)
    add_metric("image_width", lambda: ImageWidth(scale=2.0), replace=True)
    assert get_metric("image_width").score([Image.new("RGB", (3, 3))], ["p"]) == [6.0]


def test_bad_names_are_refused() -> None:
    with pytest.raises(ValueError, match="must be letters, digits and underscores"):
        add_metric("image-width", ImageWidth)


def test_summary_of_an_empty_batch_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"^psnr: no images to score$"):
        summary_score(get_metric("psnr"), [], [], [])


def test_direction_is_known_without_loading_the_metric() -> None:
    assert higher_is_better("image_reward")
    assert higher_is_better("fidelity")
    assert not higher_is_better("fid")
    add_metric("test_distance", lambda **_: None, higher_is_better=False)  # type: ignore[arg-type,return-value]
    try:
        assert not higher_is_better("test_distance")
    finally:
        remove_metric("test_distance")
    with pytest.raises(KeyError, match="unknown metric 'nope'"):
        higher_is_better("nope")
