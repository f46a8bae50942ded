"""The FastAPI application: one error handler, body limits, health, and every route module.

Each route module exposes `install(app, platform)`; add new modules to `ROUTE_MODULES`.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from loopml.api.limits import BodyLimitMiddleware
from loopml.errors import LoopmlError, incident
from loopml.platform import Platform

log = logging.getLogger(__name__)

ROUTE_MODULES = [
    "loopml.api.operations",
    "loopml.api.vertex_models",
    "loopml.api.vertex_endpoints",
    "loopml.api.vertex_datasets",
    "loopml.api.predict",
    "loopml.api.bigquery",
    "loopml.api.bigquery_models",
    "loopml.api.pubsub",
    "loopml.api.storage",
    "loopml.api.jobs",
    "loopml.api.batch",
    "loopml.api.metrics",
]

_HTTP_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "ALREADY_EXISTS",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
}

_REASONS = {400: "invalid", 404: "notFound", 409: "duplicate", 413: "invalid", 503: "backendError"}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def error_response(
    request: Request, status: int, message: str, status_name: str, reason: str, location: str | None = None
) -> Response:
    error: dict[str, Any] = {"code": status, "message": message, "status": status_name, "details": []}
    if request.url.path.startswith(
        ("/bigquery/", "/storage/", "/upload/storage/", "/download/storage/", "/upload/bigquery/")
    ):
        entry = {"reason": reason, "message": message, "domain": "global"}
        if location:
            entry |= {"location": location, "locationType": "parameter"}
        error["errors"] = [entry]
    return json_response({"error": error}, status)


def create_app(platform: Platform) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await platform.start(background=True)
        _app.state.ready = True
        try:
            yield
        finally:
            _app.state.ready = False
            await platform.stop()

    app = FastAPI(title="loopml", version="0.1.0", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.platform = platform
    app.state.ready = False
    app.add_middleware(
        BodyLimitMiddleware,
        default_limit=platform.settings.max_request_bytes,
        predict_limit=platform.settings.max_predict_bytes,
    )

    @app.exception_handler(LoopmlError)
    async def _loopml_error(request: Request, exc: LoopmlError) -> Response:
        if exc.status >= 500:
            log.error("%s %s failed: %s", request.method, request.url.path, exc.message)
        return error_response(request, exc.status, exc.message, exc.code, exc.reason, exc.location)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        parts = []
        for err in exc.errors()[:5]:
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{loc or 'body'}: {err.get('msg')}")
        return error_response(
            request, 400, "Invalid request: " + "; ".join(parts), "INVALID_ARGUMENT", "invalid"
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        status = exc.status_code
        message = str(exc.detail) if exc.detail else "error"
        if status == 404:
            message = f"Not found: {request.method} {request.url.path} is not a loopml route or resource."
        elif status == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}."
        return error_response(
            request,
            status,
            message,
            _HTTP_STATUS_NAMES.get(status, "UNKNOWN"),
            _REASONS.get(status, "invalid"),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        # the details (paths, backend messages) go to the server log only, under an incident id
        incident_id, message = incident(exc)
        log.exception("unexpected error %s on %s %s", incident_id, request.method, request.url.path)
        return error_response(request, 500, message, "INTERNAL", "backendError")

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        if not app.state.ready or not platform.ready.is_set():
            return json_response({"status": "starting"}, 503)
        return json_response({"status": "ok"})

    for module_name in ROUTE_MODULES:
        module = importlib.import_module(module_name)
        module.install(app, platform)
    return app


async def read_json(request: Request) -> Any:
    """The request body as JSON; malformed JSON is a 400 naming the position."""
    body = await request.body()
    if not body:
        return {}
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        from loopml.errors import InvalidArgument

        raise InvalidArgument(f"Malformed JSON in request body: {exc}.") from exc
