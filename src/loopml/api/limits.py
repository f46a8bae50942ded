"""Request body limits, enforced while the body streams in (413 before anything is written)."""

from __future__ import annotations

from typing import Any

import orjson

Scope = dict[str, Any]


class _TooLarge(Exception):
    pass


class BodyLimitMiddleware:
    def __init__(self, app: Any, default_limit: int, predict_limit: int) -> None:
        self.app = app
        self.default_limit = default_limit
        self.predict_limit = predict_limit

    def _limit_for(self, path: str) -> int | None:
        if path.startswith("/upload/storage/"):
            return None  # object uploads are streamed to disk by the storage routes
        if path.endswith((":predict", ":rawPredict", ":explain")):
            return self.predict_limit
        return self.default_limit

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit_for(scope["path"])
        if limit is None:
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    if int(value) > limit:
                        await self._reject(send, limit)
                        return
                except ValueError:
                    pass
                break
        received = 0

        async def limited_receive() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await self._reject(send, limit)

    @staticmethod
    async def _reject(send: Any, limit: int) -> None:
        body = orjson.dumps(
            {
                "error": {
                    "code": 413,
                    "message": f"Request body is larger than the limit of {limit} bytes.",
                    "status": "INVALID_ARGUMENT",
                    "details": [],
                }
            }
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
