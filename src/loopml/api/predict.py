"""Routes: `:predict`, `:rawPredict` and `:explain` on endpoints.

They are served by the serving runtime's raw-ASGI fast path (`loopml.serving.asgi`), installed
here as the outermost middleware so prediction requests skip FastAPI routing entirely.
"""

from __future__ import annotations

from fastapi import FastAPI

from loopml.platform import Platform


def install(app: FastAPI, platform: Platform) -> None:
    service = platform.services.get("serving")
    if service is None:
        return
    from loopml.serving.asgi import PredictFastPath

    app.add_middleware(PredictFastPath, service=service, limit=platform.settings.max_predict_bytes)
