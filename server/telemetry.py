"""Prometheus series, shared by the API processes and the inference workers (multiprocess mode).

`PROMETHEUS_MULTIPROC_DIR` must be set before this module is first imported in any process: the
`serve` command sets it before importing the server, and the workers inherit it.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    raise RuntimeError("PROMETHEUS_MULTIPROC_DIR must be set before importing server.telemetry")

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)
_TIER_LABELS = ("model", "tier", "schedule")

REQUEST_LATENCY = Histogram(
    "ecad_request_duration_seconds",
    "End-to-end latency of successful image requests, admission to last byte.",
    _TIER_LABELS,
    buckets=_LATENCY_BUCKETS,
)
PIPELINE_TIME = Histogram(
    "ecad_pipeline_duration_seconds",
    "Time of one pipeline call (a batch of compatible requests), encoding excluded.",
    _TIER_LABELS,
    buckets=_LATENCY_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "ecad_queue_wait_seconds",
    "Time from admission until a worker starts the request's batch.",
    ("model",),
    buckets=(0.005, 0.01, 0.05, *_LATENCY_BUCKETS),
)
QUEUE_DEPTH = Gauge(
    "ecad_queue_depth",
    "Requests admitted and not finished (waiting or running), per model.",
    ("model",),
    multiprocess_mode="livemostrecent",
)
REQUESTS = Counter(
    "ecad_requests_total",
    "Image requests by outcome (HTTP status; 'cancelled' when the client went away).",
    ("model", "tier", "status"),
)
IMAGES = Counter("ecad_images_generated_total", "Images generated.", _TIER_LABELS)
BATCH_IMAGES = Histogram(
    "ecad_batch_images",
    "Images per pipeline call.",
    ("model",),
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64),
)
COMPONENT_CALLS = Counter(
    "ecad_component_calls_total",
    "Cacheable component calls by what the schedule did: computed, reused or skipped (dead work).",
    (*_TIER_LABELS, "action"),
)


def render() -> tuple[bytes, str]:
    """All processes' series, aggregated (a fresh registry per scrape, as multiprocess mode requires)."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST
