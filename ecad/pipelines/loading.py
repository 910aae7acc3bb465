"""Build a diffusers pipeline from a model entry: a local folder, a hub id, or a tiny random model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import diffusers

from ecad.config import RANDOM_SOURCE, ModelConfig
from ecad.dtypes import torch_dtype

logger = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The weights a model entry names cannot be loaded; says what is missing."""


def _is_local(source: str) -> bool:
    return source.startswith((".", "/", "~")) or Path(source).expanduser().exists()


def _from_pretrained(cls: Any, source: str, **kwargs: Any) -> Any:
    local = _is_local(source)
    if local and not Path(source).expanduser().is_dir():
        raise ModelLoadError(f"model folder {source!r} does not exist")
    try:
        return cls.from_pretrained(
            str(Path(source).expanduser()) if local else source, local_files_only=local, **kwargs
        )
    except OSError as error:
        where = "folder" if local else "hub id"
        raise ModelLoadError(
            f"cannot load {cls.__name__} from {where} {source!r}: {error}. Download the weights "
            "(e.g. `huggingface-cli download <id> --local-dir <folder>`) and point `source` at the folder."
        ) from error


def build_random_pipeline(config: ModelConfig) -> Any:
    from ecad.pipelines.tiny import tiny_flux_pipeline, tiny_pixart_pipeline

    if config.family == "flux":
        return tiny_flux_pipeline()
    return tiny_pixart_pipeline("sigma" if config.family == "pixart_sigma" else "alpha")


def load_transformer_config(config: ModelConfig) -> dict[str, Any]:
    """The transformer's config alone (no weights): enough for schedule shapes and MAC counts."""
    if config.source == RANDOM_SOURCE:
        return dict(build_random_pipeline(config).transformer.config)
    transformer_class = getattr(diffusers, config.adapter.transformer_class)
    source = config.transformer or config.source
    local = _is_local(source)
    nested = not local or (Path(source).expanduser() / "transformer").is_dir()
    try:
        return dict(
            transformer_class.load_config(
                str(Path(source).expanduser()) if local else source,
                subfolder="transformer" if nested else None,
                local_files_only=local,
            )
        )
    except OSError as error:
        raise ModelLoadError(f"cannot read the transformer config of {source!r}: {error}") from error


def load_pipeline(config: ModelConfig) -> Any:
    """The pipeline for `config`, on its device and dtype, with the progress bar off."""
    dtype = torch_dtype(config.dtype)
    if config.source == RANDOM_SOURCE:
        pipe = build_random_pipeline(config)
    else:
        cls = getattr(diffusers, config.adapter.pipeline_class)
        kwargs: dict[str, Any] = {"dtype": dtype}
        if config.transformer is not None:
            transformer_class = getattr(diffusers, config.adapter.transformer_class)
            source = config.transformer
            # A local folder may be the transformer itself or a whole pipeline holding one.
            nested = not _is_local(source) or (Path(source).expanduser() / "transformer").is_dir()
            subfolder = {"subfolder": "transformer"} if nested else {}
            kwargs["transformer"] = _from_pretrained(transformer_class, source, dtype=dtype, **subfolder)
        pipe = _from_pretrained(cls, config.source, **kwargs)
    # `.to(dtype)` on an already-matching pipeline only warns; move what differs.
    pipe = pipe.to(config.device) if pipe.dtype == dtype else pipe.to(config.device, dtype)
    pipe.set_progress_bar_config(disable=True)
    logger.info(
        "loaded %s (%s) from %s on %s/%s", config.id, config.family, config.source, config.device, dtype
    )
    return pipe
