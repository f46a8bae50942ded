"""Request/response logging through a real server: sampled rows land in the warehouse after a clean stop."""

from __future__ import annotations

import math
from typing import Any

import httpx
import joblib
import numpy as np
import orjson
from sklearn.tree import DecisionTreeClassifier

from loopml.client import Client
from loopml.warehouse import Warehouse
from tests.conftest import ServerProcess

P, L = "proj1", "us-central1"
SKLEARN_IMAGE = "us-docker.pkg.dev/vertex-ai/prediction/sklearn-cpu.1-2:latest"
N = 200


def _logging(rate: float, uri: str) -> dict[str, Any]:
    return {"enabled": True, "samplingRate": rate, "bigqueryDestination": {"outputUri": uri}}


def test_sampled_requests_are_logged_with_vertex_schema(server_factory: Any) -> None:
    server: ServerProcess = server_factory()
    x = np.random.default_rng(1).uniform(-1, 1, size=(500, 3))
    model = DecisionTreeClassifier(max_depth=4, random_state=0).fit(x, (x.sum(axis=1) > 0).astype(int))
    target = server.home / "buckets" / "models" / "logged"
    target.mkdir(parents=True)
    joblib.dump(model, target / "model.joblib")
    client = Client(server.url, project=P, location=L)
    try:
        client.upload_model(
            "logged", artifact_uri="gs://models/logged", image_uri=SKLEARN_IMAGE, model_id="logged"
        )
        client.create_endpoint(
            "Shop Endpoint!",
            endpoint_id="shop",
            predictRequestResponseLoggingConfig=_logging(0.5, f"bq://{P}"),
        )
        deployed = client.deploy("shop", "logged")
        sent = []
        for i in range(N):
            instance = [float(v) for v in x[i]]
            sent.append(instance)
            client.predict("shop", [instance])
        # samplingRate 1.0 into an explicit table: every request is logged
        r = httpx.patch(
            f"{server.url}/v1/projects/{P}/locations/{L}/endpoints/shop",
            params={"updateMask": "predict_request_response_logging_config"},
            json={"predictRequestResponseLoggingConfig": _logging(1.0, f"bq://{P}.logs.all_requests")},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        for i in range(N):
            client.predict("shop", [[float(v) for v in x[i]], [0.0, 0.0, 0.0]])
    finally:
        client.close()
    server.stop()  # clean stop: the queue is drained before the warehouse closes

    warehouse = Warehouse(server.home / "warehouse.duckdb")
    try:
        sampled = warehouse.read_table_arrow(P, "logging_Shop_Endpoint__shop", "request_response_logging")
        schema = {
            f["name"]: (f["type"], f.get("mode"))
            for f in warehouse.get_table_schema(P, "logging_Shop_Endpoint__shop", "request_response_logging")
        }
        full = warehouse.read_table_arrow(P, "logs", "all_requests").to_pylist()
    finally:
        warehouse.close()
    assert schema == {
        "endpoint": ("STRING", "NULLABLE"),
        "deployed_model_id": ("STRING", "NULLABLE"),
        "logging_time": ("TIMESTAMP", "NULLABLE"),
        "request_id": ("NUMERIC", "NULLABLE"),
        "request_payload": ("STRING", "REPEATED"),
        "response_payload": ("STRING", "REPEATED"),
    }
    sigma = math.sqrt(N * 0.25)
    assert abs(sampled.num_rows - N / 2) <= 4 * sigma, sampled.num_rows
    rows = sampled.to_pylist()
    sent_set = {orjson.dumps(s) for s in sent}
    for row in rows:
        assert row["endpoint"] == f"projects/{P}/locations/{L}/endpoints/shop"
        assert row["deployed_model_id"] == deployed["id"]
        (instance,) = row["request_payload"]
        assert orjson.dumps(orjson.loads(instance)) in sent_set
        (prediction,) = row["response_payload"]
        assert orjson.loads(prediction) == model.predict([orjson.loads(instance)]).tolist()[0]
    assert len({r["request_id"] for r in rows}) == len(rows)

    assert len(full) == N
    for row in full:
        assert len(row["request_payload"]) == 2 and len(row["response_payload"]) == 2
