"""The raw-ASGI fast path for publishing: `POST /ingest/{topic}[/json]` and Pub/Sub's `:publish`.

Installed as a middleware of the API app, it answers publish requests before FastAPI routing
runs (routing, dependency and response machinery cost more than the publish itself for small
requests): read the body, decode it, append the messages to the log and answer once they are
durable. Every other request passes through untouched.

`/ingest` bodies are split into their elements without being decoded (see `split_events`).
`:publish` bodies are decoded with the cyclic garbage collector paused: the decoded objects are
freed by reference counting before the pause ends, and otherwise the thousands of containers a
large body decodes to trigger collections that scan the server's whole heap, which costs about
as much as the decoding itself.
"""

from __future__ import annotations

import base64
import binascii
import gc
import itertools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import msgspec
import orjson

from loopml.errors import InvalidArgument, LoopmlError, NotFound, PayloadTooLarge, incident

if TYPE_CHECKING:
    from loopml.ingest.service import IngestService

log = logging.getLogger(__name__)

Columns = tuple[list[bytes], list[str | None] | None, list[str | None] | None]
"""Messages as columns: data, attributes JSON (None: no message has any), ordering keys."""


@contextmanager
def gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_ELEMENTS = msgspec.json.Decoder(list[msgspec.Raw])
_VALUE = msgspec.json.Decoder(msgspec.Raw)


_KINDS = {ord("["): "an array", ord('"'): "a string", ord("t"): "a boolean", ord("f"): "a boolean"}
_KINDS[ord("n")] = "null"


def _kind(value: bytes) -> str:
    """What a (valid, non-object) JSON value is, from its first byte."""
    return _KINDS.get(value[0], "a number") if value else "empty"


def split_events(raw: bytes) -> tuple[list[bytes], bool]:
    """A JSON body as message data: each object of an array, or the one object, as its JSON text.

    Returns the data and whether the body was an array. Each message's data is its element's
    JSON exactly as sent (whitespace around elements dropped). The body is validated (JSON
    grammar, UTF-8, every event an object) without building Python objects: msgspec splits the
    array into raw element slices, about four times faster than decoding and re-encoding every
    element, and an element is an object when its slice starts with `{`. Malformed JSON, an
    empty array, a bare scalar or array body, and an array with a non-object element are 400s.
    """
    body = raw.strip(b" \t\r\n")
    try:
        if not body.isascii():
            body.decode("utf-8")
        if body[:1] == b"[":
            elements = _ELEMENTS.decode(body)
            if not elements:
                raise InvalidArgument("The JSON array is empty: send at least one event.")
            datas = list(map(bytes, elements))
            if not all(map(bytes.startswith, datas, itertools.repeat(b"{"))):
                i = next(i for i, d in enumerate(datas) if not d.startswith(b"{"))
                raise InvalidArgument(
                    f"Element {i} of the JSON array is {_kind(datas[i])}, not an object: "
                    "send one JSON object or an array of JSON objects."
                )
            return datas, True
        _VALUE.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"Malformed JSON in request body: {exc}.") from exc
    if not body.startswith(b"{"):
        raise InvalidArgument(
            f"The request body is {_kind(body)}, not a JSON object: send one JSON object or an array "
            "of JSON objects."
        )
    return [body], False


class _Message(msgspec.Struct, gc=False):
    data: str | None = None
    attributes: dict[str, str] | None = None
    orderingKey: str | None = None


class _PublishRequest(msgspec.Struct, gc=False):
    messages: list[_Message] | None = None


_PUBLISH = msgspec.json.Decoder(_PublishRequest)


def publish_messages(raw: bytes) -> Columns:
    """The messages of a Pub/Sub publish request body (`{"messages": [...]}`), validated.

    Decoded by msgspec straight into typed records (unknown fields are ignored, as by Pub/Sub);
    a wrong type is a 400 naming the field.
    """
    with gc_paused():
        try:
            request = _PUBLISH.decode(raw) if raw.strip() else _PublishRequest()
        except msgspec.ValidationError as exc:
            text, _, where = str(exc).partition(" - at `$.")
            if not where:
                raise InvalidArgument(f"Invalid publish request: {text}.") from exc
            field = where.rstrip("`").replace("[...]", "")
            raise InvalidArgument(f"Invalid field {field!r}: {text}.") from exc
        except msgspec.DecodeError as exc:
            raise InvalidArgument(f"Malformed JSON in request body: {exc}.") from exc
        messages = request.messages
        if not messages:
            raise InvalidArgument("Invalid field 'messages': the request must contain at least one message.")
        datas: list[bytes] = []
        attrs: list[str | None] = []
        okeys: list[str | None] = []
        for i, msg in enumerate(messages):
            try:
                data = base64.b64decode(msg.data, validate=True) if msg.data else b""
            except (binascii.Error, ValueError) as exc:
                raise InvalidArgument(f"Invalid field 'messages[{i}].data': it is not valid base64.") from exc
            if not data and not msg.attributes:
                raise InvalidArgument(f"Invalid field 'messages[{i}]': a message needs data or attributes.")
            datas.append(data)
            attrs.append(orjson.dumps(msg.attributes).decode() if msg.attributes else None)
            okeys.append(msg.orderingKey or None)
        del request, messages
    return datas, (attrs if any(attrs) else None), (okeys if any(okeys) else None)


