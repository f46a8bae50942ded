"""The raw-ASGI fast path for `…/endpoints/{e}:predict`, `:rawPredict` and `:explain`.

Installed as the outermost middleware of the API app, it answers prediction requests before
FastAPI routing runs: read the body (with the 1.5 MB limit), pick the deployed model from the
in-memory split, queue the raw body for a replica, write the replica's response bytes. Every
other request passes through untouched.
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import TYPE_CHECKING, Any

import orjson

from loopml.serving.handler import error_body
from loopml.serving.protocol import KIND_EXPLAIN, KIND_PREDICT, KIND_RAW

if TYPE_CHECKING:
    from loopml.serving.service import ServingService

VERBS = {"predict": KIND_PREDICT, "rawPredict": KIND_RAW, "explain": KIND_EXPLAIN}
JSON_CT = b"application/json"


class _TooLarge(Exception):
    pass


class PredictFastPath:
    def __init__(self, app: Any, service: ServingService, limit: int) -> None:
        self.app = app
        self.service = service
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if path.startswith("/v1/projects/"):
                colon = path.rfind(":")
                kind = VERBS.get(path[colon + 1 :]) if colon > 0 else None
                if kind is not None and "/endpoints/" in path:
                    await self._serve(scope, receive, send, path[4:colon], path[colon + 1 :], kind)
                    return
        await self.app(scope, receive, send)

    async def _read(self, receive: Any) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ConnectionError("client disconnected")
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > self.limit:
                    raise _TooLarge
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        if len(chunks) == 1:
            return chunks[0]
        return b"".join(chunks)

    async def _serve(
        self, scope: dict[str, Any], receive: Any, send: Any, endpoint_name: str, verb: str, kind: int
    ) -> None:
        started = time.perf_counter()
        try:
            body = await self._read(receive)
        except _TooLarge:
            msg = f"Request body is larger than the limit of {self.limit} bytes."
            await _send(send, 413, error_body(413, "INVALID_ARGUMENT", msg), JSON_CT)
            return
        except ConnectionError:
            return
        ctype = "application/json"
        http_body = False
        if kind == KIND_RAW:
            for name, value in scope["headers"]:
                if name == b"content-type":
                    ctype = value.decode("latin-1")
                    break
            if b'"httpBody"' in body[:64]:
                decoded = _decode_http_body(body)
                if isinstance(decoded, bytes):
                    await _send(send, 400, decoded, JSON_CT)
                    return
                body, ctype = decoded
                http_body = True
        status, rbody, rctype, rt = await self.service.dispatch(
            endpoint_name, kind, body, ctype, kind == KIND_RAW
        )
        extra = rt.raw_headers if (rt is not None and kind == KIND_RAW) else None
        if http_body and status == 200:
            wrapped = orjson.dumps({"contentType": rctype, "data": base64.b64encode(rbody).decode()})
            await _send(send, 200, wrapped, JSON_CT, extra)
        else:
            await _send(send, status, rbody, rctype.encode("latin-1"), extra)
        self.service.record(endpoint_name, rt, status, started, body, rbody, verb)


def _decode_http_body(body: bytes) -> tuple[bytes, str] | bytes:
    """The gapic REST client's `{"httpBody": {"contentType", "data": base64}}` form."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return error_body(400, "INVALID_ARGUMENT", f"Malformed JSON in request body: {exc}.")
    hb = data.get("httpBody") if isinstance(data, dict) else None
    if not isinstance(hb, dict):
        return error_body(400, "INVALID_ARGUMENT", '"httpBody" must be an object with "data".')
    try:
        raw = base64.b64decode(hb.get("data") or "", validate=False)
    except (binascii.Error, ValueError, TypeError) as exc:
        return error_body(400, "INVALID_ARGUMENT", f"httpBody.data is not valid base64: {exc}.")
    return raw, str(hb.get("contentType") or "application/json")


async def _send(
    send: Any, status: int, body: bytes, ctype: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
