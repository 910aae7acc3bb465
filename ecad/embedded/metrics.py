"""The embedded model's judge (models/ecad-shapes-judge) as the metrics `scene_match` (probability that
the image shows every attribute its caption asks for) and `scene_correct` (1 when the judge's best reading
matches them all, else 0).

Added through `ecad.metrics.add_metric`, so the metrics package never imports the embedded
model; `ecad/__init__.py` imports this module, so every entry point knows the names. The factories import
the judge only when called: listing metric names loads no torch model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ecad.metrics.catalog import add_metric

if TYPE_CHECKING:
    from ecad.metrics.base import Metric


def _scene_match(**options: Any) -> Metric:
    from ecad.embedded.judge import SceneMatchConfig, SceneMatchMetric

    return SceneMatchMetric(SceneMatchConfig(**options))


def _scene_correct(**options: Any) -> Metric:
    return _scene_match(**{"score": "correct", **options})


add_metric("scene_match", _scene_match)
add_metric("scene_correct", _scene_correct)
