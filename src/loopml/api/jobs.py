"""Routes: Vertex `customJobs` and `trainingPipelines`, job logs, and GCE metadata emulation.

Create, get, list and `:cancel` return the resource (not an LRO); delete returns a finished
LRO. `GET .../customJobs/{id}:logs?follow=true&offset=N` (a loopml extension) streams the job's
log as text/plain; it also works on a trainingPipeline (its backing job's log).

The GCE metadata emulation answers `GET /` and `/computeMetadata/v1/...` when the request
carries `Metadata-Flavor: Google`, so `google.auth.default()` inside a job (whose environment
sets `GCE_METADATA_HOST`/`GCE_METADATA_IP` to this server) gets a project and a token offline.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from loopml.api.app import json_response, read_json
from loopml.errors import InvalidArgument, NotFound, Unavailable
from loopml.platform import Platform

COLLECTIONS = ("customJobs", "trainingPipelines")
_DELETE_TYPE = "type.googleapis.com/google.protobuf.Empty"


def _service(platform: Platform) -> Any:
    service = platform.services.get("training")
    if service is None:
        raise Unavailable("Training is not configured on this server.")
    return service


def _split(segment: str) -> tuple[str, str]:
    job_id, _, verb = segment.partition(":")
    if not job_id:
        raise InvalidArgument("A job id is required.")
    return job_id, verb


def install(app: FastAPI, platform: Platform) -> None:
    app.add_middleware(MetadataEmulation, project=lambda: _metadata_project(platform))
    for collection in COLLECTIONS:  # literal paths: never shadow other teams' collections
        _install_collection(app, platform, collection)


def _install_collection(app: FastAPI, platform: Platform, collection: str) -> None:
    base = "/v1/projects/{project}/locations/{location}/" + collection

    @app.post(base, include_in_schema=False)
    async def create_job(project: str, location: str, request: Request) -> Response:
        body = await read_json(request)
        svc = _service(platform)
        if collection == "customJobs":
            out = await run_in_threadpool(svc.create_custom_job, project, location, body)
        else:
            out = await run_in_threadpool(svc.create_training_pipeline, project, location, body)
        return json_response(out)

    @app.get(base, include_in_schema=False)
    async def list_jobs(project: str, location: str, request: Request) -> Response:
        q = request.query_params
        try:
            page_size = int(q.get("pageSize") or 100)
        except ValueError as exc:
            raise InvalidArgument(f"pageSize must be an integer, got {q.get('pageSize')!r}.") from exc
        out = await run_in_threadpool(
            _service(platform).list,
            project,
            location,
            collection,
            filter_text=q.get("filter", ""),
            page_size=page_size,
            page_token=q.get("pageToken", ""),
        )
        return json_response(out)

    @app.get(base + "/{segment}", include_in_schema=False)
    async def get_job(project: str, location: str, segment: str, request: Request) -> Response:
        job_id, verb = _split(segment)
        svc = _service(platform)
        if verb == "logs":
            return await _logs(svc, project, location, collection, job_id, request)
        if verb:
            raise NotFound(f"Unknown method :{verb} on {collection}.")
        return json_response(await run_in_threadpool(svc.get, project, location, collection, job_id))

    @app.post(base + "/{segment}", include_in_schema=False)
    async def job_verb(project: str, location: str, segment: str, request: Request) -> Response:
        job_id, verb = _split(segment)
        if verb != "cancel":
            raise NotFound(f"Unknown method :{verb or '(none)'} on {collection}; use :cancel.")
        await read_json(request)
        svc = _service(platform)
        await run_in_threadpool(svc.cancel, project, location, collection, job_id)
        return json_response({})

    @app.delete(base + "/{segment}", include_in_schema=False)
    async def delete_job(project: str, location: str, segment: str) -> Response:
        job_id, verb = _split(segment)
        if verb:
            raise NotFound(f"Unknown method :{verb} for DELETE.")
        name = await run_in_threadpool(_service(platform).delete, project, location, collection, job_id)
        return json_response(
            {"name": f"{name}/operations/delete", "done": True, "response": {"@type": _DELETE_TYPE}}
        )


async def _logs(
    svc: Any, project: str, location: str, collection: str, job_id: str, request: Request
) -> Response:
    path, _name = await run_in_threadpool(svc.log_path, project, location, collection, job_id)
    follow = request.query_params.get("follow", "false").lower() in ("1", "true", "yes")
    try:
        offset = max(0, int(request.query_params.get("offset", "0")))
    except ValueError as exc:
        raise InvalidArgument("offset must be an integer.") from exc

    async def stream() -> AsyncIterator[bytes]:
        pos = offset
        while True:
            chunk = b""
            if path.exists():
                with open(path, "rb") as f:
                    f.seek(pos)
                    chunk = f.read(1 << 20)
            if chunk:
                pos += len(chunk)
                yield chunk
                continue
            if not follow:
                return
            state = await run_in_threadpool(svc.state, project, location, collection, job_id)
            if state in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"):
                # one last read after the terminal state, then stop
                if path.exists() and path.stat().st_size > pos:
                    continue
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.3)

    return StreamingResponse(stream(), media_type="text/plain; charset=utf-8")


# -- GCE metadata emulation ------------------------------------------------------------------
def _metadata_project(platform: Platform) -> str:
    return str(getattr(platform.settings, "default_project", None) or "loopml")


class MetadataEmulation:
    """Answers GCE metadata requests (`Metadata-Flavor: Google`) before routing."""

    def __init__(self, app: ASGIApp, project: Any) -> None:
        self.app = app
        self.project = project

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope.get("path", "")
            headers = dict(scope.get("headers") or [])
            flavored = headers.get(b"metadata-flavor", b"").lower() == b"google"
            if path.startswith("/computeMetadata/") or (path == "/" and flavored):
                status, body, ctype = self.answer(path, scope.get("query_string", b"").decode())
                hdrs = [(b"metadata-flavor", b"Google"), (b"content-type", ctype.encode())]
                await send({"type": "http.response.start", "status": status, "headers": hdrs})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    def answer(self, path: str, query: str) -> tuple[int, bytes, str]:
        text = "text/plain"
        sub = path.removeprefix("/computeMetadata/v1").rstrip("/")
        if path == "/" or sub == "":
            return 200, b"computeMetadata/\n", text
        if sub == "/project/project-id":
            return 200, str(self.project()).encode(), text
        if sub == "/project/numeric-project-id":
            return 200, b"0", text
        if sub == "/universe/universe-domain":
            return 200, b"googleapis.com", text
        if sub in ("/instance/service-accounts/default", "/instance/service-accounts/default/email"):
            email = "loopml-local@loopml.iam.gserviceaccount.com"
            if sub.endswith("/email"):
                return 200, email.encode(), text
            info = {
                "email": email,
                "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
                "aliases": ["default"],
            }
            return 200, orjson.dumps(info), "application/json"
        if sub in (
            "/instance/service-accounts/default/token",
            "/instance/service-accounts/loopml-local@loopml.iam.gserviceaccount.com/token",
        ):
            token = {"access_token": "loopml-local-token", "expires_in": 3600, "token_type": "Bearer"}
            return 200, orjson.dumps(token), "application/json"
        if sub == "/instance/service-accounts/default/scopes":
            return 200, b"https://www.googleapis.com/auth/cloud-platform", text
        if sub == "/instance/zone":
            return 200, b"projects/0/zones/local-a", text
        return 404, f"metadata path {sub} is not emulated by loopml".encode(), text
