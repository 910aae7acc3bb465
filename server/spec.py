"""The LitSpec that owns `POST /v1/images/generations` (and `/images/generations`).

Every model has its own LitAPI (own queue, own worker processes); each carries an `ImagesSpec`, but
only the first one holds the gateway and registers the routes. Owning the route replaces LitServe's
request handling: no 422s, no `{"detail"}` bodies, no empty 200 streams.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import Response
from litserve.specs.base import LitSpec

from server.gateway import Gateway

ROUTES = ("/v1/images/generations", "/images/generations")


class ImagesSpec(LitSpec):
    def __init__(self, api_path: str, gateway: Gateway | None) -> None:
        super().__init__()
        # LitServe names a spec'd API's queue and workers by the spec's path, not the LitAPI's.
        self.api_path = api_path
        self.gateway = gateway
        if gateway is not None:
            for path in ROUTES:
                self.add_endpoint(path, self.images_generations, ["POST"])

    @property
    def stream(self) -> bool:
        # Streaming keeps LitServe from adding GZip (base64 images barely compress) and lets one
        # request carry several worker messages.
        return True

    def setup(self, server: Any) -> None:
        super().setup(server)
        if self.gateway is not None:
            self.gateway.connect(self, server.litapi_request_queues)

    async def images_generations(self, request: Request) -> Response:
        assert self.gateway is not None
        return await self.gateway.generate(request)

    def decode_request(self, request: Any, context_kwargs: Any = None) -> Any:
        return request

    def encode_response(self, output: Any, context_kwargs: Any = None) -> Any:
        return output

    def __getstate__(self) -> dict[str, Any]:
        # Workers only need the spec's identity; the gateway and routes stay in the API processes.
        state = super().__getstate__()
        state["gateway"] = None
        state["_endpoints"] = []
        return state
