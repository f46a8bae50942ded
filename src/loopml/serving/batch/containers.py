"""Custom-container models in batch jobs: the serving runtime starts the container process(es)
with the Vertex contract (`AIP_*`, predict and health routes) and batches of `batchSize`
instances are POSTed to the predict route as `{"instances": [...], "parameters": ...}`.
"""

from __future__ import annotations

import itertools
import logging
import threading
from pathlib import Path
from typing import Any

import httpx
import orjson

from loopml.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger(__name__)


class ContainerBatchPredictor:
    def __init__(self, replicas: list[Any]) -> None:
        self.replicas = replicas
        self._next = itertools.cycle(range(len(replicas)))
        self._lock = threading.Lock()
        self._local = threading.local()

    def _client(self) -> httpx.Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = httpx.Client(timeout=httpx.Timeout(300.0, connect=5.0))
        return client  # type: ignore[no-any-return]

    def predict(self, instances: list[Any], parameters: Any = None) -> list[Any]:
        with self._lock:
            replica = self.replicas[next(self._next)]
        body: dict[str, Any] = {"instances": instances}
        if parameters is not None:
            body["parameters"] = parameters
        try:
            r = self._client().post(
                replica.base_url + replica.predict_route,
                content=orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
                headers={"content-type": "application/json"},
            )
        except httpx.HTTPError as exc:
            raise FailedPrecondition(
                f"The model container did not answer: {type(exc).__name__}: {exc}"
            ) from exc
        if r.status_code >= 300:
            raise InvalidArgument(f"The model container answered HTTP {r.status_code}: {r.text[:500]}")
        try:
            predictions = orjson.loads(r.content).get("predictions")
        except (orjson.JSONDecodeError, AttributeError):
            predictions = None
        if not isinstance(predictions, list):
            raise InvalidArgument('The model container\'s response has no "predictions" list.')
        return predictions

    def close(self) -> None:
        for replica in self.replicas:
            try:
                replica.stop()
            except Exception:
                log.exception("stopping batch container replica %s failed", replica.replica_id)


def start_container_predictor(serving: Any, spec: Any, replicas: int, log_dir: Path, timeout: float) -> Any:
    """Start `replicas` container processes through the serving runtime; all healthy or none left running."""
    make = getattr(serving, "container_factory", None) or getattr(serving, "_container_factory", None)
    if make is None:
        raise FailedPrecondition(
            "This server's serving runtime cannot start custom containers for batch jobs."
        )
    factory = make(spec, timeout)
    log_dir.mkdir(parents=True, exist_ok=True)
    started: list[Any] = []
    try:
        for i in range(max(1, replicas)):
            replica = factory(f"{spec.deployed_model_id}-{i}", log_dir / f"replica-{i}.log")
            replica.start()
            started.append(replica)
    except BaseException:
        for replica in started:
            replica.stop()
        raise
    return ContainerBatchPredictor(started)
