"""Routes: Pub/Sub v1 REST (topics, subscriptions, publish, pull) and the plain-JSON `/ingest` proxy.

Pub/Sub paths are `/v1/projects/{p}/topics/...` and `/v1/projects/{p}/subscriptions/...`; they
never collide with Vertex's `/v1/projects/{p}/locations/...`. Custom verbs (`:publish`, `:pull`)
arrive in the last path segment and are split off here.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from starlette.responses import Response

from loopml.api.app import json_response, read_json
from loopml.errors import InvalidArgument, NotFound
from loopml.ingest.asgi import IngestFastPath, publish
from loopml.ingest.service import IngestService
from loopml.platform import Platform

log = logging.getLogger(__name__)


def _split(segment: str) -> tuple[str, str]:
    name, _, verb = segment.partition(":")
    return name, verb


def install(app: FastAPI, platform: Platform) -> None:
    def svc() -> IngestService:
        service = platform.services.get("ingest")
        if service is None:
            raise NotFound("Pub/Sub is not enabled on this server.")
        return service  # type: ignore[no-any-return]

    # -- topics ---------------------------------------------------------------------------------
    @app.get("/v1/projects/{project}/topics", include_in_schema=False)
    async def list_topics(project: str) -> Response:
        return json_response({"topics": svc().list_topics(project)})

    @app.put("/v1/projects/{project}/topics/{topic}", include_in_schema=False)
    async def create_topic(project: str, topic: str, request: Request) -> Response:
        body = await read_json(request)
        return json_response(await svc().create_topic(project, topic, body if isinstance(body, dict) else {}))

    @app.get("/v1/projects/{project}/topics/{topic}", include_in_schema=False)
    async def get_topic(project: str, topic: str) -> Response:
        return json_response(svc().get_topic(project, topic))

    @app.delete("/v1/projects/{project}/topics/{topic}", include_in_schema=False)
    async def delete_topic(project: str, topic: str) -> Response:
        await svc().delete_topic(project, topic)
        return json_response({})

    @app.post("/v1/projects/{project}/topics/{segment}", include_in_schema=False)
    async def topic_verb(project: str, segment: str, request: Request) -> Response:
        topic, verb = _split(segment)
        if verb != "publish":
            raise NotFound(f"Unknown topic method {verb!r}; use :publish.")
        service = svc()
        service.topic_id(project, topic)  # 404 before reading the body (normally the fast path answers)
        return Response(
            await publish(service, project, topic, await request.body()), media_type="application/json"
        )

    @app.get("/v1/projects/{project}/topics/{topic}/subscriptions", include_in_schema=False)
    async def topic_subscriptions(project: str, topic: str) -> Response:
        return json_response({"subscriptions": svc().topic_subscriptions(project, topic)})

    # -- subscriptions --------------------------------------------------------------------------
    @app.get("/v1/projects/{project}/subscriptions", include_in_schema=False)
    async def list_subscriptions(project: str) -> Response:
        return json_response({"subscriptions": svc().list_subscriptions(project)})

    @app.put("/v1/projects/{project}/subscriptions/{sub}", include_in_schema=False)
    async def create_subscription(project: str, sub: str, request: Request) -> Response:
        return json_response(await svc().create_subscription(project, sub, await read_json(request)))

    @app.get("/v1/projects/{project}/subscriptions/{segment}", include_in_schema=False)
    async def get_subscription(project: str, segment: str, request: Request) -> Response:
        sub, verb = _split(segment)
        if verb == "deadLetters":
            try:
                limit = int(request.query_params.get("limit", "100"))
            except ValueError as exc:
                raise InvalidArgument("Invalid query parameter 'limit': it must be an integer.") from exc
            return json_response(
                {"deadLetters": svc().dead_letters(project, sub, max(1, min(limit, 10_000)))}
            )
        if verb:
            raise NotFound(f"Unknown subscription method {verb!r}.")
        return json_response(svc().get_subscription(project, sub))

    @app.delete("/v1/projects/{project}/subscriptions/{sub}", include_in_schema=False)
    async def delete_subscription(project: str, sub: str) -> Response:
        await svc().delete_subscription(project, sub)
        return json_response({})

    @app.post("/v1/projects/{project}/subscriptions/{segment}", include_in_schema=False)
    async def subscription_verb(project: str, segment: str, request: Request) -> Response:
        sub, verb = _split(segment)
        service = svc()
        service.sub(project, sub)
        body = await read_json(request)
        if not isinstance(body, dict):
            raise InvalidArgument("The request body must be a JSON object.")
        if verb == "pull":
            received = await service.pull(
                project,
                sub,
                body.get("maxMessages", 100),
                bool(body.get("returnImmediately", False)),
            )
            return json_response({"receivedMessages": received} if received else {})
        if verb == "acknowledge":
            await service.acknowledge(project, sub, body.get("ackIds"))
            return json_response({})
        if verb == "modifyAckDeadline":
            await service.modify_ack_deadline(
                project, sub, body.get("ackIds"), body.get("ackDeadlineSeconds")
            )
            return json_response({})
        raise NotFound(
            f"Unknown subscription method {verb!r}; use :pull, :acknowledge or :modifyAckDeadline."
        )

    # -- publishing (`/ingest` and `:publish`) is answered by a raw-ASGI fast path -------------
    app.add_middleware(
        IngestFastPath,
        service=lambda: platform.services.get("ingest"),
        limit=platform.settings.max_request_bytes,
        default_project=platform.settings.default_project,
    )
