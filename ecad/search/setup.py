"""What a search derives from its config once: the model, its architecture and the evaluation setups."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ecad.config import ModelConfig
from ecad.models import Architecture, get_adapter
from ecad.pipelines.loading import load_transformer_config
from ecad.schedule import Schedule
from ecad.search.config import SearchConfig, find_model
from ecad.search.evaluator import EvaluationSetup
from ecad.search.prompts import read_prompts


@dataclass
class SearchSetup:
    """What the driver derives from the config once: model, architecture, workload and evaluation setup
    (and the same setup on the validation prompts, when the config names some)."""

    config: SearchConfig
    model: ModelConfig
    architecture: Architecture
    evaluation: EvaluationSetup
    validation: EvaluationSetup | None = None

    @property
    def steps(self) -> int:
        return self.evaluation.steps

    @property
    def registry_dir(self) -> Path:
        """`--out`, else the folder the server reads for this model (`schedules` of its entry, else
        schedules/<id> beside the models config)."""
        return self.config.out or self.model.registry_dir(self.config.models_config.resolve().parent)

    def schedule(self, bits: np.ndarray, name: str) -> Schedule:
        return Schedule.from_genome(
            torch.from_numpy(np.asarray(bits, dtype=bool)), self.architecture, self.steps, name=name
        )


def prepare(config: SearchConfig) -> SearchSetup:
    model = find_model(config)
    # Named from here on (the default is the config's first model): outputs and checkpoints use its id.
    config = config.model_copy(update={"model": model.id})
    adapter = get_adapter(model.family)
    architecture = adapter.architecture(load_transformer_config(model))
    width, height = model.native_size
    if config.resolution is not None:
        width = height = config.resolution
    default_prompts = "imagereward-100"
    prompts = read_prompts(config.prompts or default_prompts, limit=config.prompt_limit)
    evaluation = EvaluationSetup(
        model=model,
        prompts=tuple(prompts),
        seeds=tuple(range(config.images_per_prompt)),
        steps=config.steps or model.steps,
        guidance=config.guidance if config.guidance is not None else model.guidance_scale,
        height=height,
        width=width,
        text_tokens=config.text_tokens,
        metric=config.metric,
        metric_options=tuple(sorted(config.metric_options.items())),
        batch_size=config.batch_size,
        measure_latency=config.cost == "latency",
        threads=config.threads,
    )
    validation = None
    if config.validation_prompts is not None:
        held = read_prompts(config.validation_prompts, limit=config.validation_prompt_limit)
        overlap = sorted(set(held) & set(prompts))
        if overlap:
            raise ValueError(
                f"validation prompts must differ from the search's; {len(overlap)} are in both, "
                f"e.g. {overlap[0]!r}"
            )
        validation = replace(evaluation, prompts=tuple(held))
    return SearchSetup(config, model, architecture, evaluation, validation)
