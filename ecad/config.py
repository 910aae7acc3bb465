"""Model entries of `config.yaml`: which pipeline to build, from where, on which device."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ecad.models import ADAPTERS

RANDOM_SOURCE = "random:tiny"
Dtype = Literal["float32", "float16", "bfloat16"]


class ConfigError(ValueError):
    """A configuration that cannot start; the message names the file and the key."""


class ModelConfig(BaseModel):
    """One served (or searched) model.

    `source` is a local diffusers folder, a Hugging Face hub id, or `random:tiny` (a tiny
    random-weight pipeline built from configs: no downloads, noise images, for tests and demos).
    """

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    family: Literal["pixart_alpha", "pixart_sigma", "flux"]
    source: str = Field(min_length=1)
    transformer: str | None = None
    dtype: Dtype = "float32"
    device: str = "cpu"
    workers_per_device: int = Field(default=1, ge=1, le=16)
    steps: int = Field(default=20, ge=1, le=200)
    guidance_scale: float = Field(default=4.5, ge=0.0, le=30.0)
    default_size: str = "256x256"
    # A model trained at one size (the embedded model) renders there whatever the request asks; the
    # server then resizes each image to the requested size. Search and evaluation render at it too.
    render_size: str | None = None
    min_side: int = Field(default=64, ge=16)
    max_side: int = Field(default=1024, ge=16)
    schedules: Path | None = None

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", value):
            raise ValueError(f"{value!r} is not a device (cpu, cuda, cuda:N, mps)")
        return value

    @field_validator("default_size", "render_size")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"\d+x\d+", value):
            raise ValueError(f"{value!r} is not WIDTHxHEIGHT")
        return value

    @property
    def native_size(self) -> tuple[int, int]:
        """(width, height) that search and evaluation render at: render_size, else default_size."""
        width, height = (self.render_size or self.default_size).split("x")
        return int(width), int(height)

    @property
    def adapter(self) -> Any:
        return ADAPTERS[self.family]

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (VAE ×8 times the patch/packing size)."""
        return 16

    def registry_dir(self, root: Path) -> Path:
        return self.schedules if self.schedules is not None else root / "schedules" / self.id


def format_validation_error(error: ValidationError, prefix: str = "") -> str:
    """One line per problem, each naming its key path, e.g. `models.0.dtype: Input should be …`."""
    lines = []
    for problem in error.errors():
        key = ".".join(str(part) for part in (*([prefix] if prefix else []), *problem["loc"]))
        if key:
            lines.append(f"{key}: {problem['msg']}")
        else:  # a whole-document check names its own keys
            lines.append(problem["msg"].removeprefix("Value error, "))
    return "\n".join(lines)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def resolve_paths(model: ModelConfig, root: Path) -> ModelConfig:
    """The entry with its relative paths resolved against `root`, the folder of the file naming it:
    `schedules` always; `source` and `transformer` when such a folder exists there (a local folder
    like ./models/ecad-shapes wins over a hub id of that name)."""
    updates: dict[str, Any] = {}
    if model.schedules is not None and not model.schedules.is_absolute():
        updates["schedules"] = root / model.schedules
    for key in ("source", "transformer"):
        value = getattr(model, key)
        if value is not None and not Path(value).is_absolute() and (root / value).is_dir():
            updates[key] = str(root / value)
    return model.model_copy(update=updates)


def read_models(path: str | Path) -> list[ModelConfig]:
    """The `models:` list of a config file, validated, with paths resolved against the file's folder."""
    path = Path(path)
    entries = read_yaml(path).get("models")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: models: expected a non-empty list of model entries")
    root = path.resolve().parent
    models = []
    for index, entry in enumerate(entries):
        try:
            models.append(resolve_paths(ModelConfig.model_validate(entry), root))
        except ValidationError as error:
            raise ConfigError(
                f"{path}:\n{format_validation_error(error, prefix=f'models.{index}')}"
            ) from None
    return models
