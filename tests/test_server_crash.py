"""A killed inference worker fails its request with a 5xx; LitServe restarts it and serving resumes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from openai.types import ImagesResponse

from harness.launcher import ECAD, RunningServer, free_port, launch
from harness.polling import wait_until
from tests.server_configs import server_config


@pytest.fixture(scope="module")
def server(start_server: Callable[..., RunningServer]) -> RunningServer:
    return start_server(server_config(), api_key=None)


def group_is_gone(group: int) -> bool:
    return subprocess.run(["pgrep", "-g", str(group)], capture_output=True, check=False).returncode != 0


def started_groups(server: RunningServer) -> float:
    text = httpx.get(f"{server.base_url}/metrics").text
    match = re.search(r'^ecad_queue_wait_seconds_count\{model="ecad-tiny"\} (\S+)', text, re.M)
    return float(match[1]) if match else 0.0


def start_long_request(
    pool: ThreadPoolExecutor, server: RunningServer, client: openai.OpenAI, prompt: str, n: int = 1
) -> Future[ImagesResponse]:
    """Submit a 100-step exact request and return once a worker has taken it."""
    before = started_groups(server)
    pending = pool.submit(
        client.images.generate,
        prompt=prompt,
        size="256x256",
        n=n,
        extra_body={"num_inference_steps": 100, "quality": "exact"},
    )
    wait_until(lambda: started_groups(server) > before, "the request never started")
    return pending


def test_open_server_warns_and_serves(server: RunningServer) -> None:
    assert "API is open" in server.log_text()
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="anything", max_retries=0)
    assert client.images.generate(prompt="open", size="64x64").data[0].b64_json


def test_killed_worker_fails_request_then_server_recovers(server: RunningServer) -> None:
    (worker,) = server.ready_workers()
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0, timeout=45)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = start_long_request(pool, server, client, "doomed")
        os.kill(worker["pid"], signal.SIGKILL)
        with pytest.raises(openai.InternalServerError) as caught:
            pending.result()
    assert caught.value.status_code == 500
    assert caught.value.code == "worker_crashed"
    counted = httpx.get(f"{server.base_url}/metrics").text
    assert re.search(
        r'^ecad_requests_total\{model="ecad-tiny",status="500",tier="exact"\} 1\.0$', counted, re.M
    )
    # Documented aftermath: LitServe starts a new worker; /readyz is 503 until it is ready.
    (replacement,) = server.ready_workers()
    assert replacement["pid"] != worker["pid"]
    assert server.process.poll() is None
    response = client.images.generate(prompt="after the crash", size="64x64")
    assert response.data[0].b64_json


def test_sigterm_drains_then_stops_every_server_process(start_server: Callable[..., RunningServer]) -> None:
    """kill / systemd / Kubernetes send SIGTERM: finish what is running, refuse new work, leave nothing."""
    server = start_server(server_config(), api_key=None)
    group = os.getpgid(server.process.pid)
    members = subprocess.run(["pgrep", "-g", str(group)], capture_output=True, text=True, check=True)
    assert len(members.stdout.split()) >= 3  # the main process, an API server, a worker at least
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0, timeout=120)
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = start_long_request(pool, server, client, "in flight at shutdown", n=4)
        server.process.send_signal(signal.SIGTERM)
        readyz = f"{server.base_url}/readyz"
        wait_until(lambda: httpx.get(readyz).status_code != 200, "/readyz never reported the drain")
        ready = httpx.get(readyz)
        assert (ready.status_code, ready.json()["status"]) == (503, "draining")
        with pytest.raises(openai.InternalServerError) as refused:
            client.images.generate(prompt="too late", size="64x64")
        assert (refused.value.status_code, refused.value.code) == (503, "slow_down")
        assert refused.value.response.headers["retry-after"] == "1"
        assert len(running.result().data) == 4  # the in-flight request finished
    assert server.process.wait(timeout=60) == 0
    wait_until(lambda: group_is_gone(group), "server processes outlived the SIGTERM")
    log = server.log_text()
    for noise in ("Traceback", "Warning", "leaked semaphore"):
        assert noise not in log


def test_restart_on_a_kept_state_dir_serves_and_stops(start_server: Callable[..., RunningServer]) -> None:
    """Kubernetes keeps an emptyDir across container restarts: what one run left must not stop the next."""
    first = start_server(server_config(), api_key=None)
    state = first.log.parent / "state"
    client = openai.OpenAI(base_url=f"{first.base_url}/v1", api_key="x", max_retries=0)
    client.images.generate(prompt="first run", size="64x64")
    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(timeout=60) == 0
    assert (state / "draining").exists()  # what the restart must clear
    (state / "cancel" / "stale-request").touch()
    second = launch(yaml.safe_load((first.log.parent / "config.yaml").read_text()), first.log.parent)
    try:
        assert not (state / "draining").exists()
        assert list((state / "cancel").iterdir()) == []
        assert [int(path.name) for path in (state / "workers").iterdir()] == [
            worker["pid"] for worker in second.ready_workers()
        ]
        client = openai.OpenAI(base_url=f"{second.base_url}/v1", api_key="x", max_retries=0)
        assert client.images.generate(prompt="second run", size="64x64").data[0].b64_json
        second.process.send_signal(signal.SIGTERM)
        assert second.process.wait(timeout=60) == 0
    finally:
        second.stop()


def test_sigterm_stops_a_server_started_with_sigint_ignored(tmp_path: Path) -> None:
    """A shell starts background jobs (`ecad serve &`, nohup) with SIGINT ignored; the drain ends with a
    SIGINT to the main process, which must still stop it. With no `state_dir` the server works in a
    temporary folder, which it removes when it stops."""
    config = {**server_config(), "server": {}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (tmp_path / "server.log").open("wb") as sink:
        process = subprocess.Popen(
            [ECAD, "serve", "--config", str(tmp_path / "config.yaml"), "--port", str(port)],
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
    server = RunningServer(process, port, tmp_path / "server.log", None)
    try:
        server.ready_workers()
        group = os.getpgid(process.pid)
        match = re.search(r"^state folder: (.+)$", server.log_text(), re.M)
        assert match is not None
        state = Path(match[1])
        assert state.parent == Path(tempfile.gettempdir())
        assert (state / "workers").is_dir()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        wait_until(lambda: group_is_gone(group), "server processes outlived the SIGTERM")
        assert not state.exists()
    finally:
        server.stop()
