"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` with the matching status."""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import ValidationError

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"
RATE_LIMIT = "rate_limit_error"
# The SDK gives up on retries when Retry-After exceeds this, so we never advertise more.
MAX_RETRY_AFTER_S = 120


def _ascii_json(content: Any) -> str:
    """JSON with non-ASCII characters escaped: it always encodes, whatever text a message quotes."""
    return json.dumps(content, separators=(",", ":"))


class OpenAIJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return _ascii_json(content).encode("ascii")


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def json(self) -> str:
        return _ascii_json(self.body())

    def response(self, request_id: str | None = None) -> JSONResponse:
        headers = dict(self.headers)
        if request_id:
            headers["x-request-id"] = request_id
        return OpenAIJSONResponse(self.body(), status_code=self.status, headers=headers)


def invalid(param: str | None, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def from_validation_error(error: ValidationError) -> ApiError:
    """The first problem of a request body, with `param` naming the field."""
    problem = error.errors()[0]
    loc = [str(part) for part in problem["loc"]]
    param = ".".join(loc) if loc else None
    if problem["type"] == "missing":
        return invalid(param, f"Missing required parameter: '{param}'.", code="missing_required_parameter")
    message = problem["msg"].removeprefix("Value error, ")
    return invalid(param, f"Invalid value for '{param}': {message}.")


def unauthorized() -> ApiError:
    return ApiError(
        401,
        "Incorrect or missing API key. Send 'Authorization: Bearer <key>'.",
        code="invalid_api_key",
        headers={"www-authenticate": "Bearer"},
    )


def model_not_found(model: str) -> ApiError:
    return ApiError(404, f"The model '{model}' does not exist.", param="model", code="model_not_found")


def not_found(message: str) -> ApiError:
    return ApiError(404, message, code="not_found")


def payload_too_large(limit: int) -> ApiError:
    # The rest of the body is not read, so this connection cannot carry another request.
    return ApiError(
        413, f"Request body exceeds {limit} bytes.", code="payload_too_large", headers={"connection": "close"}
    )


def unsupported_media_type(expected: str) -> ApiError:
    # Also what keeps a web page from POSTing here cross-origin: a form or `text/plain` body is
    # refused, and `application/json` needs a CORS preflight this server never grants.
    return ApiError(
        415, f"The request body must be sent as Content-Type: {expected}.", code="unsupported_media_type"
    )


def rate_limited(retry_after_s: int) -> ApiError:
    seconds = max(1, min(MAX_RETRY_AFTER_S, retry_after_s))
    return ApiError(
        429,
        "The server is at capacity for this model; retry later.",
        type=RATE_LIMIT,
        code="rate_limit_exceeded",
        headers={"retry-after": str(seconds)},
    )


def shutting_down() -> ApiError:
    """503 while the server drains before stopping: another replica (or this one, restarted) serves it."""
    return ApiError(
        503,
        "The server is shutting down; retry on another replica.",
        type=SERVER_ERROR,
        code="slow_down",
        headers={"retry-after": "1"},
    )


def deadline_exceeded(deadline_s: float) -> ApiError:
    return ApiError(
        504,
        f"The request did not complete within its {deadline_s:g} s deadline.",
        type=SERVER_ERROR,
        code="timeout",
        headers={"x-should-retry": "false"},
    )


def worker_crashed() -> ApiError:
    # Not retried by the SDK: the request itself may be what crashed the worker.
    return ApiError(
        500,
        "The inference worker running this request died; the server is restarting it.",
        type=SERVER_ERROR,
        code="worker_crashed",
        headers={"x-should-retry": "false"},
    )


def internal(message: str = "Internal server error.") -> ApiError:
    return ApiError(500, message, type=SERVER_ERROR)
