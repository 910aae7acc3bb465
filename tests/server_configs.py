"""Test configurations for real server processes (see `harness.launcher`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def server_config(**server: Any) -> dict[str, Any]:
    """A test config: the committed ecad-tiny registry, small sizes, a short queue."""
    return {
        "server": {"max_queue": 3, "deadline_s": 60, "batch_window_ms": 20, **server},
        "models": [
            {
                "id": "ecad-tiny",
                "family": "pixart_alpha",
                "source": "random:tiny",
                "steps": 20,
                "default_size": "64x64",
                "min_side": 64,
                "max_side": 256,
                "schedules": str(ROOT / "schedules" / "ecad-tiny"),
            }
        ],
    }
