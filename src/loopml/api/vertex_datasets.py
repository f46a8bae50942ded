"""Routes: Vertex managed datasets (`projects/{p}/locations/{l}/datasets`).

Create and delete return a finished long-running operation (the SDK's `TabularDataset.create`
waits on it); get, list and patch return the resource. The operation itself is served by
`loopml.api.operations` under `datasets/{id}/operations/{op}`.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from loopml.api.app import json_response, read_json
from loopml.api.vertex_models import list_params, split_verb
from loopml.datasets import DatasetService
from loopml.errors import NotFound, Unavailable
from loopml.platform import Platform

BASE = "/v1/projects/{project}/locations/{location}/datasets"


def install(app: FastAPI, platform: Platform) -> None:
    def service() -> DatasetService:
        svc = platform.services.get("datasets")
        if svc is None:
            raise Unavailable("Managed datasets are not configured on this server.")
        assert isinstance(svc, DatasetService)
        return svc

    def dataset_id(segment: str, method: str) -> str:
        ident, verb = split_verb(segment)
        if verb is not None:
            raise NotFound(f"Unknown method {method} :{verb} on a dataset.")
        return ident

    @app.post(BASE, include_in_schema=False)
    async def create(project: str, location: str, request: Request) -> Response:
        body = await read_json(request)
        return json_response(await run_in_threadpool(service().create, project, location, body))

    @app.get(BASE, include_in_schema=False)
    async def list_datasets(project: str, location: str, request: Request) -> Response:
        params = list_params(request)
        svc = service()
        return json_response(await run_in_threadpool(lambda: svc.list(project, location, **params)))

    @app.get(BASE + "/{segment}", include_in_schema=False)
    async def get(project: str, location: str, segment: str) -> Response:
        ident = dataset_id(segment, "GET")
        return json_response(await run_in_threadpool(service().get, project, location, ident))

    @app.patch(BASE + "/{segment}", include_in_schema=False)
    async def patch(project: str, location: str, segment: str, request: Request) -> Response:
        ident = dataset_id(segment, "PATCH")
        body = await read_json(request)
        mask = request.query_params.get("updateMask") or request.query_params.get("update_mask")
        svc = service()
        return json_response(await run_in_threadpool(svc.patch, project, location, ident, body, mask))

    @app.delete(BASE + "/{segment}", include_in_schema=False)
    async def delete(project: str, location: str, segment: str) -> Response:
        ident = dataset_id(segment, "DELETE")
        return json_response(await run_in_threadpool(service().delete, project, location, ident))
