"""Batch prediction through a real server: 1M-row table with a kill -9 mid-job, storage inputs, the SDK."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import orjson
import pytest
from sklearn.tree import DecisionTreeClassifier

from loopml.warehouse import Warehouse
from tests.conftest import ServerProcess

P, L = "proj1", "us-central1"
PARENT = f"/v1/projects/{P}/locations/{L}"
SKLEARN_IMAGE = "us-docker.pkg.dev/vertex-ai/prediction/sklearn-cpu.1-2:latest"
TERMINAL = ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED")


def _tree() -> DecisionTreeClassifier:
    rng = np.random.default_rng(0)
    x = rng.uniform(-5, 5, size=(5000, 3))
    return DecisionTreeClassifier(max_depth=8, random_state=0).fit(
        x, (x[:, 0] * x[:, 1] + x[:, 2] > 0).astype(int)
    )


def _upload(server: ServerProcess, model: Any, model_id: str = "tree") -> None:
    target = server.home / "buckets" / "models" / model_id
    target.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, target / "model.joblib")
    body = {
        "modelId": model_id,
        "model": {
            "displayName": model_id,
            "artifactUri": f"gs://models/{model_id}",
            "containerSpec": {"imageUri": SKLEARN_IMAGE},
        },
    }
    r = httpx.post(f"{server.url}{PARENT}/models:upload", json=body, timeout=60)
    assert r.status_code == 200, r.text


def _bq(server: ServerProcess, sql: str) -> None:
    r = httpx.post(
        f"{server.url}/bigquery/v2/projects/{P}/queries",
        json={"query": sql, "useLegacySql": False, "timeoutMs": 120_000},
        timeout=180,
    )
    assert r.status_code == 200, r.text


def _dataset(server: ServerProcess, name: str) -> None:
    r = httpx.post(
        f"{server.url}/bigquery/v2/projects/{P}/datasets",
        json={"datasetReference": {"projectId": P, "datasetId": name}},
        timeout=30,
    )
    assert r.status_code == 200, r.text


def _create(server: ServerProcess, body: dict[str, Any]) -> dict[str, Any]:
    body = {"displayName": "e2e", "model": f"projects/{P}/locations/{L}/models/tree", **body}
    r = httpx.post(f"{server.url}{PARENT}/batchPredictionJobs", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _get(server: ServerProcess, name: str) -> dict[str, Any]:
    r = httpx.get(f"{server.url}/v1/{name}", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _wait(server: ServerProcess, name: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = _get(server, name)
        if job["state"] in TERMINAL:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {name} did not finish:\n{server.tail()}")


@pytest.mark.slow
def test_million_rows_table_to_table_survives_kill_9(server_factory: Any, tmp_path: Path) -> None:
    server: ServerProcess = server_factory(
        env={"LOOPML_BATCH_CHUNK_ROWS": "100000", "LOOPML_BATCH_TEST_PAUSE_AFTER_CHUNK_S": "0.4"}
    )
    model = _tree()
    _upload(server, model)
    _dataset(server, "ds")
    _bq(
        server,
        "CREATE TABLE ds.src AS SELECT x AS id, MOD(x * 7919, 1000) / 100.0 - 5 AS f0, "
        "5 * SIN(x) AS f1, 5 * COS(x * 0.37) AS f2 FROM UNNEST(GENERATE_ARRAY(0, 999999)) AS x",
    )
    job = _create(
        server,
        {
            "inputConfig": {
                "instancesFormat": "bigquery",
                "bigquerySource": {"inputUri": f"bq://{P}.ds.src"},
            },
            "instanceConfig": {"excludedFields": ["id"]},
            "outputConfig": {
                "predictionsFormat": "bigquery",
                "bigqueryDestination": {"outputUri": f"bq://{P}.ds"},
            },
            "dedicatedResources": {"machineSpec": {"machineType": "n1-standard-4"}, "maxReplicaCount": 2},
        },
    )
    deadline = time.monotonic() + 60
    while True:
        progress = _get(server, job["name"])["loopmlProgress"]
        if 0 < int(progress["processedCount"]) < 1_000_000:
            break
        assert time.monotonic() < deadline and progress["processedCount"] != "1000000", server.tail()
        time.sleep(0.05)
    server.kill()  # SIGKILL mid-job
    server.start()
    done = _wait(server, job["name"])
    assert done["state"] == "JOB_STATE_SUCCEEDED", done
    assert done["completionStats"] == {
        "successfulCount": "1000000",
        "failedCount": "0",
        "incompleteCount": "0",
    }
    table = done["outputInfo"]["bigqueryOutputTable"]
    server.stop()  # release the DuckDB file, then read it with the warehouse API
    warehouse = Warehouse(server.home / "warehouse.duckdb")
    try:
        out = warehouse.read_table_arrow(P, "ds", table).to_pandas()
        errors = warehouse.read_table_arrow(P, "ds", table.replace("predictions_", "errors_"))
    finally:
        warehouse.close()
    assert errors.num_rows == 0
    assert len(out) == 1_000_000
    assert np.array_equal(np.sort(out["id"].to_numpy()), np.arange(1_000_000))  # no duplicates, no losses
    expected = model.predict(out[["f0", "f1", "f2"]].to_numpy())
    assert np.array_equal(out["prediction"].to_numpy(), expected)


def test_storage_sources_and_destinations_with_instance_config(server: ServerProcess) -> None:
    model = _tree()
    _upload(server, model)
    x = np.random.default_rng(5).uniform(-5, 5, size=(400, 3)).round(6)
    bucket = server.home / "buckets" / "inputs"
    bucket.mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"r{i}", "a": a, "b": b, "c": c, "note": "n"} for i, (a, b, c) in enumerate(x.tolist())]
    lines = [orjson.dumps(r) for r in rows]
    lines[10] = orjson.dumps({"id": "r10", "a": "oops", "b": 1.0, "c": 2.0, "note": "n"})  # malformed
    (bucket / "jsonl").mkdir(exist_ok=True)
    (bucket / "jsonl" / "a.jsonl").write_bytes(b"\n".join(lines[:200]) + b"\n")
    (bucket / "jsonl" / "b.jsonl").write_bytes(b"\n".join(lines[200:]) + b"\n")
    job = _create(
        server,
        {
            "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": ["gs://inputs/jsonl/*.jsonl"]}},
            "instanceConfig": {"instanceType": "array", "keyField": "id", "includedFields": ["a", "b", "c"]},
            "outputConfig": {
                "predictionsFormat": "jsonl",
                "gcsDestination": {"outputUriPrefix": "gs://outputs/p"},
            },
            "manualBatchTuningParameters": {"batchSize": 16},
        },
    )
    done = _wait(server, job["name"])
    assert done["state"] == "JOB_STATE_SUCCEEDED", done
    assert (
        done["completionStats"]["successfulCount"] == "399" and done["completionStats"]["failedCount"] == "1"
    )
    out_dir = done["outputInfo"]["gcsOutputDirectory"]
    assert out_dir.startswith("gs://outputs/p/prediction-tree-")
    local = server.home / "buckets" / out_dir.removeprefix("gs://")
    preds = [
        orjson.loads(line)
        for f in sorted(local.glob("predictions_*.jsonl"))
        for line in f.read_bytes().splitlines()
    ]
    expected = dict(zip([f"r{i}" for i in range(400)], model.predict(x).tolist(), strict=True))
    del expected["r10"]
    assert {p["key"]: p["prediction"] for p in preds} == expected
    errors = [
        orjson.loads(line)
        for f in sorted(local.glob("errors_*.jsonl"))
        for line in f.read_bytes().splitlines()
    ]
    assert len(errors) == 1 and errors[0]["key"] == "r10" and errors[0]["error"]["code"] == 3
    assert errors[0]["instance"] == ["oops", 1.0, 2.0]

    (bucket / "data.csv").write_text("a,drop,b,c\n" + "".join(f"{a},z,{b},{c}\n" for a, b, c in x.tolist()))
    job = _create(
        server,
        {
            "inputConfig": {"instancesFormat": "csv", "gcsSource": {"uris": ["gs://inputs/data.csv"]}},
            "instanceConfig": {"excludedFields": ["drop"]},
            "outputConfig": {
                "predictionsFormat": "bigquery",
                "bigqueryDestination": {"outputUri": f"bq://{P}"},
            },
        },
    )
    done = _wait(server, job["name"])
    assert done["state"] == "JOB_STATE_SUCCEEDED", done
    dataset = done["outputInfo"]["bigqueryOutputDataset"].removeprefix(f"bq://{P}.")
    assert dataset.startswith("prediction_tree_")
    r = httpx.get(
        f"{server.url}/bigquery/v2/projects/{P}/datasets/{dataset}/tables/predictions/data",
        params={"maxResults": 1000},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    got = [int(float(row["f"][-1]["v"])) for row in r.json()["rows"]]
    assert got == model.predict(x).tolist()


def test_vertex_sdk_batch_prediction_job(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import aiplatform
    from google.cloud.aiplatform import jobs

    monkeypatch.setenv("NO_GCE_CHECK", "true")
    monkeypatch.setattr(jobs, "_JOB_WAIT_TIME", 0.2)
    model = _tree()
    _upload(server, model, "sdk-tree")
    x = np.random.default_rng(9).uniform(-5, 5, size=(50, 3))
    bucket = server.home / "buckets" / "sdkin"
    bucket.mkdir(parents=True, exist_ok=True)
    (bucket / "x.jsonl").write_bytes(b"\n".join(orjson.dumps(r) for r in x.tolist()) + b"\n")
    aiplatform.init(
        project=P,
        location=L,
        api_endpoint=server.url,
        api_transport="rest",
        credentials=AnonymousCredentials(),
    )
    job = aiplatform.BatchPredictionJob.create(
        job_display_name="sdk",
        model_name="sdk-tree",
        instances_format="jsonl",
        predictions_format="jsonl",
        gcs_source="gs://sdkin/x.jsonl",
        gcs_destination_prefix="gs://sdkout/run",
        machine_type="n1-standard-4",
        sync=True,
    )
    assert job.state.name == "JOB_STATE_SUCCEEDED"
    assert job.completion_stats.successful_count == 50
    out = server.home / "buckets" / job.output_info.gcs_output_directory.removeprefix("gs://")
    lines = [orjson.loads(line) for line in (out / "predictions_0001.jsonl").read_bytes().splitlines()]
    assert [line["prediction"] for line in lines] == model.predict(x).tolist()
    assert lines[0]["instance"] == x[0].tolist()
    names = [j.resource_name for j in aiplatform.BatchPredictionJob.list()]
    assert job.resource_name in names


def _rows(server: ServerProcess, sql: str) -> list[dict[str, Any]]:
    r = httpx.post(
        f"{server.url}/bigquery/v2/projects/{P}/queries",
        json={"query": sql, "useLegacySql": False, "timeoutMs": 120_000, "maxResults": 10_000},
        timeout=180,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    names = [f["name"] for f in body["schema"]["fields"]]
    return [dict(zip(names, [c["v"] for c in row["f"]], strict=True)) for row in body.get("rows", [])]


def test_bigquery_ml_model_batch_matches_ml_predict(server: ServerProcess) -> None:
    _dataset(server, "mlds")
    _bq(
        server,
        "CREATE TABLE mlds.pts AS SELECT x AS id, MOD(x * 37, 101) / 10.0 AS f0, MOD(x * 91, 53) / 5.0 AS f1 "
        "FROM UNNEST(GENERATE_ARRAY(0, 499)) AS x",
    )
    _bq(
        server,
        "CREATE MODEL mlds.km OPTIONS(model_type='kmeans', num_clusters=3, model_registry='vertex_ai', "
        "vertex_ai_model_id='km') AS SELECT f0, f1 FROM mlds.pts",
    )
    expected = {
        int(r["id"]): int(r["CENTROID_ID"])
        for r in _rows(
            server, "SELECT id, CENTROID_ID FROM ML.PREDICT(MODEL mlds.km, (SELECT id, f0, f1 FROM mlds.pts))"
        )
    }
    job = _create(
        server,
        {
            "model": f"projects/{P}/locations/{L}/models/km",
            "inputConfig": {
                "instancesFormat": "bigquery",
                "bigquerySource": {"inputUri": f"bq://{P}.mlds.pts"},
            },
            "instanceConfig": {"instanceType": "object", "excludedFields": ["id"]},
            "outputConfig": {
                "predictionsFormat": "bigquery",
                "bigqueryDestination": {"outputUri": f"bq://{P}.mlds"},
            },
        },
    )
    done = _wait(server, job["name"])
    assert done["state"] == "JOB_STATE_SUCCEEDED", done
    assert done["completionStats"]["successfulCount"] == "500"
    table = done["outputInfo"]["bigqueryOutputTable"]
    got = {
        int(r["id"]): orjson.loads(r["prediction"])["nearest_centroid_id"][0]
        for r in _rows(server, f"SELECT id, prediction FROM mlds.{table}")
    }
    assert got == expected


CONTAINER = """
import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PREDICT, HEALTH = os.environ["AIP_PREDICT_ROUTE"], os.environ["AIP_HEALTH_ROUTE"]


