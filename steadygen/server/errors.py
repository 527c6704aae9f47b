"""steadygen's typed errors turned into HTTP answers, all in OpenAI's error shape:
``{"error": {"message", "type", "param", "code", "errors": [{"field", "message"}]}}``.
Bad input is a 4xx naming the field; nothing becomes a traceback."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from steadygen.errors import (
    ConfigError,
    InvalidRequest,
    JobNotFound,
    ModelError,
    QueueFull,
    QueueUnavailable,
    StorageBusy,
    StorageError,
)

log = logging.getLogger("steadygen.server")


def error_response(
    status: int,
    message: str,
    *,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "message": message,
        "type": kind,
        "param": param,
        "code": code,
        "errors": errors or ([{"field": param, "message": message}] if param else []),
    }
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _field_of(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(InvalidRequest)
    async def invalid(_: Request, exc: InvalidRequest) -> JSONResponse:
        errors = [{"field": e.field, "message": e.message} for e in exc.errors]
        first = exc.errors[0]
        return error_response(
            400, f"{first.field}: {first.message}", param=first.field,
            code="invalid_value", errors=errors,
        )

    @app.exception_handler(RequestValidationError)
    async def bad_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for err in exc.errors():
            field = _field_of(err.get("loc", ()))
            kind = err.get("type", "")
            if kind == "extra_forbidden":
                msg = "is not a known field; remove it"
            elif kind == "missing":
                msg = "is required"
            elif kind.startswith("json"):
                field, msg = "body", "is not valid JSON: " + str(err.get("msg", ""))
            else:
                msg = str(err.get("msg", "is not valid"))
            errors.append({"field": field, "message": msg})
        first = errors[0] if errors else {"field": "body", "message": "is not valid"}
        return error_response(
            400, f"{first['field']}: {first['message']}", param=first["field"],
            code="invalid_value", errors=errors,
        )

    @app.exception_handler(QueueFull)
    async def full(_: Request, exc: QueueFull) -> JSONResponse:
        retry = max(1, int(round(exc.retry_after_s)))
        return error_response(
            429, str(exc), kind="rate_limit_error", code="queue_full",
            headers={"Retry-After": str(retry)},
        )

    @app.exception_handler(JobNotFound)
    async def not_found(_: Request, exc: JobNotFound) -> JSONResponse:
        return error_response(404, str(exc), param="id", code="not_found")

    @app.exception_handler(ModelError)
    async def model(_: Request, exc: ModelError) -> JSONResponse:
        return error_response(400, str(exc), param="model", code="model_not_found")

    @app.exception_handler(StorageError)
    async def storage(_: Request, exc: StorageError) -> JSONResponse:
        log.error("storage error: %s", exc)
        if isinstance(exc, StorageBusy):
            # Another process held SQLite's write lock past busy_timeout: try again soon.
            return error_response(503, str(exc), kind="server_error", code="storage_busy",
                                  headers={"Retry-After": "5"})
        return error_response(507, str(exc), kind="server_error", code="storage")

    @app.exception_handler(QueueUnavailable)
    async def unavailable(_: Request, exc: QueueUnavailable) -> JSONResponse:
        return error_response(503, str(exc), kind="server_error", code="queue_unavailable",
                              headers={"Retry-After": "5"})

    @app.exception_handler(ConfigError)
    async def config(_: Request, exc: ConfigError) -> JSONResponse:
        return error_response(400, str(exc), code="unsupported")

    @app.exception_handler(StarletteHTTPException)
    async def http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status, message = exc.status_code, str(exc.detail)
        headers = dict(getattr(exc, "headers", None) or {})
        if status == 400 and message == "There was an error parsing the body":
            message = "body: " + _unparsable(exc.__cause__)  # FastAPI's words name no cause
        elif status == 404 and message == "Not Found":
            message = f"path: no route {request.url.path}"
        elif status == 405:
            allowed = _allowed_methods(request)
            headers["Allow"] = ", ".join(allowed)
            message = f"method: {request.method} is not allowed here; use {' or '.join(allowed)}"
        kind = ("authentication_error" if status == 401
                else "server_error" if status >= 500 else "invalid_request_error")
        field, sep, _ = message.partition(": ")
        named = sep and all(part.isidentifier() for part in field.split("."))
        param = field if named else None  # "index: ..." names index; "a.b: ..." names a.b
        return error_response(status, message, kind=kind, param=param, headers=headers or None)

    @app.exception_handler(Exception)
    async def crash(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error while answering a request")
        return error_response(
            500, f"internal error: {type(exc).__name__}", kind="server_error", code="internal"
        )


def _unparsable(cause: BaseException | None) -> str:
    """Why a body could not be read as JSON, in the client's terms."""
    if isinstance(cause, UnicodeDecodeError):
        return f"is not valid UTF-8 (byte {cause.start}); send JSON encoded as UTF-8"
    if isinstance(cause, RecursionError):
        return "is not acceptable JSON: it is nested too deeply"
    if isinstance(cause, ValueError):  # e.g. an integer with more than 4300 digits
        return f"is not acceptable JSON: {cause}"
    return "is not valid JSON"


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route accepts at this path (Starlette's 405 names only the first
    route's: GET /v1/jobs/{id} hides DELETE /v1/jobs/{id})."""
    from starlette.routing import Match

    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "\x00"})
        if match is Match.PARTIAL:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)

