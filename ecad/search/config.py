"""Settings of one `ecad search` run: a YAML file whose every key is also a command-line flag."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ecad.config import ConfigError, ModelConfig, format_validation_error, read_models, read_yaml
from ecad.metrics import available_metrics
from ecad.registry import TierRule


class SearchConfig(BaseModel):
    """Defaults follow the paper where it fits a CPU: NSGA-II with 4-point crossover (p=0.9), bit-flip
    mutation of one offspring in twenty, binary tournament, rank-and-crowding survival, duplicates
    eliminated, heuristic seeds. The paper's own scale is population 72 × ~550 generations × 1,000 images.
    """

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        default=None, description="id of a model entry in the models config (default: its first)"
    )
    models_config: Path = Field(
        default=Path("config.yaml"), description="file whose `models:` list holds --model"
    )
    steps: int | None = Field(default=None, ge=2, description="denoising steps (default: the model's)")
    resolution: int | None = Field(
        default=None, ge=16, description="square image side (default: the model's)"
    )
    guidance: float | None = Field(default=None, ge=0.0, description="guidance scale (default: the model's)")
    text_tokens: int | None = Field(default=None, ge=1, description="text tokens (default: the family's)")
    prompts: str | None = Field(
        default=None, description="prompt file or built-in set (default: calibration set)"
    )
    prompt_limit: int | None = Field(default=None, ge=1, description="use only the first N prompts")
    validation_prompts: str | None = Field(
        default=None,
        description="prompts the front is re-scored on to assign tiers (default: the search's own scores)",
    )
    validation_prompt_limit: int | None = Field(default=None, ge=1, description="first N validation prompts")
    images_per_prompt: int = Field(
        default=2, ge=1, description="seeds 0..K-1, the same noise for every candidate"
    )
    population: int = Field(default=24, ge=4)
    generations: int = Field(default=10, ge=1)
    metric: str = "fidelity"
    metric_options: dict[str, Any] = Field(default_factory=dict)
    cost: Literal["macs", "latency"] = "macs"
    out: Path | None = Field(
        default=None, description="registry folder (default: where the server reads the model's)"
    )
    state: Path | None = Field(
        default=None, description="checkpoint and archive folder (default: runs/search-<model>)"
    )
    resume: bool = False
    seed: int = 0
    seeding: Literal["heuristics", "random"] = "heuristics"
    crossover_points: int = Field(default=4, ge=1)
    crossover_prob: float = Field(default=0.9, ge=0.0, le=1.0)
    mutation_prob: float = Field(default=0.05, ge=0.0, le=1.0)
    eliminate_duplicates: bool = True
    batch_size: int = Field(default=8, ge=1, description="images per pipeline call")
    threads: int | None = Field(default=None, ge=1, description="torch threads per evaluation worker")
    dask: str | None = Field(default=None, description="scheduler address, or local:N for a local cluster")
    tier_rule: TierRule = Field(default_factory=TierRule)

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in available_metrics():
            raise ValueError(f"unknown metric {value!r}; available: {', '.join(available_metrics())}")
        return value

    @field_validator("dask")
    @classmethod
    def _dask_address(cls, value: str | None) -> str | None:
        if value is not None and value.startswith("local:"):
            count = value.removeprefix("local:")
            if not count.isdigit() or int(count) < 1:
                raise ValueError(f"'local:N' needs a positive worker count, got {value!r}")
        return value

    def state_dir(self) -> Path:
        return self.state if self.state is not None else Path("runs") / f"search-{self.model}"

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must agree on to be resumed (output places, worker layout and the validation
        set, which only re-scores the finished front, may change)."""
        return self.model_dump(
            mode="json",
            exclude={
                "resume", "out", "state", "dask", "threads", "generations",
                "validation_prompts", "validation_prompt_limit",
            },
        )  # fmt: skip


def load_search_config(path: Path | None, overrides: dict[str, Any]) -> SearchConfig:
    data = read_yaml(path) if path is not None else {}
    data.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return SearchConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{path or 'search settings'}:\n{format_validation_error(error)}") from None


def find_model(config: SearchConfig) -> ModelConfig:
    """The searched model's entry (`model`, or the first of the models config), paths resolved."""
    models = read_models(config.models_config)
    if config.model is None:
        return models[0]
    for model in models:
        if model.id == config.model:
            return model
    known = ", ".join(model.id for model in models)
    raise ConfigError(f"{config.models_config}: no model with id {config.model!r} (known: {known})")