def ids_json(first: int, n: int) -> bytes:
    """`["first","first+1",...]` (message ids are strings in Pub/Sub JSON), built without n str objects."""
    return b'["' + orjson.dumps(list(range(first, first + n)))[1:-1].replace(b",", b'","') + b'"]'


async def ingest_events(service: IngestService, project: str, topic: str, raw: bytes) -> bytes:
    """Publish one JSON value, or each element of a JSON array, as a message; answer like the proxy."""
    tid = service.topic_id(project, topic)
    datas, is_array = split_events(raw)
    first = await service.log.publish(tid, datas)
    if is_array:
        head = b'{"message":"pubsub message sent: %d messages","messageIds":' % len(datas)
        return head + ids_json(first, len(datas)) + b"}"
    return orjson.dumps({"message": f"pubsub message sent: {datas[0].decode()}", "messageIds": [str(first)]})


async def publish(service: IngestService, project: str, topic: str, raw: bytes) -> bytes:
    """A Pub/Sub `topics.publish` request: `{"messageIds": [...]}` once the messages are durable."""
    tid = service.topic_id(project, topic)
    datas, attrs, okeys = publish_messages(raw)
    first = await service.log.publish(tid, datas, attrs, okeys)
    return b'{"messageIds":' + ids_json(first, len(datas)) + b"}"


class IngestFastPath:
    """Answers `POST /ingest/{topic}`, `/ingest/{topic}/json` and `…/topics/{t}:publish` itself."""

    def __init__(
        self, app: Any, service: Callable[[], IngestService | None], limit: int, default_project: str
    ) -> None:
        self.app = app
        self.service = service
        self.limit = limit
        self.default_project = default_project

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if path.startswith("/ingest/"):
                parts = path[8:].split("/")
                if parts[0] and (len(parts) == 1 or (len(parts) == 2 and parts[1] == "json")):
                    await self._serve(scope, receive, send, None, parts[0])
                    return
            elif path.startswith("/v1/projects/") and path.endswith(":publish"):
                parts = path[13:-8].split("/")
                if len(parts) == 3 and parts[1] == "topics" and parts[0] and parts[2]:
                    await self._serve(scope, receive, send, parts[0], parts[2])
                    return
        await self.app(scope, receive, send)

    async def _read(self, receive: Any) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                raise PayloadTooLarge(f"Request body is larger than the limit of {self.limit} bytes.")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _serve(
        self, scope: dict[str, Any], receive: Any, send: Any, project: str | None, topic: str
    ) -> None:
        """`project` None: the `/ingest` proxy (project from `?project=`, else the default)."""
        status, body = 200, b""
        try:
            service = self.service()
            if service is None:
                raise NotFound("Pub/Sub is not enabled on this server.")
            if project is not None:
                service.topic_id(project, topic)  # 404 before reading the body
            raw = await self._read(receive)
            if raw is None:
                return
            if project is not None:
                body = await publish(service, project, topic, raw)
            else:
                project = self.default_project
                if scope.get("query_string"):
                    query = parse_qs(scope["query_string"].decode("latin-1"))
                    project = (query.get("project") or [project])[0]
                body = await ingest_events(service, project, topic, raw)
        except LoopmlError as exc:
            status, body = exc.status, orjson.dumps(exc.to_json())
        except Exception as exc:
            incident_id, message = incident(exc)
            log.exception("publish to %s failed (incident %s)", topic, incident_id)
            status = 500
            body = orjson.dumps(
                {
                    "error": {
                        "code": 500,
                        "message": message,
                        "status": "INTERNAL",
                        "details": [],
                    }
                }
            )
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
