"""Serving at scale on a real server: autoscaling, replica crashes, traffic split, errors."""

from __future__ import annotations

import ast
import re
import signal
import threading
from collections import Counter
from typing import Any

import httpx
import psutil
import pytest

from tests.e2e.serving_helpers import (
    create_endpoint,
    deploy,
    predict,
    replica_count,
    replica_pids,
    save,
    train,
    upload,
    wait_for,
)

REQUEST_COUNT = "aiplatform.googleapis.com/prediction/online/request_count"


@pytest.fixture(scope="module")
def srv(server_factory_module: Any) -> Any:
    return server_factory_module


@pytest.fixture(scope="module")
def server_factory_module(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.conftest import ServerProcess, free_port

    s = ServerProcess(
        home=tmp_path_factory.mktemp("serve-scale"),
        port=free_port(),
        env={"LOOPML_AUTOSCALE_CYCLE_S": "0.5", "LOOPML_AUTOSCALE_WINDOW_S": "3"},
    )
    s.start()
    yield s
    s.stop()
    assert not replica_pids_of(s)


def replica_pids_of(s: Any) -> list[int]:
    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if str(s.home) in " ".join(p.info["cmdline"] or [])
        and "loopml.serving.replica" in " ".join(p.info["cmdline"] or [])
    ]


def _load(
    url: str, endpoint: str, rows: list[list[float]], stop: threading.Event, statuses: Counter[int]
) -> None:
    with httpx.Client() as client:
        i = 0
        while not stop.is_set():
            r = predict(url, endpoint, {"instances": [rows[i % len(rows)]]}, client)
            statuses[r.status_code] += 1
            i += 1


def test_split_bypass_and_bad_instance(srv: Any) -> None:
    clf, x = train()
    upload(srv.url, "split-a", save(srv.home, clf, "split-a"))
    upload(srv.url, "split-b", save(srv.home, train(flip=True)[0], "split-b"))
    ep = create_endpoint(srv.url, "split-ep")
    dm_a = deploy(srv.url, ep, "split-a", split={"0": 100})["response"]["deployedModel"]["id"]
    dm_b = deploy(srv.url, ep, "split-b", split={dm_a: 90, "0": 10})["response"]["deployedModel"]["id"]

    seen: Counter[str] = Counter()
    row = x[:1].tolist()
    with httpx.Client() as client:
        for _ in range(2000):
            r = predict(srv.url, ep, {"instances": row}, client)
            assert r.status_code == 200, r.text
            seen[r.json()["deployedModelId"]] += 1
        assert abs(seen[dm_a] / 2000 - 0.90) <= 0.03, seen
        assert abs(seen[dm_b] / 2000 - 0.10) <= 0.03, seen

        for _ in range(30):  # an explicit deployedModelId bypasses the split
            r = predict(srv.url, ep, {"instances": row, "deployedModelId": dm_b}, client)
            assert r.json()["deployedModelId"] == dm_b
            assert r.json()["predictions"] == [1 - int(clf.predict(x[:1])[0])]

        r = predict(srv.url, ep, {"instances": [[0.1, 0.2, 0.3], [0.5, 0.1, 0.2], [1.0, 2.0]]}, client)
        assert r.status_code == 400
        assert r.json()["error"]["message"] == "instance 2 has 2 features, the model expects 3."
        r = predict(srv.url, ep, {"instances": row, "deployedModelId": "424242"}, client)
        assert r.status_code == 400 and "424242" in r.json()["error"]["message"]
        r = predict(srv.url, ep.replace("split-ep", "no-such-ep"), {"instances": row}, client)
        assert r.status_code == 404
        r = client.post(f"{srv.url}/v1/{ep}:predict", content=b"{not json", timeout=30)
        assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_autoscale_up_and_back_down(srv: Any) -> None:
    clf, x = train()
    upload(srv.url, "auto", save(srv.home, clf, "auto"))
    ep = create_endpoint(srv.url, "auto-ep")
    metrics = [{"metricName": REQUEST_COUNT, "target": 60}]  # 60 requests/min per replica
    dm = deploy(srv.url, ep, "auto", split={"0": 100}, min_r=1, max_r=3, metrics=metrics)
    dm_id = dm["response"]["deployedModel"]["id"]
    assert replica_count(srv.url, ep, dm_id) == 1

    stop = threading.Event()
    statuses: Counter[int] = Counter()
    worker = threading.Thread(target=_load, args=(srv.url, ep, x[:20].tolist(), stop, statuses))
    worker.start()
    try:
        wait_for(lambda: replica_count(srv.url, ep, dm_id) >= 2, timeout=120)
    finally:
        stop.set()
        worker.join()
    assert set(statuses) == {200}, statuses
    wait_for(lambda: replica_count(srv.url, ep, dm_id) == 1, timeout=120)
    _assert_decisions_logged_with_inputs(srv, dm_id)


_DECISION = re.compile(
    r"autoscale (?P<dm>\d+): replicas=(?P<replicas>\d+) cpu=(?P<cpu>[\d.]+)% "
    r"rpm/replica=(?P<rpm>[\d.]+) targets=(?P<targets>\{.*?\}) recommendations=(?P<recs>\{.*?\}) "
    r"window_max=(?P<window_max>\d+) → desired=(?P<desired>\d+) \[min (?P<low>\d+), max (?P<high>\d+)\]"
)


