"""deploy/grafana/dashboard.json queries only series the server exports (docs/metrics.md's table, which
tests/test_server_api.py keeps equal to a live /metrics)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboard.json"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def documented_series() -> dict[str, str]:
    """Series name → type, from the table in docs/metrics.md."""
    text = (ROOT / "docs" / "metrics.md").read_text()
    return dict(re.findall(r"^\| `(ecad_\w+)` \| (\w+) \|", text, re.M))


def exposed_names() -> set[str]:
    """What Prometheus can scrape: counters and gauges as named, histograms only through their suffixes."""
    names: set[str] = set()
    for name, kind in documented_series().items():
        names |= {name + suffix for suffix in HISTOGRAM_SUFFIXES} if kind == "histogram" else {name}
    return names


def expressions(node: Any) -> Iterator[str]:
    """Every PromQL string in the dashboard: panel targets' `expr` and template variables' queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query", "definition") and isinstance(value, str):
                yield value
            else:
                yield from expressions(value)
    elif isinstance(node, list):
        for item in node:
            yield from expressions(item)


def referenced(dashboard: dict[str, Any]) -> set[str]:
    return {name for expr in expressions(dashboard) for name in re.findall(r"\becad_\w+", expr)}


def test_dashboard_references_only_exported_series() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    names = referenced(dashboard)
    assert names, "no ecad_ series found in the dashboard"
    assert not names - exposed_names(), f"not exported by the server: {sorted(names - exposed_names())}"


def test_a_histogram_without_suffix_or_a_renamed_series_is_caught() -> None:
    # A histogram is scraped only as _bucket/_sum/_count, so its bare name selects nothing.
    assert "ecad_request_duration_seconds" not in exposed_names()
    assert "ecad_request_duration_seconds_bucket" in exposed_names()
    bad = {"panels": [{"targets": [{"expr": "rate(ecad_queue_depth_total[5m]) + ecad_batch_images"}]}]}
    assert referenced(bad) - exposed_names() == {"ecad_queue_depth_total", "ecad_batch_images"}


def test_dashboard_covers_the_operator_views() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = " ".join(expressions(dashboard))
    # Latency per tier and schedule, queue depth and wait, throughput, errors and 429s, work saved.
    assert re.search(
        r"histogram_quantile\(0\.\d+, sum by \(le, tier, schedule\) "
        r"\(rate\(ecad_request_duration_seconds_bucket",
        queries,
    )
    for needle in (
        "ecad_queue_depth",
        "ecad_queue_wait_seconds_bucket",
        "rate(ecad_images_generated_total",
        'status=~"5.."',
        'status="429"',
        'ecad_component_calls_total{model=~"$model",action!="computed"}',
    ):
        assert needle in queries, needle
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
