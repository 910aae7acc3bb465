"""Shared fixtures: real `ecad serve` processes for the server tests."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest

# In-process tests of server modules record Prometheus series; multiprocess mode needs a folder.
# Served processes get their own (`ecad serve` sets it before anything imports prometheus_client).
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="ecad-test-prometheus-"))

from harness.launcher import RunningServer, launch


@pytest.fixture(scope="session")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RunningServer]]:
    """Start servers on demand; all are stopped at the end of the session."""
    started: list[RunningServer] = []

    def start(config: dict[str, Any], api_key: str | None = None) -> RunningServer:
        server = launch(config, tmp_path_factory.mktemp("server"), api_key)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
