"""Encode generated PIL images to the requested output format."""

from __future__ import annotations

import base64
import io

from PIL import Image

# OpenAI's default compression is 100 (best quality); png ignores it, as OpenAI does.
_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def fit_to(image: Image.Image, width: int, height: int) -> Image.Image:
    """The image at the requested size: models with a fixed render size are resized (bicubic)."""
    if image.size == (width, height):
        return image
    return image.resize((width, height), Image.Resampling.BICUBIC)


def encode_image(image: Image.Image, output_format: str, compression: int | None) -> bytes:
    buffer = io.BytesIO()
    options: dict[str, int | bool] = {}
    if output_format in ("jpeg", "webp"):
        options["quality"] = 100 if compression is None else compression
    image.convert("RGB").save(buffer, format=_PIL_FORMATS[output_format], **options)
    return buffer.getvalue()


def encode_b64(image: Image.Image, output_format: str, compression: int | None) -> str:
    return base64.b64encode(encode_image(image, output_format, compression)).decode("ascii")
