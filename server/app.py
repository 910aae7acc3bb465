"""Build the LitServer: one worker LitAPI per model, the gateway, and the routes around them.

Import this module only after `PROMETHEUS_MULTIPROC_DIR` is set (see `server.cli.serve`).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import litserve as ls
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import multiprocess
from starlette.convertors import Convertor, register_url_convertor
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import errors, telemetry
from server.auth import ApiKeys
from server.config import AppConfig
from server.gateway import Gateway, request_id_of
from server.loop import GroupingLoop
from server.protocol import ModelExtension, ModelList, ModelObject, SizeLimits, TierInfo, json_response
from server.runtime import ModelRuntime
from server.state import IMAGE_ID, MEDIA_TYPES, StateDir, process_alive
from server.transport import Transport, remove_litserve_routes
from server.worker import ImageWorker

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
IMAGES_ROUTES = ("/v1/images/generations", "/images/generations")


def build_server(config: AppConfig, state: StateDir) -> tuple[ls.LitServer, Gateway]:
    """The configured server, ready to `run`, and its gateway (which counts in-flight requests);
    registries are checked here, before any worker starts."""
    server_config = config.server
    runtimes = {
        model.id: ModelRuntime.build(
            model, config.registry_dir(model), server_config.tier_rule, server_config.max_queue
        )
        for model in config.models
    }
    keys = ApiKeys.load(server_config.auth)
    if keys.open:
        logger.warning(
            "no API keys configured (env %s, file %s): the API is open to anyone who can reach it",
            server_config.auth.api_keys_env,
            server_config.auth.api_keys_file,
        )
    grouping = GroupingLoop(server_config.batch_window_ms / 1000, server_config.max_batch_images)
    workers = [
        ImageWorker(
            runtime.config,
            runtime.api_path,
            runtime.registry_dir,
            server_config.tier_rule,
            state.root,
            grouping,
        )
        for runtime in runtimes.values()
    ]
    server = ls.LitServer(
        workers,
        accelerator="cpu",  # LitServe only spawns the processes; each model places itself (its `device`)
        devices=1,
        workers_per_device={worker.api_path: worker.model.workers_per_device for worker in workers},
        timeout=False,  # deadlines are ours (per request, enforced while waiting), not a queue-wait check
        restart_workers=True,
        disable_openapi_url=True,
        healthcheck_path="/litserve/health",
        info_path="/litserve/info",
    )
    transport = Transport(server)
    gateway = Gateway(config, runtimes, keys, state, transport)
    remove_litserve_routes(server)
    _add_routes(server.app, gateway, transport, config)
    server.app.add_exception_handler(StarletteHTTPException, _http_error)
    server.app.add_middleware(RequestEnvelope)
    return server, gateway


def _add_routes(app: FastAPI, gateway: Gateway, transport: Transport, config: AppConfig) -> None:
    created = int(time.time())
    runtimes, state, keys = gateway.runtimes, gateway.state, gateway.keys

    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz() -> JSONResponse:
        workers = state.live_workers()
        served = set(workers.values())
        draining = state.is_draining()
        ready = transport.workers_ready() and all(model in served for model in runtimes) and not draining
        body = {
            "status": "draining" if draining else "ready" if ready else "starting",
            "workers": [{"pid": pid, "model": model} for pid, model in sorted(workers.items())],
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    def model_object(runtime: ModelRuntime) -> ModelObject:
        model = runtime.config
        tiers = {
            tier: TierInfo(schedule=entry.name, digest=entry.digest, macs_ratio=entry.macs_ratio)
            for tier, entry in runtime.registry.tiers.items()
        }
        extension = ModelExtension(
            family=model.family,
            steps=model.steps,
            default_size=model.default_size,
            render_size=model.render_size,
            sizes=SizeLimits(min_side=model.min_side, max_side=model.max_side, multiple=model.size_multiple),
            tiers=tiers,
        )
        return ModelObject(id=model.id, created=created, x_ecad=extension)

    async def list_models(request: Request) -> Response:
        try:
            keys.check(request)
        except errors.ApiError as error:
            return error.response(request_id_of(request))
        return json_response(ModelList(data=[model_object(runtime) for runtime in runtimes.values()]))

    async def retrieve_model(request: Request, model_id: str) -> Response:
        try:
            keys.check(request)
            if model_id not in runtimes:
                raise errors.model_not_found(model_id)
        except errors.ApiError as error:
            return error.response(request_id_of(request))
        return json_response(model_object(runtimes[model_id]))

    async def prometheus(request: Request) -> Response:
        if config.server.auth.protect_metrics:
            try:
                keys.check(request)
            except errors.ApiError as error:
                return error.response(request_id_of(request))
        # Gauges of workers that died (and were restarted) would otherwise linger.
        for path in state.prometheus.glob("gauge_live*_*.db"):
            pid = path.stem.rsplit("_", 1)[-1]
            if pid.isdigit() and not process_alive(int(pid)):
                multiprocess.mark_process_dead(int(pid))
        body, content_type = telemetry.render()
        return Response(body, media_type=content_type)

    async def image_file(image_id: str) -> Response:
        ttl_s = config.server.url_responses.ttl_s
        path = state.image_path(image_id, ttl_s) if config.server.url_responses.enabled else None
        if path is None:
            return errors.not_found(f"No image '{image_id}' (unknown or expired).").response()
        return FileResponse(path, media_type=MEDIA_TYPES[path.suffix.lstrip(".")])

    for path in IMAGES_ROUTES:
        app.add_api_route(path, gateway.generate, methods=["POST"])
    app.add_api_route("/healthz", healthz, methods=["GET", "HEAD"])
    app.add_api_route("/readyz", readyz, methods=["GET", "HEAD"])
    app.add_api_route("/v1/models", list_models, methods=["GET"])
    app.add_api_route("/v1/models/{model_id}", retrieve_model, methods=["GET"])
    app.add_api_route("/metrics", prometheus, methods=["GET"])
    app.add_api_route("/v1/images/{image_id:image_id}", image_file, methods=["GET", "HEAD"])


async def _http_error(request: Request, exc: Any) -> Response:
    """Starlette's own 404/405 (and any HTTPException) in OpenAI's shape."""
    code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(exc.status_code)
    message = exc.detail if isinstance(exc.detail, str) else "Request failed."
    error = errors.ApiError(exc.status_code, message, code=code, headers=dict(exc.headers or {}))
    if exc.status_code >= 500:
        error.type = errors.SERVER_ERROR
    return error.response(request_id_of(request))
