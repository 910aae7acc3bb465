"""Image quality metrics behind one interface, selected by name (see docs/metrics.md)."""

from ecad.metrics.base import (
    Metric,
    MissingWeightsError,
    QualityMetric,
    SetMetric,
    summary_score,
)
from ecad.metrics.registry import (
    MetricFactory,
    available_metrics,
    get_metric,
    higher_is_better,
    register_metric,
    unregister_metric,
)

__all__ = [
    "Metric",
    "MetricFactory",
    "MissingWeightsError",
    "QualityMetric",
    "SetMetric",
    "available_metrics",
    "get_metric",
    "higher_is_better",
    "register_metric",
    "summary_score",
    "unregister_metric",
]
