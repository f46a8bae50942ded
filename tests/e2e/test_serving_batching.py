"""Per-deployment micro-batching: systemLabels on :deployModel, validated, stored, replayed, applied.

Coalescing is observed through the `loopml_predict_batch_size` histogram on /metrics (count =
replica calls, sum = requests), never through timing. The N requests are released together by a
barrier; with a long batch wait they are normally one call of N, but a slow machine may deliver
one late, so the checks are: every request counted, no call above the cap, and fewer calls than
requests (something coalesced) with cap N, one call per request with cap 1.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.serving_helpers import PARENT, call, create_endpoint, save, train, upload

N = 4


def _batch_histogram(url: str, dm_id: str) -> dict[str, float]:
    """`count`, `sum`, `le_1` (calls of one request) and `le_n` (calls of at most N requests)."""
    out = {"count": 0.0, "sum": 0.0, "le_1": 0.0, "le_n": 0.0}
    text = httpx.get(f"{url}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        if family.name != "loopml_predict_batch_size":
            continue
        for s in family.samples:
            if s.labels.get("deployed_model") != dm_id:
                continue
            if s.name.endswith("_count"):
                out["count"] = s.value
            elif s.name.endswith("_sum"):
                out["sum"] = s.value
            elif s.name.endswith("_bucket") and float(s.labels["le"]) == 1.0:
                out["le_1"] = s.value
            elif s.name.endswith("_bucket") and float(s.labels["le"]) == float(N):
                out["le_n"] = s.value
    return out


def _concurrent_predicts(url: str, endpoint: str, rows: list[list[float]]) -> list[Any]:
    """One predict per row, all sent at once: every thread waits at a barrier, then posts."""
    start = threading.Barrier(len(rows))
    results: list[Any] = [None] * len(rows)
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            with httpx.Client(timeout=60) as client:
                start.wait(timeout=60)
                r = client.post(f"{url}/v1/{endpoint}:predict", json={"instances": [rows[i]]})
            assert r.status_code == 200, r.text
            results[i] = r.json()["predictions"][0]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(rows))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def _coalesced(h: dict[str, float], requests: int) -> bool:
    """All requests counted, in fewer calls than requests (so some call carried more than one) and
    none above the cap of N."""
    return h["sum"] == requests and h["le_n"] == h["count"] and h["le_1"] < h["count"] < requests


def _one_each(h: dict[str, float]) -> bool:
    """N requests in N calls of one request each (cap 1)."""
    return h["sum"] == N and h["count"] == N and h["le_1"] == N


def _store_labels(home: Path, dm_id: str, labels: dict[str, Any]) -> None:
    """Add systemLabels to a stored deployed model as an older loopml would have kept them."""
    with closing(sqlite3.connect(home / "metadata.db")) as db, db:
        (extra,) = db.execute(
            "SELECT extra FROM deployed_models WHERE deployed_model_id = ?", (dm_id,)
        ).fetchone()
        data = json.loads(extra)
        data["systemLabels"] = {**data.get("systemLabels", {}), **labels}
        db.execute(
            "UPDATE deployed_models SET extra = ? WHERE deployed_model_id = ?", (json.dumps(data), dm_id)
        )


def _deploy_body(model_id: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "deployedModel": {
            "model": f"{PARENT}/models/{model_id}",
            "dedicatedResources": {
                "machineSpec": {"machineType": "n1-standard-2"},
                "minReplicaCount": 1,
                "maxReplicaCount": 1,
            },
            "systemLabels": labels,
        },
        "trafficSplit": {"0": 100},
    }


def test_batching_labels_validated_stored_replayed_and_applied(server: Any) -> None:
    clf, x = train()
    upload(server.url, "batchy", save(server.home, clf, "batchy"))
    rows = x[:N].tolist()
    expected = clf.predict(x[:N]).tolist()

    # -- validation: a 400 naming the label, and nothing deployed ------------------------------
    bad_ep = create_endpoint(server.url, "batch-bad")
    for labels, needle in [
        ({"loopml-max-batch-size": "0"}, "'loopml-max-batch-size'] must be an integer from 1 to 1024"),
        ({"loopml-max-batch-size": "4.5"}, "'loopml-max-batch-size'] must be an integer"),
        ({"loopml-max-batch-size": "\u00b2"}, "'loopml-max-batch-size'] must be an integer"),  # '²'
        ({"loopml-max-batch-size": "\uff11"}, "'loopml-max-batch-size'] must be an integer"),  # '１'
        ({"loopml-batch-wait-ms": "-1"}, "'loopml-batch-wait-ms'] must be a number of milliseconds"),
        ({"loopml-batch-wait-ms": "nan"}, "'loopml-batch-wait-ms'] must be a number of milliseconds"),
        ({"loopml-batch-wait-ms": "10001"}, "from 0 to 10000"),
        ({"loopml-max-batchsize": "4"}, "unknown loopml label"),
    ]:
        r = httpx.post(
            f"{server.url}/v1/{bad_ep}:deployModel", json=_deploy_body("batchy", labels), timeout=60
        )
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["status"] == "INVALID_ARGUMENT" and needle in error["message"], error
        assert "deployedModel.systemLabels[" in error["message"]
    # a custom container gets one HTTP request per prediction request: batching labels are refused
    container = {"imageUri": "example.com/own-server:1", "command": ["python", "-m", "http.server"]}
    upload(server.url, "own-server", save(server.home, clf, "own-server"), container=container)
    r = httpx.post(
        f"{server.url}/v1/{bad_ep}:deployModel",
        json=_deploy_body("own-server", {"loopml-max-batch-size": "8"}),
        timeout=60,
    )
    assert r.status_code == 400 and "apply to built-in model servers" in r.json()["error"]["message"], r.text
    assert call(server.url, "GET", bad_ep).get("deployedModels", []) == []

    # -- max batch 1, deployed through the Vertex SDK (system_labels passes through) ----------
    os.environ["NO_GCE_CHECK"] = "true"
    aiplatform.init(
        project="p",
        location="us-central1",
        api_endpoint=server.url,
        api_transport="rest",
        credentials=AnonymousCredentials(),
    )
    one_ep = aiplatform.Endpoint.create(display_name="batch-one")
    one_ep.deploy(
        aiplatform.Model(f"{PARENT}/models/batchy"),
        traffic_percentage=100,
        system_labels={"loopml-max-batch-size": "1", "loopml-batch-wait-ms": "10000"},
    )
    dm_one = one_ep.list_models()[0].id
    shown = call(server.url, "GET", one_ep.resource_name)["deployedModels"][0]
    assert shown["systemLabels"] == {"loopml-max-batch-size": "1", "loopml-batch-wait-ms": "10000"}
    assert _concurrent_predicts(server.url, one_ep.resource_name, rows) == expected
    # a batch of 1 is always full, so the long wait never applies: N calls of one request each
    h = _batch_histogram(server.url, dm_one)
    assert _one_each(h), h

    # -- max batch N with a long wait: 2N concurrent requests coalesce, in calls of at most N ---
    many_ep = create_endpoint(server.url, "batch-many")
    labels = {"loopml-max-batch-size": str(N), "loopml-batch-wait-ms": "10000"}
    op = call(server.url, "POST", f"{many_ep}:deployModel", json=_deploy_body("batchy", labels))
    assert op["done"] and "error" not in op, op
    dm_many = op["response"]["deployedModel"]["id"]
    assert _concurrent_predicts(server.url, many_ep, rows * 2) == expected * 2
    h = _batch_histogram(server.url, dm_many)
    assert _coalesced(h, 2 * N), h

    # -- stored with the deployed model: after a restart the replayed deployment batches alike --
    # Rows stored before the labels were checked may hold bad or unknown loopml-* labels: the
    # replay ignores those (valid ones still apply) instead of failing the whole endpoint.
    server.stop()
    _store_labels(server.home, dm_many, {"loopml-old-option": "x", "loopml-batch-size": 7})
    _store_labels(server.home, dm_one, {"loopml-batch-wait-ms": "soon"})
    server.start()
    stored = call(server.url, "GET", many_ep)["deployedModels"][0]["systemLabels"]
    assert stored["loopml-old-option"] == "x"
    assert _concurrent_predicts(server.url, many_ep, rows * 2) == expected * 2
    h = _batch_histogram(server.url, dm_many)
    assert _coalesced(h, 2 * N), h
    assert _concurrent_predicts(server.url, one_ep.resource_name, rows) == expected
    h = _batch_histogram(server.url, dm_one)
    assert _one_each(h), h
