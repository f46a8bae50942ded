"""Routes: Pub/Sub v1 REST (topics, subscriptions, publish, pull) and the plain-JSON `/ingest` proxy.

Pub/Sub paths are `/v1/projects/{p}/topics/...` and `/v1/projects/{p}/subscriptions/...`; they
never collide with Vertex's `/v1/projects/{p}/locations/...`. Custom verbs (`:publish`, `:pull`)
arrive in the last path segment and are split off here.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any
from urllib.parse import parse_qs

import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response

from loopml.api.app import json_response, read_json
from loopml.errors import InvalidArgument, LoopmlError, NotFound, PayloadTooLarge
from loopml.ingest.messages import split_events
from loopml.ingest.service import IngestService
from loopml.platform import Platform

log = logging.getLogger(__name__)


def _split(segment: str) -> tuple[str, str]:
    name, _, verb = segment.partition(":")
    return name, verb


def _messages(body: Any) -> list[tuple[bytes, str | None, str | None]]:
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not messages:
        raise InvalidArgument("Invalid field 'messages': the request must contain at least one message.")
    out: list[tuple[bytes, str | None, str | None]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise InvalidArgument(f"Invalid field 'messages[{i}]': each message must be an object.")
        raw = msg.get("data") or ""
        try:
            data = base64.b64decode(raw, validate=True) if raw else b""
        except (binascii.Error, TypeError, ValueError) as exc:
            raise InvalidArgument(f"Invalid field 'messages[{i}].data': it is not valid base64.") from exc
        attrs = msg.get("attributes") or {}
        if not isinstance(attrs, dict) or not all(isinstance(v, str) for v in attrs.values()):
            raise InvalidArgument(f"Invalid field 'messages[{i}].attributes': a map of string to string.")
        if not data and not attrs:
            raise InvalidArgument(f"Invalid field 'messages[{i}]': a message needs data or attributes.")
        key = msg.get("orderingKey") or None
        if key is not None and not isinstance(key, str):
            raise InvalidArgument(f"Invalid field 'messages[{i}].orderingKey': it must be a string.")
        out.append((data, orjson.dumps(attrs).decode() if attrs else None, key))
    return out


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
        service.topic_id(project, topic)  # 404 before reading the body
        ids = await service.publish(project, topic, _messages(await read_json(request)))
        return json_response({"messageIds": ids})

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

    # -- the plain-JSON proxy (the workshop's `POST /json`), as a raw-ASGI fast path ---------
    app.add_middleware(IngestFastPath, platform=platform)


async def ingest_events(service: IngestService, project: str, topic: str, raw: bytes) -> bytes:
    """Publish one JSON value, or each element of a JSON array, as a message; answer like the proxy."""
    tid = service.topic_id(project, topic)
    datas, is_array = split_events(raw)
    first = await service.log.publish(tid, datas)
    if is_array:
        n = len(datas)
        head = b'{"message":"pubsub message sent: %d messages","messageIds":' % n
        return head + _ids_json(first, n) + b"}"
    return orjson.dumps({"message": f"pubsub message sent: {datas[0].decode()}", "messageIds": [str(first)]})


def _ids_json(first: int, n: int) -> bytes:
    """`["first","first+1",...]` (message ids are strings in Pub/Sub JSON), built without n str objects."""
    return b'["' + orjson.dumps(list(range(first, first + n)))[1:-1].replace(b",", b'","') + b'"]'


class IngestFastPath:
    """`POST /ingest/{topic}` and `/ingest/{topic}/json`, answered before FastAPI routing runs."""

    def __init__(self, app: Any, platform: Platform) -> None:
        self.app = app
        self.platform = platform
        self.limit = platform.settings.max_request_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].startswith("/ingest/"):
            parts = scope["path"][len("/ingest/") :].split("/")
            if parts[0] and (len(parts) == 1 or (len(parts) == 2 and parts[1] == "json")):
                await self._serve(scope, receive, send, parts[0])
                return
        await self.app(scope, receive, send)

    async def _serve(self, scope: dict[str, Any], receive: Any, send: Any, topic: str) -> None:
        status, body = 200, b""
        try:
            chunks: list[bytes] = []
            size = 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.limit:
                    raise PayloadTooLarge(f"Request body is larger than the limit of {self.limit} bytes.")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            project = self.platform.settings.default_project
            if scope.get("query_string"):
                query = parse_qs(scope["query_string"].decode("latin-1"))
                project = (query.get("project") or [project])[0]
            service = self.platform.services.get("ingest")
            if service is None:
                raise NotFound("Pub/Sub is not enabled on this server.")
            raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            body = await ingest_events(service, project, topic, raw)
        except LoopmlError as exc:
            status, body = exc.status, orjson.dumps(exc.to_json())
        except Exception as exc:
            log.exception("ingest into %s failed", topic)
            status = 500
            body = orjson.dumps(
                {"error": {"code": 500, "message": f"Internal error: {exc}", "status": "INTERNAL"}}
            )
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
