"""Routes: Vertex batchPredictionJobs (create, get, list, :cancel, delete) under /v1 and /v1beta1.

Create, get, list and cancel return the resource (not an operation); delete returns a finished
long-running operation (vertex-api.md §1, §12).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from loopml.api.app import json_response, read_json
from loopml.errors import InvalidArgument, NotFound
from loopml.platform import Platform
from loopml.refs import GENERIC_ID_RE, check_parent
from loopml.serving.batch import BatchService

COLLECTION = "/projects/{project}/locations/{location}/batchPredictionJobs"


def install(app: FastAPI, platform: Platform) -> None:
    def service() -> BatchService:
        svc = platform.services.get("batch")
        if svc is None:
            raise NotFound("Batch prediction is not configured on this server.")
        assert isinstance(svc, BatchService)
        return svc

    def job_id(segment: str) -> str:
        if not GENERIC_ID_RE.match(segment):
            raise InvalidArgument(f"Invalid batch prediction job id {segment!r}.")
        return segment

    first_new = len(app.router.routes)
    for prefix in ("/v1", "/v1beta1"):

        @app.post(prefix + COLLECTION, include_in_schema=False)
        async def create(project: str, location: str, request: Request) -> Response:
            body = await read_json(request)
            return json_response(await run_in_threadpool(service().create_job, project, location, body))

        @app.get(prefix + COLLECTION, include_in_schema=False)
        async def list_jobs(
            project: str,
            location: str,
            pageSize: int = 100,
            pageToken: str = "",
            filter: str = "",
        ) -> Response:
            out = await run_in_threadpool(
                lambda: service().list_jobs(
                    project, location, page_size=pageSize, page_token=pageToken, filter_text=filter
                )
            )
            return json_response(out)

        @app.post(prefix + COLLECTION + "/{segment}", include_in_schema=False)
        async def verb(project: str, location: str, segment: str) -> Response:
            name, _, action = segment.partition(":")
            if action != "cancel":
                raise NotFound(f"Unknown method {segment!r} on batchPredictionJobs (supported: :cancel).")
            check_parent(project, location)
            out: dict[str, Any] = await run_in_threadpool(
                service().cancel_job, project, location, job_id(name)
            )
            return json_response(out)

        @app.get(prefix + COLLECTION + "/{segment}", include_in_schema=False)
        async def get(project: str, location: str, segment: str) -> Response:
            check_parent(project, location)
            return json_response(
                await run_in_threadpool(service().get_job, project, location, job_id(segment))
            )

        @app.delete(prefix + COLLECTION + "/{segment}", include_in_schema=False)
        async def delete(project: str, location: str, segment: str) -> Response:
            check_parent(project, location)
            operations = platform.services.get("operations")
            out = await run_in_threadpool(
                service().delete_job, project, location, job_id(segment), operations
            )
            return json_response(out)

    # Other route modules register generic `{collection}` job routes earlier; ours must win.
    ours = app.router.routes[first_new:]
    del app.router.routes[first_new:]
    app.router.routes[0:0] = ours