def _assert_decisions_logged_with_inputs(srv: Any, dm_id: str) -> None:
    """Every autoscaler decision is logged with its inputs, and they add up to the decision."""
    from loopml.serving.autoscaler import clamp, recommend

    text = srv.log_path.read_text(errors="replace")
    decisions = [m.groupdict() for m in _DECISION.finditer(text) if m["dm"] == dm_id]
    assert decisions, "no autoscaler decision logged for " + dm_id
    window_maxes = []
    for d in decisions:
        replicas, rpm = int(d["replicas"]), float(d["rpm"])
        recs = ast.literal_eval(d["recs"])
        assert ast.literal_eval(d["targets"]) == {REQUEST_COUNT: 60.0}, d
        assert set(recs) == {REQUEST_COUNT}, d
        # the recommendation follows from the logged inputs (rpm is logged rounded to 0.1)
        assert recommend(replicas, max(rpm - 0.05, 0), 60) <= recs[REQUEST_COUNT], d
        assert recs[REQUEST_COUNT] <= recommend(replicas, rpm + 0.05, 60), d
        # the window maximum is at least this cycle's recommendation; desired is it, clamped
        assert int(d["window_max"]) >= recs[REQUEST_COUNT], d
        assert (int(d["low"]), int(d["high"])) == (1, 3), d
        assert int(d["desired"]) == clamp(int(d["window_max"]), 1, 3), d
        window_maxes.append(int(d["window_max"]))
    # the load made one replica ask for more, and the idle end brought the window back to 1
    assert any(int(d["replicas"]) == 1 and int(d["desired"]) >= 2 and float(d["rpm"]) > 60 for d in decisions)
    assert window_maxes[-1] == 1 and max(window_maxes) >= 2
    assert re.search(rf"deployed model {dm_id}: scaling up 1 → [23] \(autoscaler\)", text)
    assert re.search(rf"deployed model {dm_id}: scaling down [23] → 1 \(autoscaler\)", text)


def test_sigkill_replica_under_load_loses_nothing(srv: Any) -> None:
    clf, x = train()
    upload(srv.url, "crash", save(srv.home, clf, "crash"))
    ep = create_endpoint(srv.url, "crash-ep")
    dm_id = deploy(srv.url, ep, "crash", split={"0": 100}, min_r=2, max_r=2)["response"]["deployedModel"][
        "id"
    ]
    assert srv.proc is not None
    pids = [p for p in replica_pids(srv.proc.pid) if dm_id in " ".join(psutil.Process(p).cmdline())]
    assert len(pids) == 2

    stop = threading.Event()
    statuses: Counter[int] = Counter()
    workers = [
        threading.Thread(target=_load, args=(srv.url, ep, x[:20].tolist(), stop, statuses)) for _ in range(4)
    ]
    for w in workers:
        w.start()
    try:
        wait_for(lambda: sum(statuses.values()) > 200, timeout=60, interval=0.05)
        psutil.Process(pids[0]).send_signal(signal.SIGKILL)
        wait_for(lambda: sum(statuses.values()) > 1500, timeout=60, interval=0.05)
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert set(statuses) == {200}, statuses
    wait_for(lambda: replica_count(srv.url, ep, dm_id) == 2, timeout=60)
    logs = sorted((srv.home / "logs" / "replicas").glob(f"{dm_id}-*.log"))
    assert logs and any(log.read_text().count("starting replica") >= 2 for log in logs)


BURNER = """
import time

class Burner:
    def predict(self, instances):
        end = time.process_time() + 0.02  # 20 ms of CPU per request
        while time.process_time() < end:
            pass
        return [0 for _ in instances]
"""


def test_autoscale_on_cpu_utilisation(srv: Any) -> None:
    import json

    from tests.e2e.serving_helpers import PARENT, call

    d = srv.home / "buckets" / "serve-bucket" / "burner"
    d.mkdir(parents=True)
    (d / "burner.py").write_text(BURNER)
    (d / "loopml_model.json").write_text(json.dumps({"framework": "python", "predictor": "burner:Burner"}))
    model = {"displayName": "burner", "artifactUri": "gs://serve-bucket/burner"}
    call(srv.url, "POST", f"{PARENT}/models:upload", json={"modelId": "burner", "model": model})
    ep = create_endpoint(srv.url, "cpu-ep")
    metrics = [{"metricName": "aiplatform.googleapis.com/prediction/online/cpu/utilization", "target": 30}]
    dm = deploy(srv.url, ep, "burner", split={"0": 100}, min_r=1, max_r=2, metrics=metrics)
    dm_id = dm["response"]["deployedModel"]["id"]

    stop = threading.Event()
    statuses: Counter[int] = Counter()
    rows = [[1.0]]
    workers = [threading.Thread(target=_load, args=(srv.url, ep, rows, stop, statuses)) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        wait_for(lambda: replica_count(srv.url, ep, dm_id) == 2, timeout=120)
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert set(statuses) == {200}, statuses
    wait_for(lambda: replica_count(srv.url, ep, dm_id) == 1, timeout=120)
