"""BigQuery v2 `models` resource: /bigquery/v2/projects/{p}/datasets/{d}/models[/{m}].

list (maxResults, pageToken), get, patch (description, labels, friendlyName, expirationTime,
trainingRuns[].vertexAiModelId; If-Match honoured) and delete, for the SQL models of
`loopml.sqlml` — what `google-cloud-bigquery`'s list_models / get_model / update_model /
delete_model call. Deleting is DROP MODEL (registry version included). Unknown models are 404s.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from loopml.api.app import json_response, read_json
from loopml.platform import Platform
from loopml.warehouse import resources as res

PREFIX = "/bigquery/v2/projects/{project}/datasets/{dataset}/models"


def install(app: FastAPI, platform: Platform) -> None:
    sqlml: Any = platform.services.get("sqlml")
    if sqlml is None:
        return

    @app.get(PREFIX)
    async def list_models(project: str, dataset: str, request: Request) -> Response:
        items = await run_in_threadpool(sqlml.list_model_resources, project, dataset)
        page, token = res.list_page(items, request.query_params)
        body: dict[str, Any] = {"models": page}
        if token:
            body["nextPageToken"] = token
        return json_response(body)

    @app.get(PREFIX + "/{model}")
    async def get_model(project: str, dataset: str, model: str) -> Response:
        return json_response(await run_in_threadpool(sqlml.get_model_resource, project, dataset, model))

    @app.patch(PREFIX + "/{model}")
    async def patch_model(project: str, dataset: str, model: str, request: Request) -> Response:
        body = await read_json(request)
        if_match = request.headers.get("if-match")
        return json_response(
            await run_in_threadpool(sqlml.patch_model_resource, project, dataset, model, body, if_match)
        )

    @app.delete(PREFIX + "/{model}")
    async def delete_model(project: str, dataset: str, model: str) -> Response:
        await run_in_threadpool(sqlml.delete_model, project, dataset, model)
        return Response(status_code=204)
