"""Build the LitServer: one LitAPI per model, the images spec, and the plain routes around it.

Import this module only after `PROMETHEUS_MULTIPROC_DIR` is set (see `server.cli.serve`).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import litserve as ls
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from litserve.utils import WorkerSetupStatus
from prometheus_client import multiprocess
from starlette.convertors import Convertor, register_url_convertor
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import errors, metrics
from server.admission import ModelQueue
from server.api import ImageWorkerAPI, load_model_registry
from server.config import AppConfig
from server.gateway import Gateway, ModelRuntime, request_id_of
from server.loop import GroupingLoop
from server.spec import ImagesSpec
from server.state import IMAGE_ID, MEDIA_TYPES, StateDir, process_alive

logger = logging.getLogger(__name__)


class RequestEnvelope:
    """Every request gets an id (`request.state.request_id`, the response's `x-request-id`), and an
    exception that escaped a route becomes an OpenAI-shaped 500 on a connection that stays usable.

    Plain ASGI rather than BaseHTTPMiddleware, which would buffer streams and hide disconnects.
    Starlette's own last-resort handler sends its 500 and then re-raises, and uvicorn closes the
    connection on an exception: the client's next request on that keep-alive connection would be reset.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = f"req_{uuid.uuid4().hex}"
        scope.setdefault("state", {})["request_id"] = request_id
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                if "x-request-id" not in headers:
                    headers.append("x-request-id", request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("unhandled error on %s", scope.get("path"))
            if started:  # too late for a status: the client sees the response end early
                raise
            await errors.internal().response(request_id)(scope, receive, send)


class ImageIdConvertor(Convertor[str]):
    """Matches only ids the server hands out, so `/v1/images/generations` is never taken for one."""

    regex = IMAGE_ID.pattern.strip("^$")

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("image_id", ImageIdConvertor())


def load_keys(config: AppConfig) -> frozenset[str]:
    auth = config.server.auth
    keys = {key.strip() for key in os.environ.get(auth.api_keys_env, "").split(",")}
    if auth.api_keys_file is not None:
        lines = auth.api_keys_file.read_text(encoding="utf-8").splitlines()
        keys |= {line.strip() for line in lines if not line.lstrip().startswith("#")}
    keys.discard("")
    return frozenset(keys)


def build_server(config: AppConfig, state: StateDir) -> tuple[ls.LitServer, Gateway]:
    """The configured server, ready to `run`, and its gateway (which counts in-flight requests);
    registries are checked here, before any worker starts."""
    server_config = config.server
    runtimes: dict[str, ModelRuntime] = {}
    registry_dirs: dict[str, Path | None] = {}
    for model in config.models:
        directory = config.registry_dir(model)
        if model.schedules is None and not directory.exists():
            logger.warning("model %s has no registry at %s: every tier runs uncached", model.id, directory)
            registry_dirs[model.id] = None
        else:
            registry_dirs[model.id] = directory
        registry = load_model_registry(model, registry_dirs[model.id], server_config.tier_rule)
        runtimes[model.id] = ModelRuntime(
            model,
            registry,
            api_path=f"/internal/models/{model.id}",
            queue=ModelQueue(model.id, server_config.max_queue),
        )
    keys = load_keys(config)
    if not keys:
        logger.warning(
            "no API keys configured (env %s, file %s): the API is open to anyone who can reach it",
            server_config.auth.api_keys_env,
            server_config.auth.api_keys_file,
        )
    gateway = Gateway(config, runtimes, keys, state)
    apis = [
        ImageWorkerAPI(
            model,
            registry_dirs[model.id],
            server_config.tier_rule,
            state.root,
            spec=ImagesSpec(runtimes[model.id].api_path, gateway if index == 0 else None),
            loop=GroupingLoop(server_config.batch_window_ms / 1000, server_config.max_batch_images),
        )
        for index, model in enumerate(config.models)
    ]
    server = ls.LitServer(
        apis,
        accelerator="cpu",  # LitServe only spawns the processes; each model places itself (its `device`)
        devices=1,
        workers_per_device={api.api_path: api.model.workers_per_device for api in apis},
        timeout=False,  # deadlines are ours (per request, enforced while waiting), not a queue-wait check
        restart_workers=True,
        disable_openapi_url=True,
        healthcheck_path="/litserve/health",
        info_path="/litserve/info",
    )
    _remove_internal_routes(server)
    _add_routes(server, gateway, runtimes, state, config)
    _add_error_handlers(server)
    server.app.add_middleware(RequestEnvelope)
    return server, gateway


def _remove_internal_routes(server: ls.LitServer) -> None:
    """LitServe's `/`, `/litserve/health` and `/litserve/info` describe internals (paths, workers,
    devices) to anyone; `/healthz` and `/readyz` are the probes."""
    internal = {"/", server.healthcheck_path, server.info_path}
    server.app.router.routes[:] = [
        route for route in server.app.router.routes if getattr(route, "path", None) not in internal
    ]


def _add_routes(
    server: ls.LitServer,
    gateway: Gateway,
    runtimes: dict[str, ModelRuntime],
    state: StateDir,
    config: AppConfig,
) -> None:
    created = int(time.time())

    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz() -> JSONResponse:
        statuses = dict(server.workers_setup_status or {})
        workers = state.live_workers()
        served = set(workers.values())
        ready = (
            bool(statuses)
            and all(value == WorkerSetupStatus.READY for value in statuses.values())
            and all(model in served for model in runtimes)
        )
        draining = state.is_draining()
        ready = ready and not draining
        body = {
            "status": "draining" if draining else "ready" if ready else "starting",
            "workers": [{"pid": pid, "model": model} for pid, model in sorted(workers.items())],
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    def model_object(runtime: ModelRuntime) -> dict[str, Any]:
        model = runtime.config
        tiers = {
            tier: {"schedule": entry.name, "digest": entry.digest, "macs_ratio": entry.macs_ratio}
            for tier, entry in runtime.registry.tiers.items()
        }
        return {
            "id": model.id,
            "object": "model",
            "created": created,
            "owned_by": "ecad-server",
            "x_ecad": {
                "family": model.family,
                "steps": model.steps,
                "default_size": model.default_size,
                "render_size": model.render_size,
                "sizes": {"min_side": model.min_side, "max_side": model.max_side, "multiple": 16},
                "tiers": tiers,
            },
        }

    async def list_models(request: Request) -> JSONResponse:
        try:
            gateway.authorize(request)
        except errors.ApiError as error:
            return error.response(request_id_of(request))
        return JSONResponse({"object": "list", "data": [model_object(r) for r in runtimes.values()]})

    async def retrieve_model(request: Request, model_id: str) -> JSONResponse:
        try:
            gateway.authorize(request)
            if model_id not in runtimes:
                raise errors.model_not_found(model_id)
        except errors.ApiError as error:
            return error.response(request_id_of(request))
        return JSONResponse(model_object(runtimes[model_id]))

    async def prometheus(request: Request) -> Response:
        if config.server.auth.protect_metrics:
            try:
                gateway.authorize(request)
            except errors.ApiError as error:
                return error.response(request_id_of(request))
        # Gauges of workers that died (and were restarted) would otherwise linger.
        for path in state.prometheus.glob("gauge_live*_*.db"):
            pid = path.stem.rsplit("_", 1)[-1]
            if pid.isdigit() and not process_alive(int(pid)):
                multiprocess.mark_process_dead(int(pid))
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    async def image_file(image_id: str) -> Response:
        ttl_s = config.server.url_responses.ttl_s
        path = state.image_path(image_id, ttl_s) if config.server.url_responses.enabled else None
        if path is None:
            return errors.not_found(f"No image '{image_id}' (unknown or expired).").response()
        return FileResponse(path, media_type=MEDIA_TYPES[path.suffix.lstrip(".")])

    app = server.app
    app.add_api_route("/healthz", healthz, methods=["GET", "HEAD"])
    app.add_api_route("/readyz", readyz, methods=["GET", "HEAD"])
    app.add_api_route("/v1/models", list_models, methods=["GET"])
    app.add_api_route("/v1/models/{model_id}", retrieve_model, methods=["GET"])
    app.add_api_route("/metrics", prometheus, methods=["GET"])
    app.add_api_route("/v1/images/{image_id:image_id}", image_file, methods=["GET", "HEAD"])


def _add_error_handlers(server: ls.LitServer) -> None:
    async def http_error(request: Request, exc: Any) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(exc.status_code)
        message = exc.detail if isinstance(exc.detail, str) else "Request failed."
        error = errors.ApiError(exc.status_code, message, code=code, headers=dict(exc.headers or {}))
        if exc.status_code >= 500:
            error.type = errors.SERVER_ERROR
        return error.response(request_id_of(request))

    async def validation_error(request: Request, exc: Any) -> JSONResponse:
        problem = exc.errors()[0] if exc.errors() else {}
        loc = [str(part) for part in problem.get("loc", ()) if part not in ("body", "query", "path")]
        param = ".".join(loc) or None
        return errors.invalid(
            param, f"Invalid value for '{param}': {problem.get('msg', 'invalid')}."
        ).response(request_id_of(request))

    server.app.add_exception_handler(StarletteHTTPException, http_error)
    server.app.add_exception_handler(RequestValidationError, validation_error)
