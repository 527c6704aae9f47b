"""A body over the limit gets its 413 even when the client sends all of it first.

Python's urllib and httpx (like ``requests``) write the whole body before they read the
answer: a server that answers early and closes with the body still arriving makes them see
"connection reset" instead of the 413. The server reads and discards a refused body up to
a bound before answering (``steadygen.server.security.BodyLimit``); past the bound, or when
the client waits on ``Expect: 100-continue``, it answers at once and closes.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from steadygen.config import Settings
from steadygen.server.security import DRAIN_BYTES
from tests.reliability.conftest import JSON
from tests.server.conftest import ServerProc

KEY = "sk-body-limit-41d2"
LIMIT = Settings().max_body_bytes
BIG = 20_000_000  # 20 MB: twenty times the default limit, well inside the drain bound
JOBS = "/v1/jobs"


@pytest.fixture(scope="module")
def server(server_factory: Callable[..., ServerProc]) -> ServerProc:
    return server_factory(api_key=KEY)


def big_body() -> bytes:
    return json.dumps({"prompt": "a" * BIG, "width": 256, "height": 256}).encode()


def assert_names_the_limit(status: int, answer: bytes) -> None:
    assert status == 413, (status, answer[:300])
    error = json.loads(answer)["error"]
    assert error["param"] == "body" and error["code"] == "too_large"
    assert f"larger than {LIMIT} bytes" in error["message"]


def urllib_post(server: ServerProc, body: bytes, key: str) -> tuple[int, bytes]:
    req = urllib.request.Request(
        server.base_url + JOBS, data=body, method="POST",
        headers={**JSON, "Authorization": f"Bearer {key}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read()


def test_urllib_sending_20_mb_gets_413(server: ServerProc) -> None:
    assert_names_the_limit(*urllib_post(server, big_body(), KEY))


def test_httpx_sending_20_mb_gets_413_and_keeps_the_connection(server: ServerProc) -> None:
    with httpx.Client(base_url=server.base_url, timeout=120,
                      headers={"Authorization": f"Bearer {KEY}"}) as client:
        r = client.post(JOBS, content=big_body(), headers=JSON)
        assert_names_the_limit(r.status_code, r.content)
        assert r.headers.get("connection", "").lower() != "close"  # the body was all read
        # the same client (and its connection) goes on working
        assert client.get("/healthz").json() == {"ok": True}


def test_streamed_20_mb_without_length_gets_413(server: ServerProc) -> None:
    def chunks() -> Any:
        yield b'{"prompt": "'
        for _ in range(BIG // 100_000):
            yield b"a" * 100_000
        yield b'"}'

    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        r = client.post(JOBS, content=chunks(),
                        headers={**JSON, "Authorization": f"Bearer {KEY}"})
    assert_names_the_limit(r.status_code, r.content)


def test_a_client_without_the_key_sending_20_mb_gets_401(server: ServerProc) -> None:
    status, answer = urllib_post(server, big_body(), "wrong")
    assert status == 401, (status, answer[:300])
    assert json.loads(answer)["error"]["param"] == "authorization"


def raw_head(server: ServerProc, headers: dict[str, str]) -> tuple[str, dict[str, str], bytes]:
    """Send a POST's head only (no body), then read until the server closes."""
    lines = [f"POST {JOBS} HTTP/1.1", f"Host: 127.0.0.1:{server.port}",
             f"Authorization: Bearer {KEY}", "Content-Type: application/json",
             *(f"{k}: {v}" for k, v in headers.items())]
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := s.recv(65536):  # b"" once the server has closed
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *rest = head.decode("latin-1").split("\r\n")
    return status_line, {k.lower(): v.strip() for k, _, v in (r.partition(":") for r in rest)}, body


def test_a_body_past_the_drain_bound_is_refused_at_once_and_closed(server: ServerProc) -> None:
    status, headers, body = raw_head(server, {"Content-Length": str(DRAIN_BYTES + 1)})
    assert status.split()[1] == "413"
    assert headers["connection"].lower() == "close"
    assert_names_the_limit(413, body)


def test_expect_100_continue_is_refused_before_the_body(server: ServerProc) -> None:
    status, headers, body = raw_head(server, {"Content-Length": str(BIG),
                                              "Expect": "100-continue"})
    assert status.split()[1] == "413", status  # not "100 Continue"
    assert headers["connection"].lower() == "close"
    assert_names_the_limit(413, body)
