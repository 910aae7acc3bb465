"""`config.yaml`: the server section and the served models, validated at start-up."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from ecad.config import ConfigError, ModelConfig, format_validation_error, read_yaml, resolve_paths
from ecad.registry import TierRule
from ecad.tiers import CACHED_TIERS, Tier


class AuthConfig(BaseModel):
    """Bearer keys: comma-separated in the environment variable, and/or one per line in the file.

    No key from either source leaves the API open (a warning is logged at start-up).
    """

    model_config = ConfigDict(extra="forbid")

    api_keys_env: str = Field(default="ECAD_API_KEYS", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    api_keys_file: Path | None = None
    # `GET /metrics` needs a key too (Prometheus then sends `authorization: Bearer …`). Off by
    # default: scrapers usually reach pods on a private network, and probes stay open regardless.
    protect_metrics: bool = False


class AutoConfig(BaseModel):
    """`quality: auto`: the mildest tier (from `idle_tier` down) whose expected latency, queue wait
    included, stays within `latency_objective_ms`; the fastest tier when none does."""

    model_config = ConfigDict(extra="forbid")

    latency_objective_ms: float = Field(default=10_000.0, gt=0)
    idle_tier: Tier = Tier.BEST

    @field_validator("idle_tier")
    @classmethod
    def _cached(cls, tier: Tier) -> Tier:
        if tier not in CACHED_TIERS:
            raise ValueError(f"must be one of {', '.join(CACHED_TIERS)} (exact is not a cached tier)")
        return tier


class UrlConfig(BaseModel):
    """`response_format: url`: images kept under the state folder and served by `GET /v1/images/{id}`."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    ttl_s: int = Field(default=3600, ge=1, le=7 * 24 * 3600)
    # Disk the kept images may use; the oldest go first beyond it.
    max_bytes: int = Field(default=256 * 2**20, ge=2**20)


class ServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: Literal["127.0.0.1", "0.0.0.0", "::"] = "127.0.0.1"
    port: int = Field(default=8000, ge=1024, le=65535)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    # Requests admitted per model (waiting or running) before new ones get 429.
    max_queue: int = Field(default=32, ge=1, le=10_000)
    # Whole-request deadline (queue + generation); well below the SDK's 600 s client timeout.
    deadline_s: float = Field(default=120.0, gt=0, le=590)
    # How long a worker waits for compatible requests to join a batch, and the images per batch.
    batch_window_ms: float = Field(default=0.0, ge=0, le=1000)
    max_batch_images: int = Field(default=8, ge=1, le=64)
    max_inference_steps: int = Field(default=100, ge=1, le=1000)
    max_payload_bytes: int = Field(default=1_048_576, ge=1024)
    auto: AutoConfig = Field(default_factory=AutoConfig)
    url_responses: UrlConfig = Field(default_factory=UrlConfig)
    tier_rule: TierRule = Field(default_factory=TierRule)
    # Run-time files (url images, Prometheus multiprocess files, cancel marks); default: a fresh temp dir.
    state_dir: Path | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class AppConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    server: ServerConfig = Field(default_factory=ServerConfig)
    models: list[ModelConfig] = Field(min_length=1)
    # The config file's folder: relative paths and the default registry location resolve against it.
    _root: Path = PrivateAttr(default_factory=Path.cwd)

    @property
    def root(self) -> Path:
        return self._root

    def registry_dir(self, model: ModelConfig) -> Path:
        return model.registry_dir(self._root)

    @model_validator(mode="after")
    def _unique_ids(self) -> AppConfig:
        ids = [m.id for m in self.models]
        duplicate = next((i for i in ids if ids.count(i) > 1), None)
        if duplicate is not None:
            raise ValueError(f"model id {duplicate!r} appears more than once")
        return self

    @field_validator("models")
    @classmethod
    def _sizes(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        for model in models:
            width, height = parse_size(model.default_size)
            if not all(_side_ok(side, model) for side in (width, height)):
                raise ValueError(
                    f"{model.id}: default_size {model.default_size} must have sides in "
                    f"{model.min_side}..{model.max_side} and multiples of {model.size_multiple}"
                )
        return models


def parse_size(size: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d{1,5})x(\d{1,5})", size)
    if match is None:
        raise ValueError(f"{size!r} is not WIDTHxHEIGHT")
    return int(match[1]), int(match[2])


def _side_ok(side: int, model: ModelConfig) -> bool:
    return model.min_side <= side <= model.max_side and side % model.size_multiple == 0


def size_error(size: str, model: ModelConfig) -> str | None:
    """Why `size` (WxH, not `auto`) cannot be served by `model`, or None when it can."""
    try:
        width, height = parse_size(size)
    except ValueError:
        return f"The provided size '{size}' is not valid: use WIDTHxHEIGHT or 'auto'."
    if not (_side_ok(width, model) and _side_ok(height, model)):
        return (
            f"The provided size '{size}' is not valid for model '{model.id}': both sides must be multiples "
            f"of {model.size_multiple} between {model.min_side} and {model.max_side}."
        )
    return None


def load_config(path: str | Path) -> AppConfig:
    """Read and validate `config.yaml`; relative paths in it resolve against its folder."""
    path = Path(path)
    raw = read_yaml(path)
    try:
        config = AppConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"{path}: invalid configuration\n{format_validation_error(error)}") from None
    root = path.resolve().parent
    config._root = root
    auth = config.server.auth
    if auth.api_keys_file is not None and not auth.api_keys_file.is_absolute():
        auth.api_keys_file = root / auth.api_keys_file
    if config.server.state_dir is not None and not config.server.state_dir.is_absolute():
        config.server.state_dir = root / config.server.state_dir
    config.models = [resolve_paths(model, root) for model in config.models]
    return config


__all__ = ["AppConfig", "ConfigError", "ServerConfig", "load_config", "parse_size", "size_error"]
