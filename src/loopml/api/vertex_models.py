"""Routes: Vertex Model Registry (`models:upload`, get/list/patch/delete, versions, aliases, evaluations).

Custom verbs are part of the last path segment (`models/m@2:deleteVersion`); the segment is split
here. uvicorn has already percent-decoded `%40` to `@`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from loopml.api.app import json_response, read_json
from loopml.errors import InvalidArgument, NotFound
from loopml.platform import Platform
from loopml.registry.evaluations import EvaluationService
from loopml.registry.service import RegistryService

BASE = "/v1/projects/{project}/locations/{location}"


def split_verb(segment: str) -> tuple[str, str | None]:
    """("m@2", "deleteVersion") from "m@2:deleteVersion"."""
    name, sep, verb = segment.partition(":")
    if not name:
        raise InvalidArgument(f"Missing resource id in {segment!r}.")
    return name, (verb if sep else None)


def list_params(request: Request) -> dict[str, Any]:
    q = request.query_params
    return {
        "filter": q.get("filter"),
        "order_by": q.get("orderBy") or q.get("order_by"),
        "page_size": q.get("pageSize") or q.get("page_size"),
        "page_token": q.get("pageToken") or q.get("page_token"),
    }


def _unknown_verb(verb: str, method: str) -> NotFound:
    return NotFound(f"Unknown method {method} :{verb} on a model.")


def install(app: FastAPI, platform: Platform) -> None:
    def registry() -> RegistryService:
        service: RegistryService = platform.services["registry"]
        return service

    def evaluations() -> EvaluationService:
        service: EvaluationService = platform.services["evaluations"]
        return service

    @app.post(BASE + "/models:upload", include_in_schema=False)
    async def upload(project: str, location: str, request: Request) -> Response:
        body = await read_json(request)
        return json_response(await run_in_threadpool(registry().upload_operation, project, location, body))

    @app.get(BASE + "/models", include_in_schema=False)
    async def list_models(project: str, location: str, request: Request) -> Response:
        params = list_params(request)
        return json_response(
            await run_in_threadpool(lambda: registry().list_models(project, location, **params))
        )

    @app.post(BASE + "/models/{model}/evaluations:import", include_in_schema=False)
    async def import_evaluation(project: str, location: str, model: str, request: Request) -> Response:
        body = await read_json(request)
        svc = evaluations()
        return json_response(await run_in_threadpool(svc.import_evaluation, project, location, model, body))

    @app.get(BASE + "/models/{model}/evaluations", include_in_schema=False)
    async def list_evaluations(project: str, location: str, model: str, request: Request) -> Response:
        p = list_params(request)
        svc = evaluations()
        return json_response(
            await run_in_threadpool(
                lambda: svc.list_evaluations(
                    project,
                    location,
                    model,
                    filter=p["filter"],
                    page_size=p["page_size"],
                    page_token=p["page_token"],
                )
            )
        )

    @app.get(BASE + "/models/{model}/evaluations/{evaluation}", include_in_schema=False)
    async def get_evaluation(project: str, location: str, model: str, evaluation: str) -> Response:
        svc = evaluations()
        return json_response(
            await run_in_threadpool(svc.get_evaluation, project, location, model, evaluation)
        )

    @app.get(BASE + "/models/{segment}", include_in_schema=False)
    async def get_model(project: str, location: str, segment: str, request: Request) -> Response:
        ref, verb = split_verb(segment)
        if verb is None:
            return json_response(await run_in_threadpool(registry().get_model, project, location, ref))
        if verb == "listVersions":
            params = list_params(request)
            return json_response(
                await run_in_threadpool(lambda: registry().list_versions(project, location, ref, **params))
            )
        raise _unknown_verb(verb, "GET")

    @app.patch(BASE + "/models/{segment}", include_in_schema=False)
    async def patch_model(project: str, location: str, segment: str, request: Request) -> Response:
        ref, verb = split_verb(segment)
        if verb is not None:
            raise _unknown_verb(verb, "PATCH")
        body = await read_json(request)
        mask = request.query_params.get("updateMask") or request.query_params.get("update_mask")
        return json_response(
            await run_in_threadpool(registry().update_model, project, location, ref, body, mask)
        )

    @app.post(BASE + "/models/{model}:mergeVersionAliases", include_in_schema=False)
    async def merge_aliases(project: str, location: str, model: str, request: Request) -> Response:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise InvalidArgument('Request body must be {"versionAliases": [...]}.')
        aliases = body.get("versionAliases")
        return json_response(
            await run_in_threadpool(registry().merge_version_aliases, project, location, model, aliases)
        )

    @app.delete(BASE + "/models/{segment}", include_in_schema=False)
    async def delete_model(project: str, location: str, segment: str) -> Response:
        ref, verb = split_verb(segment)
        if verb is None:
            return json_response(await run_in_threadpool(registry().delete_model, project, location, ref))
        if verb == "deleteVersion":
            return json_response(await run_in_threadpool(registry().delete_version, project, location, ref))
        raise _unknown_verb(verb, "DELETE")
