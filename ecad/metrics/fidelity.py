"""Fidelity to the no-cache image of the same seed: PSNR and SSIM on 8-bit RGB.

Both compare a cached image with its reference pixel for pixel, so they need no weights. They are
separate metrics (`psnr`, `ssim`) rather than one blended number: a blend would hide which one moved.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from ecad.metrics.base import Images, check_batch, require_references
from ecad.metrics.images import rgb_array

DATA_RANGE = 255.0


def _pair_arrays(image: Image.Image, reference: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    if image.size != reference.size:
        raise ValueError(f"image size {image.size} differs from its reference's {reference.size}")
    return rgb_array(image), rgb_array(reference)


def psnr(image: Image.Image, reference: Image.Image) -> float:
    """10·log10(255² / MSE) over all pixels and channels; inf for identical images."""
    x, y = _pair_arrays(image, reference)
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(DATA_RANGE**2 / mse)


@dataclass(frozen=True)
class SsimConfig:
    """Wang et al. (2004) constants; with these, values match scikit-image's
    structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255).
    """

    window: int = 11
    sigma: float = 1.5
    k1: float = 0.01
    k2: float = 0.03

    def __post_init__(self) -> None:
        if self.window < 3 or self.window % 2 == 0:
            raise ValueError(f"ssim: window must be an odd number >= 3, got {self.window}")


def _gaussian_filter(x: np.ndarray, config: SsimConfig) -> np.ndarray:
    """Separable normalised Gaussian over [H, W, C], 'valid' region only (the border mode never matters)."""
    offsets = np.arange(config.window) - (config.window - 1) / 2
    taps = np.exp(-0.5 * (offsets / config.sigma) ** 2)
    taps /= taps.sum()
    # scipy.ndimage is ~18x faster than a float64 torch conv2d on CPU.
    x = ndimage.correlate1d(x, taps, axis=0, mode="constant")
    x = ndimage.correlate1d(x, taps, axis=1, mode="constant")
    margin = config.window // 2
    return x[margin:-margin, margin:-margin]


def ssim(image: Image.Image, reference: Image.Image, config: SsimConfig | None = None) -> float:
    """Mean SSIM over the valid region of every RGB channel; 1.0 for identical images."""
    config = config or SsimConfig()
    x, y = _pair_arrays(image, reference)
    if min(x.shape[:2]) < config.window:
        raise ValueError(f"ssim: image {image.size} is smaller than the {config.window}-pixel window")
    c1 = (config.k1 * DATA_RANGE) ** 2
    c2 = (config.k2 * DATA_RANGE) ** 2
    mu_x, mu_y = _gaussian_filter(x, config), _gaussian_filter(y, config)
    var_x = _gaussian_filter(x * x, config) - mu_x**2
    var_y = _gaussian_filter(y * y, config) - mu_y**2
    cov = _gaussian_filter(x * y, config) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())


class ReferenceMetric(ABC):
    """A metric comparing each image with the no-cache reference of its seed; prompts are not read."""

    name: str
    higher_is_better = True
    needs_references = True

    def score(self, images: Images, prompts: Sequence[str], references: Images | None = None) -> list[float]:
        check_batch(self.name, images, prompts)
        references = require_references(self.name, images, references)
        return [self.compare(image, ref) for image, ref in zip(images, references, strict=True)]

    @abstractmethod
    def compare(self, image: Image.Image, reference: Image.Image) -> float: ...


class PsnrMetric(ReferenceMetric):
    """PSNR in dB against the no-cache image of the same seed; higher is better, inf when identical."""

    name = "psnr"

    def compare(self, image: Image.Image, reference: Image.Image) -> float:
        return psnr(image, reference)


class SsimMetric(ReferenceMetric):
    """SSIM against the no-cache image of the same seed; higher is better, 1.0 when identical."""

    name = "ssim"

    def __init__(self, config: SsimConfig | None = None) -> None:
        self.config = config or SsimConfig()

    def compare(self, image: Image.Image, reference: Image.Image) -> float:
        return ssim(image, reference, self.config)
