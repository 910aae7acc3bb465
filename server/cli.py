"""The `ecad` console script: the library's commands plus `serve` and `registry`."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ecad.cli import app
from ecad.config import ConfigError
from ecad.files import write_bytes_atomic
from ecad.registry import RegistryError, write_registry
from ecad.schedule import Schedule, ScheduleFileError, fora, load_schedule
from ecad.tiers import CACHED_TIERS
from server.config import AppConfig, ServerConfig, load_config, parse_size
from server.state import StateDir

if TYPE_CHECKING:
    from server.gateway import Gateway

registry_app = typer.Typer(no_args_is_help=True, help="Write schedule registries (schedules/<model>/).")
app.add_typer(registry_app, name="registry")


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@dataclass
class _Shutdown:
    """SIGTERM: refuse new requests (503, `/readyz` 503), let in-flight ones finish for up to `drain_s`,
    then stop the way LitServe shuts down, on KeyboardInterrupt (a plain SIGTERM would orphan its
    processes). A second SIGTERM stops at once. Forked API servers inherit the handler; when LitServe
    stops them they just exit."""

    owner: int
    state: StateDir
    gateway: Gateway
    drain_s: float
    draining: bool = False

    def __call__(self, *_: object) -> None:
        if os.getpid() != self.owner:
            sys.exit(0)
        if self.draining:
            self._stop()
            return
        self.draining = True
        self.state.start_draining()
        threading.Thread(target=self._drain, name="drain", daemon=True).start()

    def _drain(self) -> None:
        deadline = time.monotonic() + self.drain_s
        while self.gateway.in_flight() > 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        self._stop()

    def _stop(self) -> None:
        os.kill(self.owner, signal.SIGINT)  # a real signal wakes the main thread; interrupt_main() would not


def _load(config: Path) -> AppConfig:
    try:
        return load_config(config)
    except ConfigError as error:
        raise _fail(str(error)) from None


@app.command()
def serve(
    config: Annotated[Path, typer.Option(help="Server configuration (YAML).")] = Path("config.yaml"),
    host: Annotated[str | None, typer.Option(envvar="ECAD_HOST", help="Overrides server.host.")] = None,
    port: Annotated[int | None, typer.Option(envvar="ECAD_PORT", help="Overrides server.port.")] = None,
) -> None:
    """Serve the configured models on an OpenAI-compatible /v1/images/generations."""
    app_config = _load(config)
    overrides = {key: value for key, value in (("host", host), ("port", port)) if value is not None}
    if overrides:
        try:
            app_config.server = ServerConfig.model_validate({**app_config.server.model_dump(), **overrides})
        except ValueError as error:
            raise _fail(f"--host/--port: {error}") from None
    server_config = app_config.server
    logging.basicConfig(
        level=server_config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    temporary = server_config.state_dir is None
    state = StateDir(server_config.state_dir or Path(tempfile.mkdtemp(prefix="ecad-serve-")))
    try:
        state.start_run()
        _serve(app_config, state)
    finally:
        if temporary:
            shutil.rmtree(state.root, ignore_errors=True)


def _serve(app_config: AppConfig, state: StateDir) -> None:
    server_config = app_config.server
    # Before anything imports prometheus_client, in this process and (inherited) in every child.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(state.prometheus)
    from server.app import build_server

    try:
        server, gateway = build_server(app_config, state)
    except (RegistryError, OSError) as error:
        raise _fail(str(error)) from None
    typer.echo(f"state folder: {state.root}", err=True)
    signal.signal(signal.SIGTERM, _Shutdown(os.getpid(), state, gateway, server_config.deadline_s))
    # The drain ends by sending SIGINT to this process. A shell starts background jobs (`ecad serve &`,
    # nohup) with SIGINT ignored, and Python then leaves it ignored: SIGTERM would never finish.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        server.run(
            host=server_config.host,
            port=server_config.port,
            generate_client_file=False,
            log_level=server_config.log_level,
        )
    except RuntimeError as error:  # a worker failed its setup; its log above says why
        raise _fail(f"{error} (see the worker log above)", code=1) from None


@registry_app.command("heuristic")
def registry_heuristic(
    config: Annotated[Path, typer.Option(help="Server configuration naming the model.")] = Path(
        "config.yaml"
    ),
    model: Annotated[str | None, typer.Option(help="Model id; default: the first model.")] = None,
    fast: Annotated[int, typer.Option(help="FORA interval of the fast tier.")] = 4,
    balanced: Annotated[int, typer.Option(help="FORA interval of the balanced tier.")] = 3,
    best: Annotated[int, typer.Option(help="FORA interval of the best tier.")] = 2,
) -> None:
    """Write a FORA-based registry for a model (a stand-in until a searched front exists).

    Loads the model to read its architecture, so the schedules match its blocks exactly.
    """
    from ecad.models import architecture_of
    from ecad.pipelines.loading import load_pipeline

    app_config = _load(config)
    entry = next((m for m in app_config.models if model in (None, m.id)), None)
    if entry is None:
        raise _fail(f"no model {model!r} in {config}")
    architecture = architecture_of(load_pipeline(entry).transformer, entry.family)
    width, height = parse_size(entry.default_size)
    schedules: dict[str, Schedule] = {}
    tiers: dict[str, str] = {}
    for tier, every in zip(CACHED_TIERS, (fast, balanced, best), strict=True):
        schedule = fora(architecture, entry.steps, every)
        schedule.metadata.model_id = entry.id
        schedule.metadata.resolution = (height, width)
        schedule.metadata.guidance_scale = entry.guidance_scale
        schedules[f"{schedule.name}.json"] = schedule
        tiers[tier] = f"{schedule.name}.json"
    path = write_registry(
        app_config.registry_dir(entry),
        model_id=entry.id,
        schedules=schedules,
        tiers=tiers,
        provenance=f"FORA heuristics (fast every {fast}, balanced every {balanced}, best every {best}) "
        "written by `ecad registry heuristic`; no quality measured.",
    )
    typer.echo(f"wrote {path}")


@registry_app.command("create")
def registry_create(
    directory: Annotated[Path, typer.Argument(help="Registry folder to write, e.g. schedules/pixart-alpha.")],
    model_id: Annotated[str, typer.Option(help="Served model id.")],
    family: Annotated[str, typer.Option(help="pixart_alpha, pixart_sigma or flux.")],
    tier: Annotated[list[str], typer.Option(help="TIER=schedule.json (copied verbatim); repeatable.")],
    provenance: Annotated[str, typer.Option(help="Where the schedules come from.")] = "",
) -> None:
    """Build a registry from existing schedule files (e.g. published ones) with explicit tiers."""
    schedules: dict[str, Schedule] = {}
    tiers: dict[str, str] = {}
    for item in tier:
        name, _, source = item.partition("=")
        if name not in CACHED_TIERS or not source:
            raise _fail(f"--tier {item!r}: expected one of {', '.join(CACHED_TIERS)}=FILE")
        source_path = Path(source)
        try:
            schedule = load_schedule(source_path, family=family)
        except ScheduleFileError as error:
            raise _fail(str(error)) from None
        write_bytes_atomic(directory / source_path.name, source_path.read_bytes())
        schedules[source_path.name] = schedule
        tiers[name] = source_path.name
    path = write_registry(
        directory,
        model_id=model_id,
        schedules=schedules,
        tiers=tiers,
        provenance=provenance,
        save_schedules=False,
    )
    typer.echo(f"wrote {path}")


__all__ = ["app"]
