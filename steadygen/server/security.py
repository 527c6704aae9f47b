"""The API key check and the request body limit."""

from __future__ import annotations

import asyncio
import secrets

from fastapi import HTTPException, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from steadygen.server.errors import error_response

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", "/favicon.ico"})
OPEN_PREFIXES = ("/static/",)
# How much of a refused request's body is read and thrown away so that the client, still
# sending, hears the answer (nginx does the same: "lingering close"); past it, close.
DRAIN_BYTES = 64 * 2**20
DRAIN_S = 30.0
CLOSE = {"Connection": "close"}  # a body left unread ends the connection: say so


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
                # the body is not parsed, only read and thrown away (see BodyLimit)
                drained = await drain_unread_body(scope, receive, DRAIN_BYTES, DRAIN_S)
                response = error_response(
                    401, problem, kind="authentication_error", param="authorization",
                    headers={"WWW-Authenticate": "Bearer"} | ({} if drained else CLOSE),
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413, without keeping them in memory.

    Most HTTP clients (Python's urllib, ``requests``, httpx) send the whole body before they
    read the answer. An answer sent while the body is still arriving, followed by a close,
    reaches them as "connection reset" instead of the 413. So, as nginx does, the rest of a
    refused body is read and thrown away, up to ``drain_bytes`` and ``drain_s``, before the
    413 goes out; past either bound the 413 goes out at once and the connection closes. A
    client that sent ``Expect: 100-continue`` has sent nothing yet: it hears 413 at once.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, drain_bytes: int = DRAIN_BYTES,
                 drain_s: float = DRAIN_S):
        self.app = app
        self.max_bytes = max_bytes
        self.drain_bytes = drain_bytes
        self.drain_s = drain_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            drained = await drain_unread_body(scope, receive, self.drain_bytes, self.drain_s)
            await self._refuse(scope, receive, send, drained=drained)
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
            if seen > self.max_bytes:
                drained = not message.get("more_body", False) or await drain(
                    receive, self.drain_bytes - seen, self.drain_s)
                await self._refuse(scope, receive, send, drained=drained)
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

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, drained: bool) -> None:
        rule = f"request body is larger than {self.max_bytes} bytes"
        response = error_response(
            413, f"body: {rule}", param="body", code="too_large",
            errors=[{"field": "body", "message": rule}],
            headers=None if drained else CLOSE,
        )
        await response(scope, receive, send)


async def drain_unread_body(scope: Scope, receive: Receive, max_bytes: int,
                            max_s: float) -> bool:
    """Before refusing a request whose body has not been read: read and discard it, so that
    a client still sending hears the answer. True when nothing of it is left unread. A body
    declared larger than ``max_bytes`` is not read, nor one held back by ``Expect:
    100-continue`` (the client waits for a go-ahead that refusing never gives)."""
    headers = dict(scope.get("headers") or [])
    declared = headers.get(b"content-length", b"")
    if declared.isdigit() and int(declared) == 0:
        return True
    if headers.get(b"expect", b"").lower() == b"100-continue":
        return False
    if declared.isdigit() and int(declared) > max_bytes:
        return False
    return await drain(receive, max_bytes, max_s)


async def drain(receive: Receive, max_bytes: int, max_s: float) -> bool:
    """Read and discard the rest of a request body: True once it has all been read, False
    when it goes past ``max_bytes`` or ``max_s`` first, or the client goes away."""
    seen = 0
    try:
        async with asyncio.timeout(max_s):
            while seen <= max_bytes:
                message = await receive()
                if message["type"] != "http.request":
                    return False
                seen += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return seen <= max_bytes
    except TimeoutError:
        return False
    return False
