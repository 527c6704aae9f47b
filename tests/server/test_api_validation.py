"""Bad input gets a 4xx in OpenAI's error shape naming the field; nothing leaves the data
directory; the OpenAPI schema is valid."""

from __future__ import annotations

import http.client
from typing import Any

import pytest

from tests.server.conftest import PROMPT, ServerProc

JSON = {"Content-Type": "application/json"}


def _error(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert {"message", "type", "param", "code"} <= set(error)
    return dict(error)


@pytest.mark.parametrize(
    ("path", "raw_body", "field", "words"),
    [
        ("/v1/jobs", '{"prompt": "x", "width": 250, "height": 256}', "width", ["16", "250"]),
        ("/v1/jobs", '{"prompt": "x", "steps": 0}', "steps", ["1", "100"]),
        ("/v1/jobs", '{"prompt": "x", "guidance": NaN}', "guidance", ["finite"]),
        ("/v1/jobs", '{"prompt": "x", "n": 9}', "n", ["4", "9"]),
        ("/v1/jobs", '{"prompt": "x", "colour": "red"}', "colour", ["not a known field"]),
        ("/v1/jobs", '{"prompt": "x", "steps": "many"}', "steps", ["integer"]),
        ("/v1/jobs", '{"prompt": 42}', "prompt", ["string"]),
        ("/v1/jobs", '{"prompt": "x", "seed": -5}', "seed", ["4294967295"]),
        ("/v1/jobs", '{"prompt": "   "}', "prompt", ["empty"]),
        ("/v1/jobs", "{}", "prompt", ["required"]),
        ("/v1/jobs", '{"prompt": "x", "model": "/etc/passwd"}', "model", ["zimage-tiny"]),
        ("/v1/jobs", '{"prompt": "x", "model": "sdxl"}', "model", ["sdxl"]),
        ("/v1/jobs", '{"prompt": "x", "size": "256x256", "width": 256}', "size", ["either"]),
        ("/v1/jobs", '{"prompt": "x", "priority": 1000}', "priority", ["100"]),
        ("/v1/jobs", '{"prompt": ', "body", ["JSON"]),
        ("/v1/jobs", "[1, 2]", "body", []),
        ("/v1/images/generations", '{"prompt": "x", "size": "256"}', "size", ["WIDTHxHEIGHT"]),
        (
            "/v1/images/generations",
            '{"prompt": "x", "response_format": "gif"}',
            "response_format",
            [],
        ),
        ("/sdapi/v1/txt2img", '{"prompt": "x", "width": 4096}', "width", ["2048"]),
    ],
)
def test_invalid_input_is_400_naming_the_field(
    main_server: ServerProc, path: str, raw_body: str, field: str, words: list[str]
) -> None:
    r = main_server.request("POST", path, content=raw_body, headers=JSON)
    error = _error(r, 400)
    assert error["param"] == field
    assert error["message"].startswith(field)
    assert field in [e["field"] for e in error["errors"]]
    for word in words:
        assert word in error["message"], error["message"]


def test_every_broken_rule_is_reported(main_server: ServerProc) -> None:
    r = main_server.request(
        "POST", "/v1/jobs", json={"prompt": "x", "width": 250, "steps": 0, "n": 9}
    )
    error = _error(r, 400)
    assert {e["field"] for e in error["errors"]} == {"width", "steps", "n"}


def test_nothing_was_queued_by_invalid_requests(main_server: ServerProc) -> None:
    before = main_server.request("GET", "/v1/jobs", params={"limit": 500}).json()["jobs"]
    main_server.request("POST", "/v1/jobs", json={"prompt": "x", "steps": 0})
    after = main_server.request("GET", "/v1/jobs", params={"limit": 500}).json()["jobs"]
    assert len(after) == len(before)


def test_a_body_over_the_limit_is_413(main_server: ServerProc) -> None:
    big = '{"prompt": "' + "a" * 1_100_000 + '"}'
    error = _error(main_server.request("POST", "/v1/jobs", content=big, headers=JSON), 413)
    assert error["param"] == "body" and "larger" in error["message"]
    assert error["errors"] == [{"field": "body", "message": error["message"][len("body: "):]}]

    def chunks() -> Any:  # no Content-Length: the server counts as it reads
        yield b'{"prompt": "'
        for _ in range(120):
            yield b"a" * 10_000
        yield b'"}'

    r = main_server.request("POST", "/v1/jobs", content=chunks(), headers=JSON)
    assert _error(r, 413)["param"] == "body"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"state": "done"}, "state"),
    ],
)
def test_bad_list_queries_are_400(
    main_server: ServerProc, query: dict[str, Any], field: str
) -> None:
    error = _error(main_server.request("GET", "/v1/jobs", params=query), 400)
    assert error["param"] == field


