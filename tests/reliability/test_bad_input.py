"""Bad input, explicitly, on every generation API: each gets a 4xx in OpenAI's error shape
that names the field (``error.param`` and ``error.errors[].field``), nothing is queued, the
server's memory does not move, and the server keeps answering.

Bodies are sent as raw bytes (NaN, Infinity, invalid UTF-8 and 100,000 nested brackets are
not something a JSON library would write). Complements tests/server/test_api_validation.py,
which covers the everyday mistakes.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.reliability.conftest import (
    EDGE_KEY,
    JSON,
    TINY_JOB,
    json_error,
    proc_stats,
    raw_request,
)
from tests.server.conftest import ServerProc

MiB = 1 << 20
JOBS, OPENAI, A1111 = "/v1/jobs", "/v1/images/generations", "/sdapi/v1/txt2img"
NESTED = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"a":' * 50_000 + b"1" + b"}" * 50_000


def body(**fields: Any) -> bytes:
    return json.dumps({"prompt": "x", **fields}).encode()


def raw(text: str) -> bytes:
    return text.encode()


# (case, path, body bytes, status, field the error must name)
CASES: list[tuple[str, str, bytes, int, str]] = [
    ("width not a multiple of 16", JOBS, body(width=250, height=256), 400, "width"),
    ("height not a multiple of 16", OPENAI, body(size="256x1000"), 400, "height"),
    ("width zero", JOBS, body(width=0), 400, "width"),
    ("height negative", JOBS, body(height=-256), 400, "height"),
    ("width negative (A1111)", A1111, body(width=-64), 400, "width"),
    ("huge width and height", JOBS, body(width=100_000, height=100_000), 400, "width"),
    ("huge size", OPENAI, body(size="100000x100000"), 400, "width"),
    ("huge size (A1111)", A1111, body(width=100_000, height=100_000), 400, "width"),
    ("width 2**70", JOBS, body(width=2**70), 400, "width"),
    ("width 1e300", JOBS, raw('{"prompt": "x", "width": 1e300}'), 400, "width"),
    ("size 0x0", OPENAI, body(size="0x0"), 400, "width"),
    ("size text", OPENAI, body(size="big"), 400, "size"),
    ("steps 0", JOBS, body(steps=0), 400, "steps"),
    ("steps 10**6", JOBS, body(steps=10**6), 400, "steps"),
    ("steps 10**6 (OpenAI)", OPENAI, body(steps=10**6), 400, "steps"),
    ("steps 0 (A1111)", A1111, body(steps=0), 400, "steps"),
    ("guidance NaN", JOBS, raw('{"prompt": "x", "guidance": NaN}'), 400, "guidance"),
    ("guidance Infinity", JOBS, raw('{"prompt": "x", "guidance": Infinity}'), 400, "guidance"),
    ("guidance -Infinity", OPENAI, raw('{"prompt": "x", "guidance": -Infinity}'), 400,
     "guidance"),
    ("guidance 1e400", JOBS, raw('{"prompt": "x", "guidance": 1e400}'), 400, "guidance"),
    ("cfg_scale NaN (A1111)", A1111, raw('{"prompt": "x", "cfg_scale": NaN}'), 400, "guidance"),
    ("guidance negative", JOBS, body(guidance=-1), 400, "guidance"),
    ("100 KB prompt", JOBS, body(prompt="a" * 100_000), 400, "prompt"),
    ("100 KB negative prompt", OPENAI, body(negative_prompt="b" * 100_000), 400,
     "negative_prompt"),
    ("empty prompt", OPENAI, body(prompt=""), 400, "prompt"),
    ("NUL in prompt", JOBS, body(prompt="a\x00b"), 400, "prompt"),
    ("lone surrogate in prompt", JOBS, raw('{"prompt": "a\\ud800b"}'), 400, "prompt"),
    ("lone surrogate (OpenAI)", OPENAI, raw('{"prompt": "a\\udfffb"}'), 400, "prompt"),
    ("lone surrogate (A1111)", A1111, raw('{"prompt": "\\ud83d"}'), 400, "prompt"),
    ("invalid UTF-8", JOBS, b'{"prompt": "\xff\xfe\x80"}', 400, "body"),
    ("invalid UTF-8 (OpenAI)", OPENAI, b'{"prompt": "caf\xe9"}', 400, "body"),
    ("invalid UTF-8 (A1111)", A1111, b'{"prompt": "\xc3\x28"}', 400, "body"),
    ("100,000 nested arrays", JOBS, NESTED, 400, "body"),
    ("100,000 nested arrays (OpenAI)", OPENAI, NESTED, 400, "body"),
    ("nested arrays in a field", JOBS, b'{"prompt":' + NESTED + b"}", 400, "body"),
    ("50,000 nested objects (A1111)", A1111, b'{"override_settings":' + DEEP_OBJECT + b"}",
     400, "body"),
    ("an integer of 5000 digits", JOBS, raw('{"prompt": "x", "steps": ' + "9" * 5000 + "}"),
     400, "body"),
    ("truncated JSON", JOBS, raw('{"prompt": "x", '), 400, "body"),
    ("not an object", OPENAI, raw('["prompt"]'), 400, "body"),
    ("empty body", JOBS, b"", 400, "body"),
    ("unknown field", JOBS, body(colour="red"), 400, "colour"),
    ("unknown field (OpenAI)", OPENAI, body(sampler="euler"), 400, "sampler"),
    ("prompt a number", JOBS, raw('{"prompt": 42}'), 400, "prompt"),
    ("steps a string", JOBS, body(steps="eight"), 400, "steps"),
    ("n a list", OPENAI, body(n=[1]), 400, "n"),
    ("seed an object", JOBS, body(seed={"v": 1}), 400, "seed"),
    ("width a bool", JOBS, body(width=True), 400, "width"),
    ("n 1000", JOBS, body(n=1000), 400, "n"),
    ("n 1000 (OpenAI)", OPENAI, body(n=1000), 400, "n"),
    ("batch_size 1000 (A1111)", A1111, body(batch_size=1000), 400, "n"),
    ("n 0", OPENAI, body(n=0), 400, "n"),
    ("seed -1", JOBS, body(seed=-1), 400, "seed"),
    ("seed 2**32", JOBS, body(seed=2**32), 400, "seed"),
    ("seed 2**70", OPENAI, body(seed=2**70), 400, "seed"),
    ("seed 1e30", JOBS, raw('{"prompt": "x", "seed": 1e30}'), 400, "seed"),
    ("seed -5 (A1111)", A1111, body(seed=-5), 400, "seed"),
    ("seed 2**32 (A1111)", A1111, body(seed=2**32), 400, "seed"),
    ("priority 10**9", JOBS, body(priority=10**9), 400, "priority"),
    ("model a path", JOBS, body(model="../../etc/passwd"), 400, "model"),
    ("response_format gif", OPENAI, body(response_format="gif"), 400, "response_format"),
]


def _check_error(status: int, payload: bytes, want_status: int, field: str) -> dict[str, Any]:
    assert status == want_status, (status, payload[:300])
    error = json.loads(payload)["error"]
    fields = {e["field"] for e in error["errors"]}
    assert error["param"] == field or field in fields, (field, error)
    assert error["message"].split(":")[0] in fields | {error["param"]}, error
    return dict(error)


@pytest.mark.parametrize(("path", "payload", "status", "field"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_4xx_naming_the_field(
    edge: ServerProc, path: str, payload: bytes, status: int, field: str
) -> None:
    got, _, answer = raw_request(edge, "POST", path, payload, JSON)
    _check_error(got, answer, status, field)


def test_bad_input_queues_nothing_and_costs_no_memory(
    edge: ServerProc, figures: dict[str, Any]
) -> None:
    """Every case above again, in a row: the job count does not move, and neither does the
    server's memory (a 100000x100000 request is refused before anything is allocated: its
    latents alone would be 10 GB)."""
    count = len(edge.request("GET", "/v1/jobs", params={"limit": 500}).json()["jobs"])
    for _, path, payload, _status, _ in CASES:  # once, so first-time imports are paid
        raw_request(edge, "POST", path, payload, JSON)
    before = proc_stats(edge)
    for _, path, payload, status, field in CASES * 3:
        got, _, answer = raw_request(edge, "POST", path, payload, JSON)
        _check_error(got, answer, status, field)
    after = proc_stats(edge)
    assert len(edge.request("GET", "/v1/jobs", params={"limit": 500}).json()["jobs"]) == count
    growth = after.rss_bytes - before.rss_bytes
    figures["bad_input"] = {"cases": len(CASES), "requests": 4 * len(CASES),
                            "rss_growth_bytes": growth}
    assert growth < 32 * MiB, f"RSS grew by {growth / MiB:.1f} MiB over {3 * len(CASES)} requests"
    assert edge.request("GET", "/healthz").json() == {"ok": True}


def test_a_body_over_the_limit_is_413_declared_or_streamed(edge: ServerProc) -> None:
    big = body(prompt="a" * 1_100_000)  # the default limit is 1,000,000 bytes
    got, _, answer = raw_request(edge, "POST", JOBS, big, JSON)
    assert _check_error(got, answer, 413, "body")["code"] == "too_large"

    def chunks() -> Any:  # no Content-Length: counted while read
        yield b'{"prompt": "'
        for _ in range(200):
            yield b"a" * 10_000
        yield b'"}'

    r = edge.request("POST", OPENAI, content=chunks(), headers=JSON)
    assert r.status_code == 413 and json_error(r)["param"] == "body"
    # A lying Content-Length (smaller than the body) cannot smuggle in more than it says.
    got, _, answer = raw_request(edge, "POST", A1111, big, {**JSON, "Content-Length": "10"})
    assert 400 <= got < 500, (got, answer[:200])


@pytest.fixture(scope="module")
def done_job(edge_server: ServerProc) -> dict[str, Any]:
    job = edge_server.submit(**TINY_JOB, seed=5)
    final = edge_server.wait_done(job["id"])
    assert final["state"] == "succeeded", final
    return final


@pytest.mark.parametrize(
    "template",
    [
        "/v1/jobs/{id}/images/../../jobs.sqlite3.png",
        "/v1/jobs/{id}/images/..%2F..%2Fjobs.sqlite3.png",
        "/v1/jobs/{id}/images/%2e%2e%2f%2e%2e%2fjobs.sqlite3.png",
        "/v1/jobs/{id}/images/%252e%252e%252fjobs.sqlite3.png",
        "/v1/jobs/{id}/images/..%5c..%5cjobs.sqlite3.png",
        "/v1/jobs/..%2F..%2F..%2Fetc%2Fpasswd/images/0.png",
        "/v1/jobs/%2e%2e/images/0.png",
        "/v1/jobs/../../../../etc/passwd",
        "/v1/jobs/{id}/images/0.png%00.txt",
        "/v1/jobs/{id}/images/-1.png",
        "/v1/jobs/{id}/images/99999999999999999999999.png",
        "/static/..%2F..%2Fserve.py",
        "/static/%2e%2e%2fapp.py",
    ],
)
def test_path_traversal_on_image_routes_is_refused(
    edge: ServerProc, done_job: dict[str, Any], template: str
) -> None:
    status, _, answer = raw_request(edge, "GET", template.replace("{id}", done_job["id"]))
    assert 400 <= status < 500, (status, answer[:200])
    assert not answer.startswith((b"SQLite format", b"\x89PNG")), answer[:40]
    assert b"root:" not in answer and b"import " not in answer
    error = json.loads(answer)["error"]
    assert error["param"] in ("path", "index", "id", "name"), error
    # The real image is still served: the refusals are not just a broken route.
    ok, headers, png = raw_request(edge, "GET", f"/v1/jobs/{done_job['id']}/images/0.png")
    assert ok == 200 and png.startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", "Bearer wrong", f"bearer {EDGE_KEY}x", f"Basic {EDGE_KEY}",
     f"Token {EDGE_KEY}", f"Bearer {EDGE_KEY[:-1]}", f"Bearer  {EDGE_KEY}"],
)
def test_a_wrong_or_missing_api_key_is_401_naming_authorization(
    edge: ServerProc, authorization: str | None
) -> None:
    headers = {**JSON, **({} if authorization is None else {"Authorization": authorization})}
    status, answer_headers, answer = raw_request(
        edge, "POST", JOBS, json.dumps(TINY_JOB).encode(), headers, authorised=False
    )
    assert status == 401, answer
    assert answer_headers["www-authenticate"] == "Bearer"
    error = json.loads(answer)["error"]
    assert error["param"] == "authorization" and error["type"] == "authentication_error"
