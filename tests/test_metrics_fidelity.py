"""PSNR and SSIM against the no-cache reference: closed-form answers and scikit-image's values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from ecad.metrics import get_metric, summary_score
from ecad.metrics.fidelity import SsimConfig, psnr, ssim


def pattern_pair() -> tuple[Image.Image, Image.Image]:
    """A deterministic textured image and a copy with structured ±10 noise."""
    i, j = np.mgrid[0:48, 0:40]
    x = (i * 7 + j * 13) % 256
    x = np.stack([x, (x * 3) % 256, 255 - x], -1).astype(np.uint8)
    y = np.clip(x.astype(int) + ((i * 5 + j * 3) % 21 - 10)[..., None], 0, 255).astype(np.uint8)
    return Image.fromarray(x), Image.fromarray(y)


def gray(value: int, size: tuple[int, int] = (32, 24)) -> Image.Image:
    return Image.new("RGB", size, (value, value, value))


def test_identical_images_give_infinite_psnr_and_ssim_one() -> None:
    image, _ = pattern_pair()
    assert get_metric("psnr").score([image], ["p"], [image.copy()]) == [math.inf]
    assert get_metric("ssim").score([image], ["p"], [image.copy()]) == [pytest.approx(1.0, abs=1e-12)]


@pytest.mark.parametrize("offset", [1, 5, 40])
def test_constant_offset_gives_its_known_psnr(offset: int) -> None:
    # MSE = offset², so PSNR = 20·log10(255 / offset).
    assert psnr(gray(100 + offset), gray(100)) == pytest.approx(20 * math.log10(255 / offset), abs=1e-12)


def test_constant_offset_gives_the_closed_form_ssim() -> None:
    # Flat images have zero variance, so SSIM reduces to its luminance term.
    a, b = 100.0, 140.0
    c1 = (0.01 * 255) ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert ssim(gray(140), gray(100)) == pytest.approx(expected, abs=1e-12)


def test_values_match_scikit_image() -> None:
    # scikit-image 0.26.0: structural_similarity(x, y, channel_axis=-1, gaussian_weights=True, sigma=1.5,
    # use_sample_covariance=False, data_range=255) and peak_signal_noise_ratio(x, y, data_range=255),
    # computed on these arrays in a separate environment.
    image, noisy = pattern_pair()
    assert ssim(noisy, image) == pytest.approx(0.9841586471223369, abs=1e-12)
    assert psnr(noisy, image) == pytest.approx(32.59844388428665, abs=1e-12)


def test_ssim_is_symmetric_and_below_one_for_different_images() -> None:
    image, noisy = pattern_pair()
    assert ssim(image, noisy) == pytest.approx(ssim(noisy, image), abs=1e-12)
    assert ssim(image, noisy) < 1.0


def test_mean_psnr_over_a_batch() -> None:
    images = [gray(101), gray(110)]
    references = [gray(100), gray(100)]
    expected = (20 * math.log10(255) + 20 * math.log10(255 / 10)) / 2
    assert summary_score(get_metric("psnr"), images, ["a", "b"], references) == pytest.approx(expected)


def test_reference_errors_name_the_metric() -> None:
    image, _ = pattern_pair()
    with pytest.raises(ValueError, match=r"^psnr: needs the no-cache reference images of the same seeds$"):
        get_metric("psnr").score([image], ["p"])
    with pytest.raises(ValueError, match=r"^ssim: 1 images but 2 references$"):
        get_metric("ssim").score([image], ["p"], [image, image])
    with pytest.raises(ValueError, match=r"image size \(40, 48\) differs from its reference's \(32, 24\)"):
        psnr(image, gray(0))


def test_fidelity_is_ssim() -> None:
    image, noisy = pattern_pair()
    assert get_metric("fidelity").score([noisy], ["p"], [image]) == get_metric("ssim").score(
        [noisy], ["p"], [image]
    )


def test_ssim_options_and_window_check() -> None:
    metric = get_metric("ssim", window=7, sigma=1.0)
    assert metric.config == SsimConfig(window=7, sigma=1.0)
    with pytest.raises(ValueError, match=r"^ssim: window must be an odd number >= 3, got 8$"):
        get_metric("ssim", window=8)
    with pytest.raises(ValueError, match="smaller than the 11-pixel window"):
        ssim(gray(1, (10, 10)), gray(1, (10, 10)))