def test_unknown_job_is_404(main_server: ServerProc) -> None:
    for method, path in [
        ("GET", "/v1/jobs/j0000"),
        ("DELETE", "/v1/jobs/j0000"),
        ("GET", "/v1/jobs/j0000/events"),
        ("GET", "/v1/jobs/j0000/images/0.png"),
    ]:
        error = _error(main_server.request(method, path), 404)
        assert "j0000" in error["message"]


def test_bad_image_index(main_server: ServerProc, done_job: dict[str, Any]) -> None:
    base = f"/v1/jobs/{done_job['id']}/images"
    assert "index" in _error(main_server.request("GET", f"{base}/7.png"), 404)["message"]
    assert "index" in _error(main_server.request("GET", f"{base}/-1.png"), 404)["message"]
    assert _error(main_server.request("GET", f"{base}/first.png"), 400)["param"] == "index"


def _raw_get(srv: ServerProc, path: str) -> tuple[int, bytes]:
    """GET with the path sent exactly as written (httpx would normalise '..' away)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        for name, value in srv.headers().items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize(
    "template",
    [
        "/v1/jobs/../../etc/passwd",
        "/v1/jobs/..%2F..%2Fetc%2Fpasswd",
        "/v1/jobs/{id}/images/..%2F..%2Fjobs.sqlite3.png",
        "/v1/jobs/{id}/images/../../jobs.sqlite3.png",
        "/v1/jobs/{id}/images/%2e%2e%2f%2e%2e%2fjobs.sqlite3.png",
        "/v1/jobs/../images/0.png",
        "/v1/jobs/{id}/images/0.png/../../../jobs.sqlite3",
    ],
)
def test_paths_cannot_leave_the_data_directory(
    main_server: ServerProc, done_job: dict[str, Any], template: str
) -> None:
    status, body = _raw_get(main_server, template.replace("{id}", done_job["id"]))
    assert 400 <= status < 500
    assert not body.startswith(b"SQLite format") and b"root:" not in body
    assert not body.startswith(b"\x89PNG")


def test_openapi_schema_is_valid(main_server: ServerProc) -> None:
    from openapi_spec_validator import validate

    spec = main_server.request("GET", "/openapi.json").json()
    validate(spec)
    paths = spec["paths"]
    for path, method in [
        ("/v1/images/generations", "post"),
        ("/sdapi/v1/txt2img", "post"),
        ("/sdapi/v1/progress", "get"),
        ("/v1/jobs", "post"),
        ("/v1/jobs", "get"),
        ("/v1/jobs/{job_id}", "get"),
        ("/v1/jobs/{job_id}", "delete"),
        ("/v1/jobs/{job_id}/events", "get"),
        ("/v1/jobs/{job_id}/images/{index}.png", "get"),
        ("/v1/telemetry", "get"),
        ("/v1/telemetry/stream", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
    ]:
        assert method in paths.get(path, {}), f"{method.upper()} {path} is not in the schema"
    job_create = spec["components"]["schemas"]["JobCreate"]
    assert {"prompt", "width", "height", "steps", "seed", "n"} <= set(job_create["properties"])
    assert job_create["required"] == ["prompt"]


def test_prompt_is_not_logged_by_default(main_server: ServerProc) -> None:
    marker = "zebra-marker-8841"
    job = main_server.submit(prompt=f"{PROMPT} {marker}", width=256, height=256, steps=1)
    main_server.wait_done(job["id"])
    log = main_server.log_tail(2_000_000)
    assert f"job {job['id']} queued" in log  # INFO logging is on and saw the job
    assert marker not in log
