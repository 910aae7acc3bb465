"""Fidelity to the no-cache image of the same seed: PSNR and SSIM on 8-bit RGB.

Both compare a cached image with its reference pixel for pixel, so they need no weights. They are
separate metrics (`psnr`, `ssim`) rather than one blended number: a blend would hide which one moved.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.nn import functional

from ecad.metrics.base import check_batch, require_references
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


def _gaussian_filter(x: torch.Tensor, config: SsimConfig) -> torch.Tensor:
    """Separable normalised Gaussian over [C, H, W], 'valid' region only (no padding effects)."""
    offsets = torch.arange(config.window, dtype=torch.float64) - (config.window - 1) / 2
    taps = torch.exp(-0.5 * (offsets / config.sigma) ** 2)
    taps = taps / taps.sum()
    channels = x.shape[0]
    x = functional.conv2d(x[None], taps.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    x = functional.conv2d(x, taps.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return x[0]


def ssim(image: Image.Image, reference: Image.Image, config: SsimConfig | None = None) -> float:
    """Mean SSIM over the valid region of every RGB channel; 1.0 for identical images."""
    config = config or SsimConfig()
    x_np, y_np = _pair_arrays(image, reference)
    if min(x_np.shape[:2]) < config.window:
        raise ValueError(f"ssim: image {image.size} is smaller than the {config.window}-pixel window")
    x = torch.from_numpy(x_np).permute(2, 0, 1)
    y = torch.from_numpy(y_np).permute(2, 0, 1)
    c1 = (config.k1 * DATA_RANGE) ** 2
    c2 = (config.k2 * DATA_RANGE) ** 2
    mu_x, mu_y = _gaussian_filter(x, config), _gaussian_filter(y, config)
    var_x = _gaussian_filter(x * x, config) - mu_x**2
    var_y = _gaussian_filter(y * y, config) - mu_y**2
    cov = _gaussian_filter(x * y, config) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())


class PsnrMetric:
    """PSNR in dB against the no-cache image of the same seed; higher is better, inf when identical."""

    name = "psnr"
    higher_is_better = True
    needs_references = True

    def score(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        references: Sequence[Image.Image] | None = None,
    ) -> list[float]:
        check_batch(self.name, images, prompts)
        references = require_references(self.name, images, references)
        return [psnr(image, ref) for image, ref in zip(images, references, strict=True)]


class SsimMetric:
    """SSIM against the no-cache image of the same seed; higher is better, 1.0 when identical."""

    name = "ssim"
    higher_is_better = True
    needs_references = True

    def __init__(self, config: SsimConfig | None = None) -> None:
        self.config = config or SsimConfig()

    def score(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        references: Sequence[Image.Image] | None = None,
    ) -> list[float]:
        check_batch(self.name, images, prompts)
        references = require_references(self.name, images, references)
        return [ssim(image, ref, self.config) for image, ref in zip(images, references, strict=True)]
