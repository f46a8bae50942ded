"""Operating a deployment on a real server: mutateDeployedModel, /metrics, request logging, explain."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.e2e.serving_helpers import PARENT, call, deploy, replica_count, save, train, upload, wait_for

PREDICTOR = """
class Scorer:
    batchable = True

    def load(self, artifact_dir):
        self.w = [0.5, -1.0]

    def predict(self, instances):
        return [sum(w * v for w, v in zip(self.w, row)) for row in instances]

    def explain(self, instances):
        return [{"attributions": [{"featureAttributions": [w * v for w, v in zip(self.w, row)]}]}
                for row in instances]
"""


def test_mutate_metrics_and_request_log(server: Any) -> None:
    clf, x = train()
    upload(server.url, "ops", save(server.home, clf, "ops"))
    logging_cfg = {
        "enabled": True,
        "samplingRate": 1.0,
        "bigqueryDestination": {"outputUri": "bq://p.serving_logs.reqs"},
    }
    call(
        server.url,
        "POST",
        f"{PARENT}/endpoints",
        params={"endpointId": "ops-ep"},
        json={"displayName": "ops-ep", "predictRequestResponseLoggingConfig": logging_cfg},
    )
    ep = f"{PARENT}/endpoints/ops-ep"
    dm_id = deploy(server.url, ep, "ops", split={"0": 100}, min_r=1, max_r=3)["response"]["deployedModel"][
        "id"
    ]

    rows = x[:5].tolist()
    for _ in range(5):
        r = httpx.post(f"{server.url}/v1/{ep}:predict", json={"instances": rows}, timeout=30)
        assert r.status_code == 200
    assert (
        httpx.post(f"{server.url}/v1/{ep}:predict", json={"instances": [[1.0]]}, timeout=30).status_code
        == 400
    )

    # mutateDeployedModel applies new bounds live
    body = {
        "deployedModel": {"id": dm_id, "dedicatedResources": {"minReplicaCount": 2, "maxReplicaCount": 3}},
        "updateMask": "dedicated_resources.min_replica_count,dedicated_resources.max_replica_count",
    }
    op = call(server.url, "POST", f"{ep}:mutateDeployedModel", json=body)
    assert "error" not in op, op
    wait_for(lambda: replica_count(server.url, ep, dm_id) == 2, timeout=60)

    metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    labels = f'deployed_model="{dm_id}",endpoint="ops-ep"'
    assert f"loopml_predict_requests_total{{{labels}}} 6.0" in metrics
    assert f'loopml_predict_errors_total{{code="400",{labels}}} 1.0' in metrics
    assert f'loopml_replicas{{{labels},state="ready"}} 2.0' in metrics
    assert f"loopml_predict_latency_seconds_count{{{labels}}} 6.0" in metrics

    def logged() -> int:
        r = httpx.post(
            f"{server.url}/bigquery/v2/projects/p/queries",
            timeout=30,
            json={"query": "SELECT count(*) AS n FROM `p.serving_logs.reqs`", "useLegacySql": False},
        )
        if r.status_code != 200 or not r.json().get("rows"):
            return 0
        return int(r.json()["rows"][0]["f"][0]["v"])

    wait_for(lambda: logged() >= 5, timeout=60)
    assert logged() == 5  # the 400 is not logged
    access = server.home / "logs" / "access.log"
    wait_for(lambda: access.exists() and f"ops-ep:predict {dm_id} 400" in access.read_text(), timeout=30)


def test_python_predictor_predict_and_explain(server: Any) -> None:
    d = server.home / "buckets" / "serve-bucket" / "scorer"
    d.mkdir(parents=True)
    (d / "scorer.py").write_text(PREDICTOR)
    (d / "loopml_model.json").write_text(json.dumps({"framework": "python", "predictor": "scorer:Scorer"}))
    op = call(
        server.url,
        "POST",
        f"{PARENT}/models:upload",
        json={
            "modelId": "scorer",
            "model": {"displayName": "scorer", "artifactUri": "gs://serve-bucket/scorer"},
        },
    )
    assert "error" not in op, op
    call(
        server.url,
        "POST",
        f"{PARENT}/endpoints",
        params={"endpointId": "py-ep"},
        json={"displayName": "py-ep"},
    )
    ep = f"{PARENT}/endpoints/py-ep"
    dm_id = deploy(server.url, ep, "scorer", split={"0": 100})["response"]["deployedModel"]["id"]
    r = httpx.post(f"{server.url}/v1/{ep}:predict", json={"instances": [[2, 1], [4, 0]]}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == [0.0, 2.0] and r.json()["deployedModelId"] == dm_id
    r = httpx.post(f"{server.url}/v1/{ep}:explain", json={"instances": [[2, 1]]}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["explanations"] == [{"attributions": [{"featureAttributions": [1.0, -1.0]}]}]
    assert r.json()["predictions"] == [0.0]


def test_deployments_come_back_after_a_restart(server: Any) -> None:
    ep = f"{PARENT}/endpoints/py-ep"  # deployed by the previous test
    before = httpx.post(f"{server.url}/v1/{ep}:predict", json={"instances": [[2, 1]]}, timeout=30).json()
    server.restart()
    after = httpx.post(f"{server.url}/v1/{ep}:predict", json={"instances": [[2, 1]]}, timeout=30)
    assert after.status_code == 200, after.text
    assert after.json() == before