class Handler(BaseHTTPRequestHandler):
    def _reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._reply(200 if self.path == HEALTH else 404, {})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        rows = body["instances"]
        if self.path != PREDICT or any(not all(isinstance(v, (int, float)) for v in r) for r in rows):
            self._reply(400, {"error": "instances must be lists of numbers"})
            return
        self._reply(200, {"predictions": [{"sum": sum(r), "n": len(rows)} for r in rows]})

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(os.environ["AIP_HTTP_PORT"])), Handler).serve_forever()
"""


def test_custom_container_model_in_batches(server: ServerProcess, tmp_path: Path) -> None:
    import sys

    script = tmp_path / "container.py"
    script.write_text(CONTAINER)
    body = {
        "modelId": "summer",
        "model": {
            "displayName": "summer",
            "containerSpec": {"imageUri": "example.com/summer:1", "command": [sys.executable, str(script)]},
        },
    }
    r = httpx.post(f"{server.url}{PARENT}/models:upload", json=body, timeout=60)
    assert r.status_code == 200, r.text
    bucket = server.home / "buckets" / "cin"
    bucket.mkdir(parents=True, exist_ok=True)
    rows: list[Any] = [[i, i * 0.5] for i in range(100)]
    rows[42] = ["x", 1]
    (bucket / "in.jsonl").write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
    job = _create(
        server,
        {
            "model": f"projects/{P}/locations/{L}/models/summer",
            "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": ["gs://cin/in.jsonl"]}},
            "outputConfig": {
                "predictionsFormat": "jsonl",
                "gcsDestination": {"outputUriPrefix": "gs://cout/x"},
            },
            "manualBatchTuningParameters": {"batchSize": 8},
        },
    )
    done = _wait(server, job["name"])
    assert done["state"] == "JOB_STATE_SUCCEEDED", done
    assert (
        done["completionStats"]["successfulCount"] == "99" and done["completionStats"]["failedCount"] == "1"
    )
    local = server.home / "buckets" / done["outputInfo"]["gcsOutputDirectory"].removeprefix("gs://")
    preds = [orjson.loads(line) for line in (local / "predictions_0001.jsonl").read_bytes().splitlines()]
    assert {tuple(p["instance"]): p["prediction"]["sum"] for p in preds} == {
        tuple(r): r[0] + r[1] for i, r in enumerate(rows) if i != 42
    }
    assert max(p["prediction"]["n"] for p in preds) == 8  # batchSize instances per container call
    (error,) = [orjson.loads(line) for line in (local / "errors_0001.jsonl").read_bytes().splitlines()]
    assert error["instance"] == ["x", 1] and "HTTP 400" in error["error"]["message"]


def test_table_with_malformed_rows_reports_each_error(server: ServerProcess) -> None:
    model = _tree()
    _upload(server, model, "tree-bad")
    _dataset(server, "bad")
    _bq(
        server,
        "CREATE TABLE bad.src AS SELECT x AS id, CAST(x / 10.0 - 2 AS STRING) AS f0, 1.5 AS f1, -0.5 AS f2 "
        "FROM UNNEST(GENERATE_ARRAY(0, 39)) AS x",
    )
    _bq(server, "UPDATE bad.src SET f0 = 'n/a' WHERE id IN (3, 17)")
    _bq(server, "UPDATE bad.src SET f0 = NULL WHERE id = 25")
    job = _create(
        server,
        {
            "inputConfig": {
                "instancesFormat": "bigquery",
                "bigquerySource": {"inputUri": f"bq://{P}.bad.src"},
            },
            "instanceConfig": {"includedFields": ["f0", "f1", "f2"]},
            "outputConfig": {
                "predictionsFormat": "bigquery",
                "bigqueryDestination": {"outputUri": f"bq://{P}.bad"},
            },
        },
    )
    done = _wait(server, job["name"])
    assert done["state"] == "JOB_STATE_SUCCEEDED", done
    assert done["completionStats"] == {"successfulCount": "37", "failedCount": "3", "incompleteCount": "0"}
    table = done["outputInfo"]["bigqueryOutputTable"]
    errors = _rows(
        server,
        f"SELECT id, error.code AS code, error.message AS message FROM bad.{table.replace('predictions_', 'errors_')}",
    )
    by_id = {int(r["id"]): r for r in errors}
    assert sorted(by_id) == [3, 17, 25] and {r["code"] for r in errors} == {"3"}
    assert "'n/a' is not a number" in by_id[3]["message"] and "null" in by_id[25]["message"]
    preds = _rows(server, f"SELECT id, f0, prediction FROM bad.{table} ORDER BY id")
    assert len(preds) == 37
    x = np.array([[float(r["f0"]), 1.5, -0.5] for r in preds])
    assert [int(r["prediction"]) for r in preds] == model.predict(x).tolist()
