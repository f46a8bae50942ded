"""Autoscaler arithmetic (vertex-api.md §10) and traffic split selection."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from loopml.serving.autoscaler import (
    CPU_METRIC,
    REQUEST_COUNT_METRIC,
    Stabiliser,
    clamp,
    decide,
    metric_targets,
    recommend,
)
from loopml.serving.protocol import (
    KIND_RAW,
    TYPE_BATCH,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    frame_length,
)
from loopml.serving.router import EndpointRoute, explicit_deployed_model
from loopml.serving.spec import EndpointSpec


@pytest.mark.parametrize(
    ("replicas", "util", "target", "want"),
    [
        (2, 100, 60, 4),  # documented: 2 replicas at 100 % → 4
        (10, 1, 60, 1),  # documented: 10 replicas at 1 % → 1
        (2, 30, 60, 1),  # exactly half → 1, no float noise
        (3, 60, 60, 3),
        (3, 61, 60, 4),
        (1, 0, 60, 1),
        (4, 59.9, 60, 4),
    ],
)
def test_recommend(replicas: int, util: float, target: float, want: int) -> None:
    assert recommend(replicas, util, target) == want


def test_window_max_then_clamp() -> None:
    stab = Stabiliser(window_s=300)
    targets = {CPU_METRIC: 60.0}
    d = decide(1, {CPU_METRIC: 180.0}, targets, stab, 1, 3, now=0)
    assert d.recommendations[CPU_METRIC] == 3 and d.desired == 3
    # load drops: the recommendation is 1, but the window still holds 3
    d = decide(3, {CPU_METRIC: 5.0}, targets, stab, 1, 3, now=100)
    assert d.recommendations[CPU_METRIC] == 1 and d.window_max == 3 and d.desired == 3
    # after the window the maximum is 1 again
    d = decide(3, {CPU_METRIC: 5.0}, targets, stab, 1, 3, now=401)
    assert d.window_max == 1 and d.desired == 1
    # clamped to [min, max]
    d = decide(1, {CPU_METRIC: 600.0}, targets, Stabiliser(300), 2, 5, now=0)
    assert d.desired == 5
    assert clamp(0, 2, 5) == 2


def test_each_metric_recommends_and_the_max_wins() -> None:
    targets = metric_targets(
        [{"metricName": CPU_METRIC, "target": 50}, {"metricName": REQUEST_COUNT_METRIC, "target": 600}]
    )
    assert targets == {CPU_METRIC: 50.0, REQUEST_COUNT_METRIC: 600.0}
    d = decide(2, {CPU_METRIC: 10.0, REQUEST_COUNT_METRIC: 1500.0}, targets, Stabiliser(60), 1, 10, now=0)
    assert d.recommendations == {CPU_METRIC: 1, REQUEST_COUNT_METRIC: 5}
    assert d.desired == 5
    assert metric_targets([]) == {CPU_METRIC: 60.0}
    assert metric_targets([{"metricName": CPU_METRIC}]) == {CPU_METRIC: 60.0}


class _Rt:
    def __init__(self, name: str) -> None:
        self.name = name
        self.spec: Any = None


def _route(split: dict[str, int], deployed: list[str]) -> tuple[EndpointRoute, dict[str, Any]]:
    route = EndpointRoute(EndpointSpec("projects/p/locations/l/endpoints/e", "e", "e", split))
    runtimes: dict[str, Any] = {d: _Rt(d) for d in deployed}
    route.rebuild(runtimes)
    return route, runtimes


def test_split_selection_follows_weights() -> None:
    route, _ = _route({"a": 90, "b": 10, "c": 0}, ["a", "b", "c"])
    counts = Counter(route.pick(i / 10000).name for i in range(10000))  # type: ignore[union-attr]
    assert counts == {"a": 9000, "b": 1000}
    assert route.pick(0.0).name == "a" and route.pick(0.95).name == "b"  # type: ignore[union-attr]


def test_split_edge_cases() -> None:
    empty, _ = _route({}, ["a"])
    assert empty.pick(0.5) is None and not empty.has_traffic()
    not_running, _ = _route({"a": 100}, [])
    assert not_running.pick(0.5) is None and not_running.has_traffic()
    only_b, _ = _route({"a": 50, "b": 50}, ["b"])
    assert {only_b.pick(r / 10).name for r in range(10)} == {"b"}  # type: ignore[union-attr]


def test_explicit_deployed_model_id() -> None:
    assert explicit_deployed_model(b'{"instances": [[1]]}') == (None, None)
    assert explicit_deployed_model(b'{"instances": [[1]], "deployedModelId": "42"}') == ("42", None)
    dm, err = explicit_deployed_model(b'{"deployedModelId": ')
    assert dm is None and err is not None and err[0] == 400


def test_logging_sampling_rate() -> None:
    spec = EndpointSpec("n", "e", "e", {}, {"enabled": True, "samplingRate": 0.25})
    assert EndpointRoute(spec).log_rate == 0.25
    assert EndpointRoute(EndpointSpec("n", "e", "e", {}, {"enabled": False, "samplingRate": 1})).log_rate == 0


def test_frames_round_trip() -> None:
    frame = encode_request(TYPE_BATCH, [(0, b'{"instances":[]}'), (KIND_RAW, b"")])
    n = frame_length(frame[:4])
    assert n == len(frame) - 4
    assert decode_request(frame[4:]) == (TYPE_BATCH, [(0, b'{"instances":[]}'), (KIND_RAW, b"")])
    resp = encode_response(TYPE_BATCH, [(200, b"ok"), (400, b"bad")])
    assert decode_response(resp[4:]) == (TYPE_BATCH, [(200, b"ok"), (400, b"bad")])


def test_metrics_forget_drops_every_series() -> None:
    from prometheus_client import generate_latest

    from loopml.serving.metrics import ServingMetrics

    m = ServingMetrics()
    bound = m.bind("ep", "42")
    bound.requests.inc()
    bound.latency.observe(0.001)
    bound.error(400)

    class _R:
        state = "ready"

    class _Rt:
        spec = EndpointSpec("n", "ep", "ep", {})
        deployed_model_id = "42"
        queue: list[object] = []
        replicas = [_R()]

    _Rt.spec = type("S", (), {"endpoint_id": "ep"})()  # type: ignore[assignment]
    m.refresh([_Rt()])
    text = generate_latest(m.registry).decode()
    assert 'loopml_replicas{deployed_model="42",endpoint="ep",state="ready"} 1.0' in text
    assert 'loopml_predict_errors_total{code="400",deployed_model="42",endpoint="ep"} 1.0' in text
    m.forget("ep", "42", bound)
    assert 'deployed_model="42"' not in generate_latest(m.registry).decode()
