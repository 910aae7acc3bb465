"""What the server knows about each served model before any worker has loaded it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ecad.config import ModelConfig
from ecad.models import Architecture, get_adapter
from ecad.registry import Registry, TierRule, exact_only, load_registry
from server.admission import ModelQueue
from server.tiers import LatencyModel

logger = logging.getLogger(__name__)


def load_model_registry(
    model: ModelConfig, directory: Path | None, rule: TierRule, architecture: Architecture | None = None
) -> Registry:
    """The model's registry, or every tier served uncached when it has none (`directory` None)."""
    if directory is None:
        return exact_only(
            model.id, model.family, model.steps, architecture or get_adapter(model.family).reference
        )
    return load_registry(
        directory,
        model_id=model.id,
        family=model.family,
        steps=model.steps,
        architecture=architecture,
        rule=rule,
    )


@dataclass
class ModelRuntime:
    """One served model as the API processes see it. `queue` is shared by all of them; `latency` is
    learned per process."""

    config: ModelConfig
    registry: Registry
    registry_dir: Path | None  # None: the model has no registry and runs every tier uncached
    queue: ModelQueue
    latency: LatencyModel = field(default_factory=LatencyModel)

    @property
    def api_path(self) -> str:
        """The name of the model's LitAPI (its queue and workers); never served as a route."""
        return f"/internal/models/{self.config.id}"

    @classmethod
    def build(cls, model: ModelConfig, directory: Path, rule: TierRule, max_queue: int) -> ModelRuntime:
        """Checks the registry against the model's config (the worker checks it again against the
        loaded transformer's blocks), so a bad one stops start-up before any worker is spawned."""
        registry_dir: Path | None = directory
        if model.schedules is None and not directory.exists():
            logger.warning("model %s has no registry at %s: every tier runs uncached", model.id, directory)
            registry_dir = None
        registry = load_model_registry(model, registry_dir, rule)
        return cls(model, registry, registry_dir, ModelQueue(model.id, max_queue))
