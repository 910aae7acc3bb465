"""Metrics selected by name, as config files and command lines do: `get_metric("clip", model_dir=...)`.

Built-in factories import their module only when called, so listing or validating metric names does not
load transformers or any weights. Other packages add theirs with `add_metric`: the embedded model's
judge does so in `ecad.embedded.metrics`, which importing `ecad` loads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ecad.metrics.base import Metric

MetricFactory = Callable[..., "Metric"]


def _image_reward(**options: Any) -> Metric:
    from ecad.metrics.image_reward import ImageRewardConfig, ImageRewardMetric

    return ImageRewardMetric(ImageRewardConfig(**options))


def _clip(**options: Any) -> Metric:
    from ecad.metrics.clip import ClipConfig, ClipScoreMetric

    return ClipScoreMetric(ClipConfig(**options))


def _psnr(**options: Any) -> Metric:
    from ecad.metrics.fidelity import PsnrMetric

    if options:
        raise TypeError(f"psnr takes no options, got {sorted(options)}")
    return PsnrMetric()


def _ssim(**options: Any) -> Metric:
    from ecad.metrics.fidelity import SsimConfig, SsimMetric

    return SsimMetric(SsimConfig(**options))


def _fid(**options: Any) -> Metric:
    from ecad.metrics.fid import FidConfig, FidMetric

    return FidMetric(FidConfig(**options))


_FACTORIES: dict[str, MetricFactory] = {
    "image_reward": _image_reward,
    "clip": _clip,
    "psnr": _psnr,
    "ssim": _ssim,
    # The search's weight-free default: SSIM against the no-cache image of the same seed. SSIM rather
    # than PSNR because it is bounded (1 = identical), so the registry's tier rule (relative quality
    # loss against no-cache) applies; PSNR of an identical image is infinite.
    "fidelity": _ssim,
    "fid": _fid,
}


# Known without building the metric (which may load gigabytes of weights).
_LOWER_IS_BETTER = {"fid"}


def add_metric(
    name: str, factory: MetricFactory, *, higher_is_better: bool = True, replace: bool = False
) -> None:
    """Make `get_metric(name, **options)` call `factory(**options)`; a taken name needs replace=True."""
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"metric name {name!r} must be letters, digits and underscores")
    if name in _FACTORIES and not replace:
        raise ValueError(f"metric {name!r} is already in the catalog")
    _FACTORIES[name] = factory
    if higher_is_better:
        _LOWER_IS_BETTER.discard(name)
    else:
        _LOWER_IS_BETTER.add(name)


def higher_is_better(name: str) -> bool:
    """The direction of metric `name`, without loading it."""
    if name not in _FACTORIES:
        raise KeyError(f"unknown metric {name!r}; available: {', '.join(available_metrics())}")
    return name not in _LOWER_IS_BETTER


def remove_metric(name: str) -> None:
    """Remove a metric name (a plugin being unloaded); unknown names are an error."""
    if name not in _FACTORIES:
        raise KeyError(f"unknown metric {name!r}")
    del _FACTORIES[name]
    _LOWER_IS_BETTER.discard(name)


def available_metrics() -> list[str]:
    return sorted(_FACTORIES)


def get_metric(name: str, **options: Any) -> Metric:
    """Build the metric `name` with its config options (e.g. weights_dir, device, batch_size)."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; available: {', '.join(available_metrics())}") from None
    return factory(**options)
