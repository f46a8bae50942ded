"""Routes: Prometheus `/metrics` (serving runtime metrics plus the process collectors)."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.responses import Response

from loopml.platform import Platform


def install(app: FastAPI, platform: Platform) -> None:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from prometheus_client import REGISTRY as PROCESS_REGISTRY

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        body = generate_latest(PROCESS_REGISTRY)
        service = platform.services.get("serving")
        if service is not None:
            service.metrics.refresh(list(service.router.runtimes.values()))
            body += generate_latest(service.metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)
