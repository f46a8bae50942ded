"""Routes: long-running operations, `GET /ui/{name}` (what Google's REST transport polls) and `/v1/{name}`.

Operations live under `projects/{p}/locations/{l}/operations/{id}` and under any resource:
`.../{collection}/{id}/operations/{op}` (models, endpoints, jobs, ...).
"""

from __future__ import annotations

import re

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from loopml.api.app import json_response
from loopml.errors import InvalidArgument
from loopml.platform import Platform
from loopml.refs import check_parent, parent_name
from loopml.registry.operations import OperationStore

_OP_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
_COLLECTION_RE = re.compile(r"^[a-zA-Z]{1,64}\Z")
_RESOURCE_RE = re.compile(r"^[A-Za-z0-9_@.-]{1,128}\Z")


def install(app: FastAPI, platform: Platform) -> None:
    def store() -> OperationStore:
        service: OperationStore = platform.services["operations"]
        return service

    async def fetch(name: str) -> Response:
        return json_response(await run_in_threadpool(store().get, name))

    for prefix in ("/v1", "/ui"):

        @app.get(
            prefix + "/projects/{project}/locations/{location}/operations/{op_id}", include_in_schema=False
        )
        async def location_operation(project: str, location: str, op_id: str) -> Response:
            check_parent(project, location)
            if not _OP_ID_RE.match(op_id):
                raise InvalidArgument(f"Invalid operation id {op_id!r}.")
            return await fetch(f"{parent_name(project, location)}/operations/{op_id}")

        @app.get(
            prefix + "/projects/{project}/locations/{location}/{collection}/{resource}/operations/{op_id}",
            include_in_schema=False,
        )
        async def resource_operation(
            project: str, location: str, collection: str, resource: str, op_id: str
        ) -> Response:
            check_parent(project, location)
            if not _COLLECTION_RE.match(collection) or not _RESOURCE_RE.match(resource):
                raise InvalidArgument(f"Invalid resource {collection}/{resource}.")
            if not _OP_ID_RE.match(op_id):
                raise InvalidArgument(f"Invalid operation id {op_id!r}.")
            return await fetch(f"{parent_name(project, location)}/{collection}/{resource}/operations/{op_id}")
