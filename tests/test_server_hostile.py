"""Hostile and unusual HTTP input against one real server: exact statuses, headers and bodies, and the
keep-alive connection still usable after every error."""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from ecad.tiers import Tier
from harness.launcher import RunningServer
from tests.server_configs import server_config

KEY = "sk-hostile"
AUTH = {"authorization": f"Bearer {KEY}"}
JSON = {"content-type": "application/json", **AUTH}
GENERATIONS = "/v1/images/generations"


@pytest.fixture(scope="module")
def server(start_server: Callable[..., RunningServer]) -> RunningServer:
    config = server_config(auth={"protect_metrics": True}, url_responses={"max_bytes": 2**20})
    return start_server(config, api_key=KEY)


@pytest.fixture
def connection(server: RunningServer) -> Iterator[http.client.HTTPConnection]:
    """One keep-alive connection, as the SDK's pool would hold it."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    yield conn
    conn.close()


def exchange(
    conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def assert_connection_reused(conn: http.client.HTTPConnection) -> None:
    """The socket that carried the error carries the next request too."""
    sock = conn.sock
    assert sock is not None, "the server closed the connection after the error"
    status, _, body = exchange(conn, "GET", "/healthz", None, {})
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    assert conn.sock is sock


def error_body(message: str, param: str | None, code: str | None, kind: str = "invalid_request_error") -> Any:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def count(server: RunningServer, status: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics", headers=AUTH).text
    found = re.findall(
        rf'^ecad_requests_total\{{model="[^"]+",status="{status}",tier="[^"]+"\}} (\S+)', text, re.M
    )
    return sum(float(value) for value in found)


SURROGATE = "\\ud800"
HOSTILE: list[tuple[bytes, str | None, str]] = [
    *(
        (
            f'{{"prompt": "a cat", "{field}": "{SURROGATE}"}}'.encode(),
            field,
            f"Invalid value for '{field}': contains a lone UTF-16 surrogate escape; send valid Unicode text.",
        )
        for field in ("quality", "size", "model")
    ),
    (
        f'{{"prompt": "a cat {SURROGATE} on a mat"}}'.encode(),
        "prompt",
        "Invalid value for 'prompt': contains a lone UTF-16 surrogate escape; send valid Unicode text.",
    ),
    (
        b'{"prompt": "a cat", "n": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "n",
        "The request body nests deeper than 32 levels.",
    ),
    (
        b'{"prompt": "a cat", "n": ' + b"7" * 5000 + b"}",
        "n",
        "Invalid value for 'n': an integer of 5000 digits is out of range.",
    ),
]


@pytest.mark.parametrize(
    ("body", "param", "message"), HOSTILE, ids=["quality", "size", "model", "prompt", "deep", "digits"]
)
def test_valid_json_that_python_chokes_on_is_a_400(
    server: RunningServer, connection: http.client.HTTPConnection, body: bytes, param: str, message: str
) -> None:
    before = count(server, "400")
    status, headers, raw = exchange(connection, "POST", GENERATIONS, body, JSON)
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert json.loads(raw) == error_body(message, param, "invalid_value")
    assert headers["x-request-id"].startswith("req_")
    assert_connection_reused(connection)
    assert count(server, "400") == before + 1


def test_every_error_keeps_the_connection(
    server: RunningServer, connection: http.client.HTTPConnection
) -> None:
    cases: list[tuple[str, str, bytes | None, dict[str, str], int, Any]] = [
        (
            "POST",
            GENERATIONS,
            b'{"prompt": "a cat"}',
            {"content-type": "application/json"},
            401,
            error_body(
                "Incorrect or missing API key. Send 'Authorization: Bearer <key>'.", None, "invalid_api_key"
            ),
        ),
        ("GET", "/v1/nothing", None, AUTH, 404, error_body("Not Found", None, "not_found")),
        (
            "POST",
            GENERATIONS,
            b'{"prompt": "a cat", "n": 0}',
            JSON,
            400,
            error_body(
                "Invalid value for 'n': Input should be greater than or equal to 1.", "n", "invalid_value"
            ),
        ),
        ("GET", GENERATIONS, None, AUTH, 405, error_body("Method Not Allowed", None, "method_not_allowed")),
        (
            "POST",
            GENERATIONS,
            b'{"prompt": "a cat"}',
            {"content-type": "text/plain", **AUTH},
            415,
            error_body(
                "The request body must be sent as Content-Type: application/json.",
                None,
                "unsupported_media_type",
            ),
        ),
    ]
    for method, path, body, headers, status, expected in cases:
        got, _, raw = exchange(connection, method, path, body, headers)
        assert (got, json.loads(raw)) == (status, expected), (method, path)
        assert_connection_reused(connection)


def test_http_details(server: RunningServer) -> None:
    base = server.base_url
    wrong_method = httpx.get(f"{base}{GENERATIONS}", headers=AUTH)
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"
    for probe in ("/healthz", "/readyz"):
        head = httpx.head(f"{base}{probe}")
        assert (head.status_code, head.content) == (200, b"")
    unauthorized = httpx.post(f"{base}{GENERATIONS}", json={"prompt": "a cat"})
    assert unauthorized.status_code == 401
    assert unauthorized.headers["www-authenticate"] == "Bearer"
    # A form post (what a web page can send cross-origin without a preflight) and no type at all.
    for headers in ({"content-type": "application/x-www-form-urlencoded"}, {}):
        refused = httpx.post(
            f"{base}{GENERATIONS}", content=b'{"prompt": "a cat"}', headers={**AUTH, **headers}
        )
        assert refused.status_code == 415
        assert refused.json()["error"]["code"] == "unsupported_media_type"
    charset = httpx.post(
        f"{base}{GENERATIONS}",
        content=b'{"prompt": "a cat", "size": "64x64"}',
        headers={**AUTH, "content-type": "application/json; charset=utf-8"},
    )
    assert charset.status_code == 200
    too_large = httpx.post(f"{base}{GENERATIONS}", json={"prompt": "x" * 1_100_000}, headers=AUTH)
    assert too_large.status_code == 413
    assert too_large.headers["connection"] == "close"  # the rest of the body was never read
    assert too_large.json() == error_body("Request body exceeds 1048576 bytes.", None, "payload_too_large")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-5", "soon"])
def test_bad_deadline_header_is_a_400(server: RunningServer, value: str) -> None:
    response = httpx.post(
        f"{server.base_url}{GENERATIONS}",
        json={"prompt": "a cat", "size": "64x64"},
        headers={**AUTH, "x-ecad-deadline-ms": value},
    )
    assert response.status_code == 400
    assert response.json() == error_body(
        f"x-ecad-deadline-ms must be a positive, finite number of milliseconds, got '{value}'.",
        None,
        "invalid_value",
    )


def test_models_retrieve(server: RunningServer) -> None:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEY, max_retries=0)
    model = client.models.retrieve("ecad-tiny")
    assert (model.id, model.object, model.owned_by) == ("ecad-tiny", "model", "ecad-server")
    assert model.model_extra is not None
    assert set(model.model_extra["x_ecad"]["tiers"]) == set(Tier)
    assert model.model_dump() == client.models.list().data[0].model_dump()
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("no-such-model")
    assert caught.value.response.json() == error_body(
        "The model 'no-such-model' does not exist.", "model", "model_not_found"
    )
    anonymous = httpx.get(f"{server.base_url}/v1/models/ecad-tiny")
    assert anonymous.status_code == 401


def test_internals_are_not_served_and_metrics_need_a_key(server: RunningServer) -> None:
    for path in ("/litserve/info", "/litserve/health", "/"):
        hidden = httpx.get(f"{server.base_url}{path}", headers=AUTH)
        assert (hidden.status_code, hidden.json()) == (404, error_body("Not Found", None, "not_found"))
    anonymous = httpx.get(f"{server.base_url}/metrics")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    scraped = httpx.get(f"{server.base_url}/metrics", headers=AUTH)
    assert scraped.status_code == 200
    assert "ecad_requests_total" in scraped.text


def test_url_images_are_capped_in_bytes(server: RunningServer) -> None:
    """max_bytes is 1 MiB here: once more than that was stored, the oldest images are gone."""
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEY, max_retries=0, timeout=120)
    urls, stored = [], 0
    while stored <= 1.25 * 2**20:
        assert len(urls) < 40, "images too small to reach the cap"
        response = client.images.generate(
            prompt="noise", size="256x256", response_format="url", extra_body={"seed": len(urls)}
        )
        urls.append(response.data[0].url or "")
        stored += len(httpx.get(urls[-1]).content)
    statuses = [httpx.get(url).status_code for url in urls]
    assert statuses[-1] == 200
    assert 404 in statuses
    assert statuses == sorted(statuses, reverse=True), "evicted images are the oldest"
    kept = server.log.parent / "state" / "images"
    assert sum(path.stat().st_size for path in kept.iterdir()) <= 2**20
