"""--api-key: every route but /healthz and /readyz needs the bearer key; without the flag,
none does."""

from __future__ import annotations

import pytest

from tests.server.conftest import API_KEY, ServerProc

PROTECTED = [
    ("GET", "/v1/jobs"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs/j0000"),
    ("DELETE", "/v1/jobs/j0000"),
    ("GET", "/v1/jobs/j0000/events"),
    ("GET", "/v1/jobs/j0000/images/0.png"),
    ("POST", "/v1/images/generations"),
    ("POST", "/sdapi/v1/txt2img"),
    ("GET", "/sdapi/v1/progress"),
    ("POST", "/sdapi/v1/interrupt"),
    ("GET", "/v1/telemetry"),
    ("GET", "/metrics"),
    ("GET", "/v1/telemetry/stream"),
    ("GET", "/openapi.json"),
]


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-key", f"Basic {API_KEY}", "Bearer", f"Bearer {API_KEY}x"],
)
@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_protected_routes_refuse_a_missing_or_wrong_key(
    main_server: ServerProc, method: str, path: str, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    with main_server.client(authorised=False) as c:
        r = c.request(method, path, headers=headers, json={"prompt": "x"})
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    error = r.json()["error"]  # OpenAI's error shape
    assert error["type"] == "authentication_error"
    assert error["message"].startswith("authorization")


def test_the_right_key_is_accepted(main_server: ServerProc) -> None:
    with main_server.client() as c:
        assert c.get("/v1/jobs", params={"limit": 1}).status_code == 200
        assert c.get("/metrics").status_code == 200
        assert c.get("/v1/telemetry").status_code == 200


def test_health_and_readiness_are_open(main_server: ServerProc) -> None:
    with main_server.client(authorised=False) as c:
        assert c.get("/healthz").json() == {"ok": True}
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True


def test_without_api_key_no_key_is_needed(plain: ServerProc) -> None:
    assert plain.api_key is None
    with plain.client(authorised=False) as c:
        assert c.get("/v1/jobs", params={"limit": 1}).status_code == 200
        assert c.get("/metrics").status_code == 200
        # A client that sends some key anyway (the openai client always does) is fine too.
        r = c.get("/v1/jobs", headers={"Authorization": "Bearer anything"})
        assert r.status_code == 200


def test_the_schema_is_served_with_the_key_and_the_docs_are_off(main_server: ServerProc) -> None:
    with main_server.client() as c:
        schema = c.get("/openapi.json")
        assert schema.status_code == 200 and "/v1/jobs" in schema.json()["paths"]
        assert c.get("/docs").status_code == 404  # it would load the schema without the key


def test_the_page_loads_without_a_key_to_ask_for_one(main_server: ServerProc) -> None:
    with main_server.client(authorised=False) as c:
        page = c.get("/")
        assert page.status_code == 200 and "<html" in page.text.lower()
