"""Batch prediction against real SQLite metadata, a real DuckDB warehouse and real sklearn models."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import orjson
import pyarrow as pa
import pytest
from sklearn.tree import DecisionTreeClassifier

from loopml.artifacts import ArtifactStore
from loopml.config import Settings
from loopml.errors import FailedPrecondition, InvalidArgument, NotFound
from loopml.metadata import Database
from loopml.registry.operations import OperationStore
from loopml.registry.service import RegistryService
from loopml.serving.batch import BatchService
from loopml.warehouse import Warehouse

P, L = "proj1", "us-central1"
SKLEARN_IMAGE = "us-docker.pkg.dev/vertex-ai/prediction/sklearn-cpu.1-2:latest"


@dataclass
class Env:
    settings: Settings
    db: Database
    store: ArtifactStore
    warehouse: Warehouse
    registry: RegistryService
    batch: BatchService
    model: DecisionTreeClassifier


def _features(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3))


def _open(home: Path, **overrides: object) -> tuple[Settings, Database, ArtifactStore, Warehouse]:
    settings = Settings(home=home, **overrides)  # type: ignore[arg-type]
    settings.ensure_dirs()
    db = Database(settings.resolved_database_url())
    db.migrate()
    store = ArtifactStore(settings.resolved_artifact_root())
    warehouse = Warehouse(settings.resolved_warehouse_path(), store)
    return settings, db, store, warehouse


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[Env]:
    settings, db, store, warehouse = _open(tmp_path, batch_chunk_rows=4096)
    registry = RegistryService(db, store, OperationStore(db))
    x = _features(2000)
    model = DecisionTreeClassifier(max_depth=6, random_state=0).fit(
        x, (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(int)
    )
    model_dir = store.resolve("gs://models/tree")
    model_dir.mkdir(parents=True)
    joblib.dump(model, model_dir / "model.joblib")
    registry.upload_model(
        P,
        L,
        {
            "displayName": "tree",
            "artifactUri": "gs://models/tree",
            "containerSpec": {"imageUri": SKLEARN_IMAGE},
        },
        model_id="tree",
    )
    batch = BatchService(db, store, settings, registry=lambda: registry, warehouse=lambda: warehouse)
    batch.start()
    yield Env(settings, db, store, warehouse, registry, batch, model)
    batch.stop()
    warehouse.close()
    db.dispose()


def _wait(batch: BatchService, name: str, timeout: float = 60.0) -> dict:
    job_id = name.rsplit("/", 1)[-1]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = batch.get_job(P, L, job_id)
        if job["state"] in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job did not finish: {job}")


def _job(source: dict, output: dict, **extra: object) -> dict:
    return {
        "displayName": "b",
        "model": f"projects/{P}/locations/{L}/models/tree",
        **source,
        **output,
        **extra,
    }


def test_table_to_table_matches_in_process_predict_and_reports_malformed_rows(env: Env) -> None:
    x = _features(10_000, seed=1)
    f2 = [str(v) for v in x[:, 2]]
    bad = {17: "abc", 4500: None, 9999: "1.5.3"}
    for i, v in bad.items():
        f2[i] = v  # type: ignore[call-overload]
    env.warehouse.create_dataset(P, "ds")
    env.warehouse.write_table_arrow(
        P,
        "ds",
        "src",
        pa.table({"f0": x[:, 0], "f1": x[:, 1], "f2": pa.array(f2, pa.string())}),
        mode="create",
    )
    job = env.batch.create_job(
        P,
        L,
        _job(
            {
                "inputConfig": {
                    "instancesFormat": "bigquery",
                    "bigquerySource": {"inputUri": f"bq://{P}.ds.src"},
                }
            },
            {
                "outputConfig": {
                    "predictionsFormat": "bigquery",
                    "bigqueryDestination": {"outputUri": f"bq://{P}.ds"},
                }
            },
        ),
    )
    assert job["state"] == "JOB_STATE_PENDING"
    done = _wait(env.batch, job["name"])
    assert done["state"] == "JOB_STATE_SUCCEEDED", done
    assert done["completionStats"] == {"successfulCount": "9997", "failedCount": "3", "incompleteCount": "0"}
    table_name = done["outputInfo"]["bigqueryOutputTable"]
    assert (
        table_name.startswith("predictions_")
        and done["outputInfo"]["bigqueryOutputDataset"] == f"bq://{P}.ds"
    )
    out = env.warehouse.read_table_arrow(P, "ds", table_name).to_pandas()
    assert len(out) == 9997 and list(out.columns) == ["f0", "f1", "f2", "prediction"]
    good = np.array([i for i in range(10_000) if i not in bad])
    expected = env.model.predict(x[good])
    got = out.sort_values("f0")["prediction"].to_numpy()
    assert np.array_equal(got, expected[np.argsort(x[good, 0])])
    errors = env.warehouse.read_table_arrow(
        P, "ds", table_name.replace("predictions_", "errors_")
    ).to_pylist()
    assert sorted(e["f2"] or "" for e in errors) == ["", "1.5.3", "abc"]
    messages = {e["f2"]: e["error"]["message"] for e in errors}
    assert "'abc' is not a number" in messages["abc"] and "null" in messages[None]


def test_jsonl_to_gcs_with_key_field_and_csv_to_new_dataset(env: Env) -> None:
    x = _features(300, seed=2)
    lines = [
        orjson.dumps({"id": f"k{i}", "a": r[0], "b": r[1], "c": r[2], "junk": "z"})
        for i, r in enumerate(x.tolist())
    ]
    lines.insert(5, b"{not json")
    env.store.write_bytes("gs://inputs/part-1.jsonl", b"\n".join(lines[:150]) + b"\n")
    env.store.write_bytes("gs://inputs/part-2.jsonl", b"\n".join(lines[150:]) + b"\n")
    job = env.batch.create_job(
        P,
        L,
        _job(
            {
                "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": ["gs://inputs/*.jsonl"]}},
                "instanceConfig": {
                    "instanceType": "array",
                    "keyField": "id",
                    "includedFields": ["a", "b", "c"],
                },
            },
            {
                "outputConfig": {
                    "predictionsFormat": "jsonl",
                    "gcsDestination": {"outputUriPrefix": "gs://outputs/run"},
                }
            },
            manualBatchTuningParameters={"batchSize": 7},
        ),
    )
    done = _wait(env.batch, job["name"])
    assert done["state"] == "JOB_STATE_SUCCEEDED", done
    out_dir = done["outputInfo"]["gcsOutputDirectory"]
    assert out_dir.startswith("gs://outputs/run/prediction-tree-") and out_dir.endswith("Z")
    files = [u.rsplit("/", 1)[-1] for u in env.store.list(out_dir)]
    assert "predictions_0001.jsonl" in files and "errors_0001.jsonl" in files
    preds = [
        orjson.loads(line)
        for u in env.store.list(out_dir)
        if "/predictions_" in u
        for line in env.store.read_bytes(u).splitlines()
    ]
    assert len(preds) == 300 and set(preds[0]) == {"key", "prediction"}
    expected = dict(zip([f"k{i}" for i in range(300)], env.model.predict(x).tolist(), strict=True))
    assert {p["key"]: p["prediction"] for p in preds} == expected
    errors = [
        orjson.loads(line) for line in env.store.read_bytes(out_dir + "/errors_0001.jsonl").splitlines()
    ]
    assert (
        len(errors) == 1
        and errors[0]["error"]["code"] == 3
        and "Invalid JSON" in errors[0]["error"]["message"]
    )

    csv = "f0,f1,skip,f2\n" + "".join(f"{r[0]},{r[1]},x,{r[2]}\n" for r in x[:50])
    env.store.write_bytes("gs://inputs/data.csv", csv.encode())
    job = env.batch.create_job(
        P,
        L,
        _job(
            {
                "inputConfig": {"instancesFormat": "csv", "gcsSource": {"uris": ["gs://inputs/data.csv"]}},
                "instanceConfig": {"excludedFields": ["skip"]},
            },
            {
                "outputConfig": {
                    "predictionsFormat": "bigquery",
                    "bigqueryDestination": {"outputUri": f"bq://{P}"},
                }
            },
        ),
    )
    done = _wait(env.batch, job["name"])
    assert done["state"] == "JOB_STATE_SUCCEEDED", done
    dataset = done["outputInfo"]["bigqueryOutputDataset"].split(".", 1)[1]
    assert (
        dataset.startswith("prediction_tree_") and done["outputInfo"]["bigqueryOutputTable"] == "predictions"
    )
    rows = env.warehouse.read_table_arrow(P, dataset, "predictions").to_pylist()
    assert [r["prediction"] for r in rows] == env.model.predict(x[:50]).tolist()
    assert env.warehouse.read_table_arrow(P, dataset, "errors").num_rows == 0


def test_resume_after_stop_computes_each_chunk_once(tmp_path: Path, env: Env) -> None:
    x = _features(40_000, seed=3)
    env.warehouse.create_dataset(P, "ds")
    env.warehouse.write_table_arrow(
        P, "ds", "big", pa.table({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2]}), "create"
    )
    env.batch.stop()
    slow = BatchService(
        env.db,
        env.store,
        Settings(home=env.settings.home, batch_chunk_rows=4096, batch_test_pause_after_chunk_s=0.3),
        registry=lambda: env.registry,
        warehouse=lambda: env.warehouse,
    )
    job = slow.create_job(
        P,
        L,
        _job(
            {
                "inputConfig": {
                    "instancesFormat": "bigquery",
                    "bigquerySource": {"inputUri": f"bq://{P}.ds.big"},
                }
            },
            {
                "outputConfig": {
                    "predictionsFormat": "bigquery",
                    "bigqueryDestination": {"outputUri": f"bq://{P}.ds"},
                }
            },
        ),
    )
    slow.start()
    job_id = job["name"].rsplit("/", 1)[-1]
    deadline = time.monotonic() + 30
    while int(slow.get_job(P, L, job_id)["loopmlProgress"]["processedCount"]) == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    slow.stop()  # as a server shutdown mid-job: the job stays RUNNING
    mid = slow.get_job(P, L, job_id)
    assert mid["state"] == "JOB_STATE_RUNNING"
    assert 0 < int(mid["loopmlProgress"]["processedCount"]) < 40_000
    env.batch.runner.start()
    done = _wait(env.batch, job["name"])
    assert done["state"] == "JOB_STATE_SUCCEEDED"
    out = env.warehouse.read_table_arrow(P, "ds", done["outputInfo"]["bigqueryOutputTable"]).to_pandas()
    assert len(out) == 40_000 and not out.duplicated(["a", "b", "c"]).any()
    assert np.array_equal(
        out.sort_values("a")["prediction"].to_numpy(), env.model.predict(x[np.argsort(x[:, 0])])
    )


def test_bad_requests_are_400s(env: Env) -> None:
    base = _job(
        {"inputConfig": {"instancesFormat": "bigquery", "bigquerySource": {"inputUri": f"bq://{P}.ds.t"}}},
        {
            "outputConfig": {
                "predictionsFormat": "bigquery",
                "bigqueryDestination": {"outputUri": f"bq://{P}"},
            }
        },
    )
    for mutate, text in [
        (lambda b: b.pop("displayName"), "displayName"),
        (lambda b: b["inputConfig"].update(instancesFormat="parquet"), "instancesFormat"),
        (lambda b: b["inputConfig"].update(bigquerySource={"inputUri": "bq://p.d"}), "must name a table"),
        (
            lambda b: b.update(instanceConfig={"includedFields": ["a"], "excludedFields": ["b"]}),
            "cannot both",
        ),
        (
            lambda b: b.update(outputConfig={"predictionsFormat": "jsonl", "gcsDestination": {}}),
            "outputUriPrefix",
        ),
    ]:
        body = orjson.loads(orjson.dumps(base))
        mutate(body)
        with pytest.raises(InvalidArgument, match=text):
            env.batch.create_job(P, L, body)


def test_empty_table_cancel_and_delete(env: Env) -> None:
    env.warehouse.create_dataset(P, "ds")
    env.warehouse.write_table_arrow(
        P,
        "ds",
        "empty",
        pa.table({"a": pa.array([], pa.float64()), "b": pa.array([], pa.float64())}),
        "create",
    )
    env.warehouse.write_table_arrow(
        P, "ds", "three", pa.table({"a": [1.0] * 30_000, "b": [2.0] * 30_000, "c": [0.5] * 30_000}), "create"
    )
    job = env.batch.create_job(
        P,
        L,
        _job(
            {
                "inputConfig": {
                    "instancesFormat": "bigquery",
                    "bigquerySource": {"inputUri": f"bq://{P}.ds.empty"},
                }
            },
            {
                "outputConfig": {
                    "predictionsFormat": "bigquery",
                    "bigqueryDestination": {"outputUri": f"bq://{P}.ds"},
                }
            },
        ),
    )
    done = _wait(env.batch, job["name"])
    assert done["state"] == "JOB_STATE_SUCCEEDED" and done["completionStats"]["successfulCount"] == "0"
    empty = env.warehouse.read_table_arrow(P, "ds", done["outputInfo"]["bigqueryOutputTable"])
    assert empty.num_rows == 0 and empty.column_names == ["a", "b", "prediction"]

    env.batch.stop()
    slow = BatchService(
        env.db,
        env.store,
        Settings(home=env.settings.home, batch_chunk_rows=4096, batch_test_pause_after_chunk_s=0.2),
        registry=lambda: env.registry,
        warehouse=lambda: env.warehouse,
    )
    job = slow.create_job(
        P,
        L,
        _job(
            {
                "inputConfig": {
                    "instancesFormat": "bigquery",
                    "bigquerySource": {"inputUri": f"bq://{P}.ds.three"},
                }
            },
            {
                "outputConfig": {
                    "predictionsFormat": "bigquery",
                    "bigqueryDestination": {"outputUri": f"bq://{P}.ds"},
                }
            },
        ),
    )
    job_id = job["name"].rsplit("/", 1)[-1]
    with pytest.raises(FailedPrecondition, match="cancel it"):
        slow.delete_job(P, L, job_id)
    slow.start()
    try:
        deadline = time.monotonic() + 30
        while slow.get_job(P, L, job_id)["state"] != "JOB_STATE_RUNNING":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert slow.cancel_job(P, L, job_id) == {}
        done = _wait(slow, job["name"])
    finally:
        slow.stop()
    assert done["state"] == "JOB_STATE_CANCELLED"
    assert int(done["completionStats"]["incompleteCount"]) > 0
    with pytest.raises(FailedPrecondition, match="already"):
        slow.cancel_job(P, L, job_id)
    op = slow.delete_job(P, L, job_id)
    assert op["done"] is True and op["response"]["@type"].endswith("google.protobuf.Empty")
    with pytest.raises(NotFound):
        slow.get_job(P, L, job_id)
    listed = slow.list_jobs(P, L, filter_text="state=JOB_STATE_SUCCEEDED")
    assert [j["displayName"] for j in listed["batchPredictionJobs"]] == ["b"]


def test_xgboost_booster_model(env: Env) -> None:
    import xgboost

    x = _features(3000, seed=7)
    y = (x[:, 0] - x[:, 2] > 0).astype(int)
    booster = xgboost.train(
        {"objective": "binary:logistic", "max_depth": 3, "nthread": 1}, xgboost.DMatrix(x, label=y), 10
    )
    model_dir = env.store.resolve("gs://models/xgb")
    model_dir.mkdir(parents=True)
    booster.save_model(str(model_dir / "model.json"))
    image = "us-docker.pkg.dev/vertex-ai/prediction/xgboost-cpu.2-1:latest"
    env.registry.upload_model(
        P,
        L,
        {"displayName": "xgb", "artifactUri": "gs://models/xgb", "containerSpec": {"imageUri": image}},
        model_id="xgb",
    )
    env.warehouse.create_dataset(P, "xg")
    env.warehouse.write_table_arrow(
        P, "xg", "src", pa.table({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2]}), "create"
    )
    body = _job(
        {"inputConfig": {"instancesFormat": "bigquery", "bigquerySource": {"inputUri": f"bq://{P}.xg.src"}}},
        {
            "outputConfig": {
                "predictionsFormat": "bigquery",
                "bigqueryDestination": {"outputUri": f"bq://{P}.xg"},
            }
        },
    )
    body["model"] = f"projects/{P}/locations/{L}/models/xgb@1"
    done = _wait(env.batch, env.batch.create_job(P, L, body)["name"])
    assert done["state"] == "JOB_STATE_SUCCEEDED", done
    out = env.warehouse.read_table_arrow(P, "xg", done["outputInfo"]["bigqueryOutputTable"]).to_pandas()
    expected = booster.predict(xgboost.DMatrix(out[["a", "b", "c"]].to_numpy()))
    assert np.allclose(out["prediction"].to_numpy(), expected, rtol=1e-6)
