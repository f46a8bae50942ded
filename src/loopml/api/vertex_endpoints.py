"""Routes: Vertex Endpoints (create/get/list/patch/delete, deployModel, undeployModel, mutateDeployedModel).

Verb routes are explicit (`endpoints/{e}:deployModel`) so that `:predict`, `:rawPredict` and
`:explain` reach the serving routes.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from loopml.api.app import json_response, read_json
from loopml.api.vertex_models import list_params, split_verb
from loopml.errors import NotFound
from loopml.platform import Platform
from loopml.registry.endpoints import EndpointService

BASE = "/v1/projects/{project}/locations/{location}"


def install(app: FastAPI, platform: Platform) -> None:
    def endpoints() -> EndpointService:
        service: EndpointService = platform.services["endpoints"]
        return service

    @app.post(BASE + "/endpoints", include_in_schema=False)
    async def create(project: str, location: str, request: Request) -> Response:
        body = await read_json(request)
        endpoint_id = request.query_params.get("endpointId") or request.query_params.get("endpoint_id")
        return json_response(
            await run_in_threadpool(endpoints().create_endpoint, project, location, body, endpoint_id)
        )

    @app.get(BASE + "/endpoints", include_in_schema=False)
    async def list_endpoints(project: str, location: str, request: Request) -> Response:
        params = list_params(request)
        return json_response(
            await run_in_threadpool(lambda: endpoints().list_endpoints(project, location, **params))
        )

    @app.post(BASE + "/endpoints/{endpoint}:deployModel", include_in_schema=False)
    async def deploy(project: str, location: str, endpoint: str, request: Request) -> Response:
        body = await read_json(request)
        return json_response(
            await run_in_threadpool(endpoints().deploy_model, project, location, endpoint, body)
        )

    @app.post(BASE + "/endpoints/{endpoint}:undeployModel", include_in_schema=False)
    async def undeploy(project: str, location: str, endpoint: str, request: Request) -> Response:
        body = await read_json(request)
        return json_response(
            await run_in_threadpool(endpoints().undeploy_model, project, location, endpoint, body)
        )

    @app.post(BASE + "/endpoints/{endpoint}:mutateDeployedModel", include_in_schema=False)
    async def mutate(project: str, location: str, endpoint: str, request: Request) -> Response:
        body = await read_json(request)
        mask = request.query_params.get("updateMask")
        return json_response(
            await run_in_threadpool(
                endpoints().mutate_deployed_model, project, location, endpoint, body, mask
            )
        )

    @app.get(BASE + "/endpoints/{segment}", include_in_schema=False)
    async def get(project: str, location: str, segment: str) -> Response:
        endpoint, verb = split_verb(segment)
        if verb is not None:
            raise NotFound(f"Unknown method GET :{verb} on an endpoint.")
        return json_response(await run_in_threadpool(endpoints().get_endpoint, project, location, endpoint))

    @app.patch(BASE + "/endpoints/{segment}", include_in_schema=False)
    async def patch(project: str, location: str, segment: str, request: Request) -> Response:
        endpoint, verb = split_verb(segment)
        if verb is not None:
            raise NotFound(f"Unknown method PATCH :{verb} on an endpoint.")
        body = await read_json(request)
        mask = request.query_params.get("updateMask") or request.query_params.get("update_mask")
        return json_response(
            await run_in_threadpool(endpoints().update_endpoint, project, location, endpoint, body, mask)
        )

    @app.delete(BASE + "/endpoints/{segment}", include_in_schema=False)
    async def delete(project: str, location: str, segment: str) -> Response:
        endpoint, verb = split_verb(segment)
        if verb is not None:
            raise NotFound(f"Unknown method DELETE :{verb} on an endpoint.")
        return json_response(
            await run_in_threadpool(endpoints().delete_endpoint, project, location, endpoint)
        )
