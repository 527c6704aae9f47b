"""The API key check and the request body limit."""

from __future__ import annotations

import secrets

from fastapi import HTTPException, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from steadygen.server.errors import error_response

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", "/favicon.ico"})
OPEN_PREFIXES = ("/static/",)


def key_problem(path: str, authorization: str, expected: str | None) -> str | None:
    """Why a request may not pass (the 401's message), or None when it may."""
    if expected is None or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return "authorization: missing; send 'Authorization: Bearer <API key>'"
    if not secrets.compare_digest(token.encode(), expected.encode()):
        return "authorization: the API key is wrong"
    return None


def require_key(expected: str | None):
    """A FastAPI dependency: ``Authorization: Bearer <key>`` when a key is configured."""

    async def check(request: Request) -> None:
        problem = key_problem(request.url.path, request.headers.get("authorization", ""),
                              expected)
        if problem is not None:
            raise HTTPException(401, problem, headers={"WWW-Authenticate": "Bearer"})

    return check


class RequireKey:
    """The same check as ASGI middleware, before routing and before the body is read: a
    client without the key learns nothing, not even whether its JSON or its path is valid
    (FastAPI reads and parses the body before it runs a route's dependencies)."""

    def __init__(self, app: ASGIApp, expected: str | None):
        self.app = app
        self.expected = expected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.expected is not None:
            authorization = ""
            for name, value in scope.get("headers") or []:
                if name == b"authorization":
                    authorization = value.decode("latin-1")
            problem = key_problem(scope["path"], authorization, self.expected)
            if problem is not None:
                response = error_response(
                    401, problem, kind="authentication_error", param="authorization",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# Routes whose bodies carry images get the larger upload limit. /v1/jobs keeps the small
# one: a native job names large images by the id POST /v1/inputs returned.
UPLOAD_PATHS = frozenset({"/v1/images/edits", "/sdapi/v1/img2img", "/v1/inputs"})


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` (``upload_bytes`` on the routes that take
    images) with 413, before they are read into memory."""

    def __init__(self, app: ASGIApp, max_bytes: int, upload_bytes: int | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.upload_bytes = max(upload_bytes or max_bytes, max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.upload_bytes if scope["path"] in UPLOAD_PATHS else self.max_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(scope, receive, send, limit)
            return
        if declared is not None:
            await self.app(scope, receive, send)
            return
        # No declared length (chunked): read the body here, up to the limit, then replay it.
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body = message.get("body", b"")
            seen += len(body)
            if seen > limit:
                await self._refuse(scope, receive, send, limit)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        rule = f"request body is larger than {limit} bytes"
        response = error_response(
            413, f"body: {rule}", param="body", code="too_large",
            errors=[{"field": "body", "message": rule}],
        )
        await response(scope, receive, send)

