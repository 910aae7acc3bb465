"""Image preprocessing shared by the metrics, in plain PIL + torch (torchvision is not available here)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# OpenAI CLIP's normalisation; ImageReward's BLIP preprocessing uses the same numbers.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def resize_short_side(image: Image.Image, size: int) -> Image.Image:
    """Bicubic resize so the short side is `size`, long side truncated as torchvision's Resize(int) does."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    if (new_w, new_h) == (width, height):
        return image
    return image.resize((new_w, new_h), Image.Resampling.BICUBIC)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """Square center crop; offsets rounded with Python's round() like torchvision's CenterCrop."""
    width, height = image.size
    if width < size or height < size:
        raise ValueError(f"center_crop: image {width}x{height} is smaller than the crop {size}")
    top = round((height - size) / 2.0)
    left = round((width - size) / 2.0)
    return image.crop((left, top, left + size, top + size))


def clip_pixels(
    images: Sequence[Image.Image],
    size: int,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> torch.Tensor:
    """[B, 3, size, size] float32: resize short side (bicubic), center crop, RGB, /255, normalise.

    The order (RGB conversion after the crop) is the one of CLIP's and ImageReward's torchvision
    transforms, so RGBA or grayscale inputs give the same pixels as upstream.
    """
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    tensors = []
    for image in images:
        cropped = center_crop(resize_short_side(image, size), size).convert("RGB")
        pixels = torch.from_numpy(np.array(cropped, dtype=np.uint8)).permute(2, 0, 1).float().div(255)
        tensors.append((pixels - mean_t) / std_t)
    return torch.stack(tensors)


def rgb_array(image: Image.Image) -> np.ndarray:
    """[H, W, 3] float64 in 0..255."""
    return np.asarray(image.convert("RGB"), dtype=np.float64)


def iter_image_folder(folder: Path) -> Iterator[Image.Image]:
    """Every image directly in `folder`, sorted by name, as RGB; opened one at a time (folders are large)."""
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    for path in paths:
        with Image.open(path) as image:
            yield image.convert("RGB")
