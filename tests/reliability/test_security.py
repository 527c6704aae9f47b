"""Security defaults on real server processes: loopback only unless told otherwise, the API
key on every API route but /healthz and /readyz, no secrets and (by default) no prompts in
the logs, CORS off unless origins are configured, and a dependency audit.

    pytest tests/reliability/test_security.py
    pytest tests/reliability/test_security.py -m slow     # + pip-audit (needs the network)
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable

import psutil
import pytest

from steadygen.config import Settings, load_settings
from tests.reliability.conftest import (
    EDGE_KEY,
    JSON,
    TINY_JOB,
    drain,
    raw_request,
    server_output,
    started_server,
)
from tests.server.conftest import ServerProc

OPEN = {"/healthz", "/readyz"}
ALLOWED_ORIGIN = "https://studio.example"
CFG_KEY = "sk-configured-91d2aa"
WRONG_KEY = "sk-wrong-key-0c7e55"  # a client's mistake is a secret too


# -- binding ------------------------------------------------------------------------------


def test_the_default_host_is_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STEADYGEN_HOST", raising=False)
    monkeypatch.delenv("STEADYGEN_CONFIG", raising=False)
    assert Settings().host == "127.0.0.1"
    assert load_settings().host == "127.0.0.1"


def test_serve_without_host_listens_on_loopback_only(edge_server: ServerProc) -> None:
    """The shared servers are started without --host: every listening socket of the
    process is on 127.0.0.1, and the machine's other addresses refuse the port."""
    assert edge_server.proc is not None
    listening = [c for c in psutil.Process(edge_server.proc.pid).net_connections("inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening, "the server listens on nothing"
    assert {c.laddr.ip for c in listening} == {"127.0.0.1"}, listening
    others = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
              if a.family == socket.AF_INET and not a.address.startswith("127.")]
    for address in others:
        with socket.socket() as s:
            s.settimeout(5)
            assert s.connect_ex((address, edge_server.port)) != 0, address


# -- the API key ----------------------------------------------------------------------------


def _operations(srv: ServerProc) -> list[tuple[str, str]]:
    spec = srv.request("GET", "/openapi.json").json()
    return [(method.upper(), path) for path, ops in spec["paths"].items() for method in ops]


def _concrete(path: str) -> str:
    return path.replace("{job_id}", "j0000").replace("{index}", "0")


@pytest.mark.parametrize("authorization", [None, f"Bearer {WRONG_KEY}"])
def test_every_route_in_the_schema_but_health_needs_the_key(
    edge: ServerProc, authorization: str | None
) -> None:
    operations = _operations(edge)
    assert len(operations) >= 14, operations
    headers = {**JSON, **({"Authorization": authorization} if authorization else {})}
    for method, path in operations:
        for body in (json.dumps(TINY_JOB).encode(), b'{"steps": "bad"'):
            status, answer_headers, answer = raw_request(
                edge, method, _concrete(path), body if method == "POST" else None, headers,
                authorised=False, timeout=30)
            if path in OPEN:
                assert status in (200, 503), (method, path, status)
                continue
            assert status == 401, (method, path, status, answer[:200])
            assert answer_headers.get("www-authenticate") == "Bearer", (method, path)
            assert json.loads(answer)["error"]["param"] == "authorization"
            assert b"j0000" not in answer  # nothing about the resource leaks before the key


def test_the_schema_itself_needs_the_key_and_the_page_is_open(edge: ServerProc) -> None:
    """With a key the schema needs it too; the web page (/ and /static/*, no data in
    them: it asks the user for the key) stays open."""
    status, _, _ = raw_request(edge, "GET", "/openapi.json", authorised=False)
    assert status == 401
    for path in ("/", "/static/app.js"):
        status, _, body = raw_request(edge, "GET", path, authorised=False)
        assert status == 200 and body, path
    status, _, _ = raw_request(edge, "GET", "/docs", authorised=False)
    assert status in (401, 404)


# -- logs ---------------------------------------------------------------------------------


def _exercise(srv: ServerProc, prompt: str) -> None:
    """One job through each API with a distinctive prompt, and one with a wrong key."""
    job = srv.submit(prompt=prompt, width=64, height=64, steps=1)
    assert srv.wait_done(job["id"])["state"] == "succeeded"
    with srv.client(timeout=120.0) as c:
        r = c.post("/v1/images/generations", json={"prompt": prompt, "size": "64x64",
                                                    "steps": 1})
        assert r.status_code == 200, r.text
        r = c.post("/sdapi/v1/txt2img", json={"prompt": prompt, "negative_prompt": prompt,
                                               "width": 64, "height": 64, "steps": 1})
        assert r.status_code == 200, r.text
        r = c.post("/v1/jobs", json={"prompt": prompt, "steps": 0})  # a 400 echoes nothing
        assert r.status_code == 400
    status, _, _ = raw_request(srv, "POST", "/v1/jobs", json.dumps({"prompt": prompt}).encode(),
                               {**JSON, "Authorization": f"Bearer {WRONG_KEY}"},
                               authorised=False)
    assert status == 401


def test_logs_hold_no_secret_and_no_prompt_by_default(edge: ServerProc) -> None:
    """The edge server logs at INFO (-v) with an API key; after jobs through every API,
    neither its key, a wrong key a client sent, nor the prompts appear in its output."""
    drain(edge)
    prompt = "an okapi reading tax forms 7731"
    start = len(server_output(edge))
    _exercise(edge, prompt)
    log = server_output(edge)
    assert " queued: 64x64" in log[start:], "INFO logging is not on: this test proves nothing"
    for secret in (EDGE_KEY, WRONG_KEY, prompt, "okapi"):
        assert secret not in log, f"{secret!r} is in the server's log"


def test_a_key_given_by_environment_is_not_on_the_command_line(edge: ServerProc) -> None:
    assert edge.proc is not None
    cmdline = " ".join(psutil.Process(edge.proc.pid).cmdline())
    assert "serve" in cmdline and EDGE_KEY not in cmdline


@pytest.fixture(scope="module")
def configured_server(server_factory: Callable[..., ServerProc]) -> ServerProc:
    """log_prompts on, CORS for one origin, an API key, INFO logs."""
    return started_server(server_factory, key=CFG_KEY, verbose=True, env={
        "STEADYGEN_LOG_PROMPTS": "1", "STEADYGEN_CORS_ORIGINS": ALLOWED_ORIGIN})


def test_with_log_prompts_on_the_prompt_is_logged_and_the_key_still_is_not(
    configured_server: ServerProc,
) -> None:
    prompt = "a tapir knitting a scarf 4410"
    _exercise(configured_server, prompt)
    log = server_output(configured_server)
    assert prompt in log
    assert CFG_KEY not in log and WRONG_KEY not in log


# -- CORS ---------------------------------------------------------------------------------


def _cors(srv: ServerProc, origin: str) -> tuple[dict[str, str], dict[str, str]]:
    """Headers of a simple GET and of a preflight, both from ``origin``."""
    _, simple, _ = raw_request(srv, "GET", "/v1/jobs?limit=1", headers={"Origin": origin})
    _, preflight, _ = raw_request(srv, "OPTIONS", "/v1/jobs", authorised=False, headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    return simple, preflight


def test_cors_is_off_unless_configured(edge: ServerProc) -> None:
    for origin in (ALLOWED_ORIGIN, "https://evil.example", "null"):
        simple, preflight = _cors(edge, origin)
        for headers in (simple, preflight):
            assert not any(h.startswith("access-control-") for h in headers), headers


def test_cors_allows_exactly_the_configured_origin(configured_server: ServerProc) -> None:
    simple, preflight = _cors(configured_server, ALLOWED_ORIGIN)
    assert simple.get("access-control-allow-origin") == ALLOWED_ORIGIN
    assert preflight.get("access-control-allow-origin") == ALLOWED_ORIGIN
    assert "POST" in preflight.get("access-control-allow-methods", "")
    assert "authorization" in preflight.get("access-control-allow-headers", "").lower()
    for origin in ("https://evil.example", "https://studio.example.evil.example", "null"):
        simple, preflight = _cors(configured_server, origin)
        assert "access-control-allow-origin" not in simple, (origin, simple)
        assert "access-control-allow-origin" not in preflight, (origin, preflight)


# -- dependencies -------------------------------------------------------------------------


@pytest.mark.slow
def test_dependency_audit_finds_no_known_vulnerability() -> None:
    """pip-audit over this environment (``pip install pip-audit``; it asks PyPI's JSON API
    for advisories, so it needs the network). Skipped where it cannot reach it."""
    if shutil.which("pip-audit") is None and not _has_module("pip_audit"):
        pytest.skip("pip-audit is not installed (pip install pip-audit)")
    r = subprocess.run([sys.executable, "-m", "pip_audit", "--format", "json", "--progress-spinner",
                        "off"], capture_output=True, text=True, timeout=900)
    try:
        report = json.loads(r.stdout)
    except json.JSONDecodeError:
        pytest.skip(f"pip-audit gave no report (rc {r.returncode}): {r.stderr[-500:]}")
    deps = report.get("dependencies", [])
    skipped = [d for d in deps if d.get("skip_reason")]
    if deps and len(skipped) > len(deps) // 2:
        pytest.skip(f"pip-audit could not reach its vulnerability service: {len(skipped)} of "
                    f"{len(deps)} packages unaudited ({skipped[0]['skip_reason']})")
    found = [(d["name"], d["version"], [v["id"] for v in d["vulns"]]) for d in deps
             if d.get("vulns")]
    assert not found, found


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
