"""Routes: `:predict`, `:rawPredict` and `:explain` on endpoints, and replica status.

Prediction requests are served by the serving runtime's raw-ASGI fast path
(`loopml.serving.asgi`), installed here as the outermost middleware so they skip FastAPI routing.
`GET …/endpoints/{e}/deployedModels/{d}/replicas` is a loopml extension (not in Vertex): the
per-replica state, pid, restarts and log file of a deployed model.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.responses import Response

from loopml.errors import NotFound
from loopml.platform import Platform

BASE = "/v1/projects/{project}/locations/{location}/endpoints/{endpoint}"


def install(app: FastAPI, platform: Platform) -> None:
    service = platform.services.get("serving")
    if service is None:
        return
    from loopml.api.app import json_response
    from loopml.serving.asgi import PredictFastPath

    app.add_middleware(PredictFastPath, service=service, limit=platform.settings.max_predict_bytes)

    @app.get(BASE + "/deployedModels/{deployed_model_id}/replicas", include_in_schema=False)
    async def replicas(project: str, location: str, endpoint: str, deployed_model_id: str) -> Response:
        name = f"projects/{project}/locations/{location}/endpoints/{endpoint}"
        runtime = service.router.runtimes.get(deployed_model_id)
        if runtime is None or runtime.spec.endpoint_name != name:
            raise NotFound(f"Deployed model {deployed_model_id} is not running on endpoint {name}.")
        return json_response({"endpoint": name, "deployedModelId": deployed_model_id, **runtime.status()})
