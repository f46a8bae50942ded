"""Turns a batch of raw request bodies into complete response bodies, inside a replica.

Used by the replica process (`loopml.serving.replica`) and, for loaders that cannot be imported
by name, by the in-process runner. Requests without `parameters` to a batchable predictor are
validated one by one (a bad instance fails only its own request) and then predicted in a single
call, whose result is split back per request.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from loopml.errors import InvalidArgument, LoopmlError
from loopml.serving.protocol import KIND_EXPLAIN, KIND_RAW

log = logging.getLogger(__name__)

Result = tuple[int, bytes]


def error_body(status: int, code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"code": status, "message": message, "status": code, "details": []}})


def error_result(exc: BaseException) -> Result:
    if isinstance(exc, LoopmlError):
        return exc.status, error_body(exc.status, exc.code, exc.message)
    if isinstance(exc, ValueError | TypeError | KeyError | IndexError):
        return 400, error_body(400, "INVALID_ARGUMENT", f"Prediction failed: {type(exc).__name__}: {exc}")
    log.exception("predictor failed")
    return 500, error_body(
        500, "INTERNAL", f"Prediction failed in the model server: {type(exc).__name__}: {exc}"
    )


class BatchHandler:
    def __init__(self, predictor: Any, meta: dict[str, str]) -> None:
        self.predictor = predictor
        self.batchable = bool(getattr(predictor, "batchable", False))
        self.validate = getattr(predictor, "validate", None)
        # Everything a response adds after the predictions, encoded once.
        tail = orjson.dumps(
            {
                "deployedModelId": meta["deployedModelId"],
                "model": meta["model"],
                "modelVersionId": meta["modelVersionId"],
                "modelDisplayName": meta["modelDisplayName"],
            }
        )
        self._tail = b"," + tail[1:]
        self._dm_id = meta["deployedModelId"]

    def _parse(self, body: bytes) -> tuple[list[Any], dict[str, Any] | None]:
        try:
            data = orjson.loads(body) if body else None
        except orjson.JSONDecodeError as exc:
            raise InvalidArgument(f"Malformed JSON in request body: {exc}.") from exc
        if not isinstance(data, dict) or "instances" not in data:
            raise InvalidArgument('The request body must be a JSON object with an "instances" list.')
        instances = data["instances"]
        if not isinstance(instances, list):
            raise InvalidArgument('"instances" must be a list.')
        parameters = data.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise InvalidArgument('"parameters" must be a JSON object.')
        return instances, parameters or None

    def _encode(self, kind: int, predictions: list[Any]) -> bytes:
        head = b'{"predictions":' + orjson.dumps(predictions, option=orjson.OPT_SERIALIZE_NUMPY)
        if kind == KIND_RAW:
            return head + b"}"
        return head + self._tail

    def _one(self, kind: int, instances: list[Any], parameters: dict[str, Any] | None) -> Result:
        try:
            if kind == KIND_EXPLAIN:
                explain = getattr(self.predictor, "explain", None)
                if explain is None or not getattr(self.predictor, "can_explain", True):
                    from loopml.errors import FailedPrecondition

                    raise FailedPrecondition(
                        f"Deployed model {self._dm_id} does not support :explain (its model server has no "
                        "explanation method; Python predictors can define explain())."
                    )
                explanations = explain(instances, parameters)
                predictions = self.predictor.predict(instances, parameters)
                body = orjson.dumps(
                    {"explanations": explanations, "predictions": predictions},
                    option=orjson.OPT_SERIALIZE_NUMPY,
                )
                return 200, body[:-1] + self._tail
            predictions = self.predictor.predict(instances, parameters)
            if not isinstance(predictions, list):
                predictions = list(predictions)
            return 200, self._encode(kind, predictions)
        except BaseException as exc:
            return error_result(exc)

    def handle(self, items: list[tuple[int, bytes]]) -> list[Result]:
        results: list[Result | None] = [None] * len(items)
        batch: list[tuple[int, int, list[Any]]] = []  # (index, kind, instances)
        for i, (kind, body) in enumerate(items):
            try:
                instances, parameters = self._parse(body)
                if self.batchable and parameters is None and kind != KIND_EXPLAIN and len(items) > 1:
                    if self.validate is not None:
                        self.validate(instances)
                    batch.append((i, kind, instances))
                else:
                    results[i] = self._one(kind, instances, parameters)
            except BaseException as exc:
                results[i] = error_result(exc)
        if batch:
            self._predict_batch(batch, results)
        return [r if r is not None else (500, error_body(500, "INTERNAL", "no result")) for r in results]

    def _predict_batch(self, batch: list[tuple[int, int, list[Any]]], results: list[Result | None]) -> None:
        merged: list[Any] = []
        for _, _, instances in batch:
            merged.extend(instances)
        try:
            predictions = self.predictor.predict(merged, None)
            if len(predictions) != len(merged):
                raise ValueError("predictor returned a different number of predictions than instances")
        except BaseException:
            for i, kind, instances in batch:  # fall back to one call per request
                results[i] = self._one(kind, instances, None)
            return
        pos = 0
        for i, kind, instances in batch:
            n = len(instances)
            results[i] = (200, self._encode(kind, predictions[pos : pos + n]))
            pos += n
