"""Reading a JSON request body without trusting it: media type, size, nesting, numbers, text.

`json.loads` accepts documents that later break the server: a 100,000-deep array overflows the
parser's recursion, a 5,000-digit integer exceeds Python's int conversion limit, and a lone surrogate
escape (`"\\ud800"`) becomes a `str` that cannot be encoded back to UTF-8. Each is refused here as a
400 naming the field, before any of it reaches validation, logs or a response body.
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.requests import Request

from server import errors

# Our bodies are a flat object; a few levels leave room for clients that send nested extensions.
MAX_DEPTH = 32
# Far beyond any valid value (seeds are < 2**63, 19 digits), far below Python's 4,300-digit limit.
MAX_INTEGER_DIGITS = 64
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}:]')
_SURROGATE = re.compile("[\ud800-\udfff]")


class _OversizedInteger:
    """Stands in for an integer literal too long to convert; validation rejects it as not a number."""

    def __init__(self, digits: int) -> None:
        self.digits = digits


def _parse_int(literal: str) -> int | _OversizedInteger:
    digits = len(literal.lstrip("-"))
    return int(literal) if digits <= MAX_INTEGER_DIGITS else _OversizedInteger(digits)


def _too_deep(body: bytes) -> tuple[bool, str | None]:
    """Whether the document nests deeper than MAX_DEPTH, and the top-level key it happens under."""
    depth, key, last_string = 0, None, None
    for match in _TOKENS.finditer(body):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > MAX_DEPTH:
                return True, key
        elif token in (b"]", b"}"):
            depth -= 1
        elif token == b":":
            if depth == 1:
                key = last_string
        else:
            last_string = token[1:-1].decode("utf-8", "replace")
    return False, None


def _bad_value(value: Any, path: tuple[str, ...]) -> tuple[str, str] | None:
    """(param, reason) for the first string with a lone surrogate or oversized integer, depth first."""
    param = ".".join(path) or None
    if isinstance(value, str) and _SURROGATE.search(value):
        return param or "", "contains a lone UTF-16 surrogate escape; send valid Unicode text"
    if isinstance(value, _OversizedInteger):
        return param or "", f"an integer of {value.digits} digits is out of range"
    if isinstance(value, dict):
        for key, item in value.items():
            if _SURROGATE.search(key):
                return param or "", "a key contains a lone UTF-16 surrogate escape"
            found = _bad_value(item, (*path, key))
            if found is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _bad_value(item, (*path, str(index)))
            if found is not None:
                return found
    return None


def is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json"


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    """The request body as a JSON object, or an `ApiError` (400, 413 or 415) saying what is wrong."""
    if not is_json(request.headers.get("content-type", "")):
        raise errors.unsupported_media_type("application/json")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise errors.payload_too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise errors.payload_too_large(limit)
    deep, key = _too_deep(bytes(body))
    if deep:
        param = key if key is not None and not _SURROGATE.search(key) else None
        raise errors.invalid(param, f"The request body nests deeper than {MAX_DEPTH} levels.")
    try:
        data = json.loads(body, parse_int=_parse_int)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise errors.invalid(None, "The request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise errors.invalid(None, "The request body must be a JSON object.")
    found = _bad_value(data, ())
    if found is not None:
        param, reason = found
        raise errors.invalid(param or None, f"Invalid value for '{param}': {reason}.")
    return data
