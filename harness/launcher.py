"""Start a real `ecad serve` process on a free loopback port and wait until it is ready.

Used by the tests and the benchmarks; not part of serving.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from harness.polling import wait_until
from server.config import load_config

ECAD = Path(sys.executable).parent / "ecad"
START_TIMEOUT_S = 150


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    api_key: str | None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def ready_workers(self, timeout_s: float = START_TIMEOUT_S) -> list[dict[str, Any]]:
        """Poll /readyz until it answers 200; the live workers it lists."""

        def workers() -> list[dict[str, Any]] | None:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.process.returncode}:\n{self.log_text()[-4000:]}"
                )
            try:
                response = httpx.get(f"{self.base_url}/readyz", timeout=2)
            except httpx.TransportError:
                return None
            return response.json()["workers"] if response.status_code == 200 else None

        try:
            return wait_until(workers, "server not ready", timeout_s, interval_s=0.2)
        except TimeoutError as error:
            raise TimeoutError(f"{error}:\n{self.log_text()[-4000:]}") from None

    def stop(self) -> None:
        """SIGTERM (graceful: the server stops its workers), then make sure its process group is gone."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def served_config(path: Path) -> dict[str, Any]:
    """A config file as `launch` serves it from its scratch folder: read the way `ecad serve` reads it
    (relative paths resolved against the file's folder), with each model's registry folder explicit."""
    config = load_config(path)
    for model in config.models:
        model.schedules = config.registry_dir(model)
    return config.model_dump(mode="json", exclude_none=True)


def launch(config: dict[str, Any], folder: Path, api_key: str | None = None) -> RunningServer:
    """Write `config` (its state folder inside `folder`) and serve it; returns once /readyz is 200."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {**config, "server": {**config.get("server", {}), "state_dir": str(folder / "state")}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    env = {**os.environ, "ECAD_API_KEYS": api_key or ""}
    log = folder / "server.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(ECAD), "serve", "--config", str(folder / "config.yaml"), "--port", str(port)],
            cwd=folder,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so `stop` can reach every child
        )
    server = RunningServer(process, port, log, api_key)
    try:
        server.ready_workers()
    except BaseException:
        server.stop()
        raise
    return server
