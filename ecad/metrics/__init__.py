"""Image quality metrics behind one interface, selected by name (see docs/metrics.md)."""

from ecad.metrics.base import (
    Metric,
    MissingWeightsError,
    QualityMetric,
    SetMetric,
    summary_score,
)
from ecad.metrics.catalog import (
    MetricFactory,
    add_metric,
    available_metrics,
    get_metric,
    higher_is_better,
    remove_metric,
)

__all__ = [
    "Metric",
    "MetricFactory",
    "MissingWeightsError",
    "QualityMetric",
    "SetMetric",
    "add_metric",
    "available_metrics",
    "get_metric",
    "higher_is_better",
    "remove_metric",
    "summary_score",
]
