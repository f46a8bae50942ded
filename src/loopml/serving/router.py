"""Routing state in memory: endpoints, their traffic split, and the dispatch of one request.

The split is turned into a cumulative table when it changes; picking a deployed model per
request is one `random()` and a bisect. Nothing here touches the metadata database.
"""

from __future__ import annotations

import bisect
import random
from typing import TYPE_CHECKING, Any

import orjson

from loopml.serving.handler import error_body
from loopml.serving.replicas import JSON_CT
from loopml.serving.spec import EndpointSpec

if TYPE_CHECKING:
    from loopml.serving.runtime import DeployedRuntime

Answer = tuple[int, bytes, str, "DeployedRuntime | None"]


class EndpointRoute:
    __slots__ = ("cum", "log_rate", "spec", "targets", "total")

    def __init__(self, spec: EndpointSpec) -> None:
        self.spec = spec
        self.cum: list[float] = []
        self.targets: list[DeployedRuntime] = []
        self.total = 0.0
        cfg = spec.logging_config or {}
        rate = cfg.get("samplingRate", 1.0) if cfg.get("enabled") else 0.0
        try:
            self.log_rate = min(1.0, max(0.0, float(rate if rate is not None else 1.0)))
        except (TypeError, ValueError):
            self.log_rate = 0.0

    def rebuild(self, runtimes: dict[str, DeployedRuntime]) -> None:
        cum: list[float] = []
        targets: list[DeployedRuntime] = []
        total = 0.0
        for dm_id, pct in sorted(self.spec.traffic_split.items()):
            rt = runtimes.get(dm_id)
            try:
                weight = float(pct)
            except (TypeError, ValueError):
                continue
            if rt is None or weight <= 0:
                continue
            total += weight
            cum.append(total)
            targets.append(rt)
        self.cum, self.targets, self.total = cum, targets, total  # readers see old or new, never half

    def has_traffic(self) -> bool:
        return any(float(v or 0) > 0 for v in self.spec.traffic_split.values())

    def pick(self, rnd: float) -> DeployedRuntime | None:
        if not self.targets:
            return None
        i = bisect.bisect_right(self.cum, rnd * self.total)
        return self.targets[min(i, len(self.targets) - 1)]


def error(status: int, code: str, message: str) -> Answer:
    return status, error_body(status, code, message), JSON_CT, None


def explicit_deployed_model(body: bytes) -> tuple[str | None, Answer | None]:
    """`deployedModelId` from a predict/explain body, when it names one (cheap pre-check first)."""
    if b'"deployedModelId"' not in body:
        return None, None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return None, error(400, "INVALID_ARGUMENT", f"Malformed JSON in request body: {exc}.")
    if not isinstance(data, dict):
        return None, None
    dm = data.get("deployedModelId")
    if dm in (None, ""):
        return None, None
    return str(dm), None


class Router:
    def __init__(self) -> None:
        self.routes: dict[str, EndpointRoute] = {}
        self.runtimes: dict[str, DeployedRuntime] = {}
        self._random = random.random

    def rebuild(self, endpoint_name: str | None = None) -> None:
        routes = [self.routes[endpoint_name]] if endpoint_name in self.routes else list(self.routes.values())
        for route in routes:
            route.rebuild(self.runtimes)

    def choose(self, endpoint_name: str, body: bytes, kind: int, raw: bool) -> tuple[Any, Answer | None]:
        """The deployed model for a request, or an error answer."""
        route = self.routes.get(endpoint_name)
        if route is None:
            return None, error(404, "NOT_FOUND", f"Endpoint {endpoint_name} not found.")
        if not raw:
            dm_id, err = explicit_deployed_model(body)
            if err is not None:
                return None, err
            if dm_id is not None:
                rt = self.runtimes.get(dm_id)
                if rt is None or rt.spec.endpoint_name != endpoint_name:
                    return None, error(
                        400,
                        "FAILED_PRECONDITION",
                        f"Deployed model {dm_id} is not deployed on endpoint {endpoint_name}.",
                    )
                return rt, None
        rt = route.pick(self._random())
        if rt is None:
            if not route.has_traffic():
                return None, error(
                    400,
                    "FAILED_PRECONDITION",
                    f"Endpoint {endpoint_name} has no traffic split, so it accepts no predictions: deploy a "
                    "model with traffic, or set trafficSplit (`loopml endpoints traffic ENDPOINT MODEL=100`).",
                )
            return None, error(
                503, "UNAVAILABLE", f"No deployed model of endpoint {endpoint_name} is running yet."
            )
        return rt, None
