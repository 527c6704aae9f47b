"""build_app(settings, service): the FastAPI application, composed explicitly."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from steadygen import __version__
from steadygen.config import Settings
from steadygen.server import (
    routes_a1111,
    routes_a1111_info,
    routes_edits,
    routes_jobs,
    routes_openai,
    routes_ops,
    routes_telemetry,
    web,
)
from steadygen.server.errors import install_error_handlers
from steadygen.server.metrics import QueueCollector, StateCollector
from steadygen.server.security import BodyLimit, RequireKey, require_key
from steadygen.server.service import Service


def build_app(settings: Settings, service: Service) -> FastAPI:
    keyed = settings.api_key is not None
    app = FastAPI(
        title="steadygen",
        version=__version__,
        description="Z-Image-Turbo image generation whose timing is fast, steady and explained.",
        dependencies=[Depends(require_key(settings.api_key))],
        # With a key, the schema is served by a route that needs the key, and the
        # interactive docs (which load the schema without one) are off.
        openapi_url=None if keyed else "/openapi.json",
        docs_url=None if keyed else "/docs",
        redoc_url=None,
    )
    if keyed:

        @app.get("/openapi.json", include_in_schema=False)
        async def openapi() -> dict[str, Any]:
            return app.openapi()

    install_error_handlers(app)
    for module in (routes_ops, routes_jobs, routes_openai, routes_a1111_info, routes_edits,
                   routes_telemetry, web):
        app.include_router(module.router(service))
    app.include_router(routes_a1111.router(service, live_previews=settings.live_previews))
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes,
                       upload_bytes=settings.max_upload_bytes)
    app.add_middleware(RequireKey, expected=settings.api_key)  # outside: before the body
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        )
    sampler = service.sampler
    service.metrics.registry.register(
        StateCollector(
            counts=service.queue.counts,
            model_state=lambda: {**service.state().to_dict(), "version": __version__,
                                 "model": service.model_name, "device": service.device},
            gauges=sampler.gauges if sampler is not None else None,
            alert_counts=_alert_counts(sampler),
        )
    )
    service.metrics.registry.register(QueueCollector(service.queue.stats))
    app.state.service = service
    _drop_automatic_422(app)
    return app


def _drop_automatic_422(app: FastAPI) -> None:
    """Bad input is answered 400 in OpenAI's error shape (errors.py), never 422: take
    FastAPI's automatic 422 (and its unused models) out of the OpenAPI schema."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            models = schema.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                models.pop(name, None)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _alert_counts(sampler):
    alerts = getattr(sampler, "alerts", None)
    return alerts.counts if alerts is not None else None
