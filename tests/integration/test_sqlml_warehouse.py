"""BigQuery ML on a real DuckDB warehouse and a real SQLite registry (no server).

The workshop's flow (W1): nested events -> CREATE MODEL KMEANS over a nested SELECT, registered
in the Vertex registry -> ML.PREDICT / CTAS / ML.DETECT_ANOMALIES; then replace/drop semantics,
all-or-nothing failures, EXPORT MODEL and the supervised model types.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from loopml.artifacts import ArtifactStore
from loopml.errors import AlreadyExists, FailedPrecondition, InvalidQuery, NotFound
from loopml.ingest.synth import events, is_anomaly
from loopml.metadata import Database
from loopml.registry.endpoints import EndpointService
from loopml.registry.operations import OperationStore
from loopml.registry.service import RegistryService
from loopml.serving.spec import DeployedModelSpec, EndpointSpec
from loopml.sqlml.predictor import load_predictor
from loopml.sqlml.service import SqlMLService
from loopml.warehouse import Warehouse

DATA = Path(__file__).resolve().parent.parent / "data" / "bigquery"
P, L = "hyp-proj", "europe-west1"
FEATURES = (
    "SELECT ecommerce.purchase.tax AS tax, ecommerce.purchase.shipping AS shipping, "
    "ecommerce.purchase.value AS value FROM `hyp-proj.ecommerce_sink.cloud_run` WHERE event='purchase'"
)
CREATE = (
    "CREATE OR REPLACE MODEL `hyp-proj.ecommerce_sink.anomaly_detection` "
    "OPTIONS(MODEL_TYPE='KMEANS', NUM_CLUSTERS=2, MODEL_REGISTRY='VERTEX_AI') AS " + FEATURES
)


class InProcessBackend:
    """A serving backend that loads deployed models with their real loader, in this process."""

    def __init__(self) -> None:
        self.live: dict[str, Any] = {}

    def deploy(self, spec: DeployedModelSpec) -> None:
        assert spec.framework == "bqml-kmeans" and spec.artifact_dir is not None
        self.live[spec.deployed_model_id] = load_predictor(spec.artifact_dir, spec)

    def undeploy(self, deployed_model_id: str) -> None:
        self.live.pop(deployed_model_id, None)

    def update(self, spec: DeployedModelSpec) -> None:
        return None

    def set_endpoint(self, endpoint: EndpointSpec) -> None:
        return None

    def remove_endpoint(self, endpoint_name: str) -> None:
        return None

    def status(self, deployed_model_id: str) -> dict[str, Any]:
        return {"availableReplicaCount": 1 if deployed_model_id in self.live else 0}


@dataclass
class Stack:
    wh: Warehouse
    registry: RegistryService
    endpoints: EndpointService
    backend: InProcessBackend
    sqlml: SqlMLService
    artifacts: ArtifactStore

    def q(self, sql: str) -> pa.Table:
        return self.wh.query(sql, project=P).table

    def versions(self, model_id: str = "anomaly_detection") -> list[str]:
        try:
            listing = self.registry.list_versions(P, L, model_id)
        except NotFound:
            return []
        return [m["versionId"] for m in listing["models"]]


@pytest.fixture()
def stack(tmp_path: Path) -> Iterator[Stack]:
    db = Database(f"sqlite:///{tmp_path / 'metadata.db'}")
    db.migrate()
    artifacts = ArtifactStore(tmp_path / "store")
    ops = OperationStore(db)
    registry = RegistryService(db, artifacts, ops)
    backend = InProcessBackend()
    endpoints = EndpointService(db, registry, ops, {"serving": backend})
    wh = Warehouse(tmp_path / "wh.duckdb", artifacts)
    sqlml = SqlMLService(wh, artifacts, registry)
    sqlml.install()
    wh.create_dataset(P, "ecommerce_sink", location="europe-west1")
    schema = json.loads((DATA / "cloud_run_schema.json").read_text())
    wh.create_table(P, "ecommerce_sink", "cloud_run", schema)
    yield Stack(wh, registry, endpoints, backend, sqlml, artifacts)
    wh.close()
    db.dispose()


def load_events(stack: Stack, n: int = 1500, seed: int = 7, noise: float = 0.0) -> list[dict[str, Any]]:
    rows = list(itertools.islice(events(seed, noise=noise), n))
    assert stack.wh.insert_rows(P, "ecommerce_sink", "cloud_run", rows) == []
    return [r for r in rows if r["event"] == "purchase"]


def test_workshop_bqml_flow(stack: Stack) -> None:
    purchases = load_events(stack)
    anomalies = sum(map(is_anomaly, purchases))
    assert 0.1 < anomalies / len(purchases) < 0.25
    result = stack.wh.query(CREATE, project=P)
    assert result.statement_type == "CREATE_MODEL" and result.ddl_operation == "CREATE"

    rows = stack.q(
        f"SELECT value, CENTROID_ID FROM ML.PREDICT(MODEL ecommerce_sink.anomaly_detection, ({FEATURES}))"
    )
    assert rows.num_rows == len(purchases)
    assert all((r["CENTROID_ID"] == 1) == (r["value"] > 1000) for r in rows.to_pylist())

    stack.q(
        "CREATE TABLE ecommerce_sink.anomaly_data AS SELECT (CASE WHEN CENTROID_ID = 1 THEN TRUE ELSE FALSE END) "
        f"AS anomaly, tax, shipping, value FROM ML.PREDICT(MODEL ecommerce_sink.anomaly_detection, ({FEATURES}))"
    )
    counts = {
        r["anomaly"]: r["n"]
        for r in stack.q(
            "SELECT anomaly, COUNT(*) AS n FROM ecommerce_sink.anomaly_data GROUP BY anomaly"
        ).to_pylist()
    }
    assert counts == {True: anomalies, False: len(purchases) - anomalies}

    # Registered as models/anomaly_detection in the dataset's region, with SQL lineage.
    model = stack.registry.get_model(P, L, "anomaly_detection")
    assert model["versionId"] == "1" and "default" in model["versionAliases"]
    assert (
        model["framework"] == "bqml-kmeans"
        and "DEDICATED_RESOURCES" in model["supportedDeploymentResourcesTypes"]
    )
    assert model["modelSourceInfo"]["sourceType"] == "BQML"
    assert model["lineage"] == {
        "kind": "sql",
        "statement": CREATE,
        "trainingTables": ["hyp-proj.ecommerce_sink.cloud_run"],
        "bqmlModel": "hyp-proj.ecommerce_sink.anomaly_detection",
    }
    # ML.DETECT_ANOMALIES with a model of the normal purchases flags every anomaly.
    stack.q(
        "CREATE MODEL ecommerce_sink.normal_purchases OPTIONS(MODEL_TYPE='KMEANS', NUM_CLUSTERS=2) AS "
        "SELECT ecommerce.purchase.tax AS tax, ecommerce.purchase.shipping AS shipping, "
        "ecommerce.purchase.value AS value, user_id FROM ecommerce_sink.cloud_run "
        "WHERE event='purchase' AND ecommerce.purchase.value < 1000"
    )
    flagged = stack.q(
        "SELECT is_anomaly, value FROM ML.DETECT_ANOMALIES(MODEL ecommerce_sink.normal_purchases, "
        "STRUCT(0.02 AS contamination), (SELECT ecommerce.purchase.tax AS tax, ecommerce.purchase.shipping "
        "AS shipping, ecommerce.purchase.value AS value, user_id FROM ecommerce_sink.cloud_run "
        "WHERE event='purchase'))"
    ).to_pylist()
    assert len(flagged) == len(purchases)
    assert all(r["is_anomaly"] == (r["value"] > 1000) for r in flagged)
    with pytest.raises(InvalidQuery, match=r"contamination must be in \[0, 0.5\]"):
        stack.q(
            "SELECT * FROM ML.DETECT_ANOMALIES(MODEL ecommerce_sink.normal_purchases, "
            "STRUCT(0.7 AS contamination))"
        )
    # Without input data, DETECT_ANOMALIES looks at the training data again.
    assert stack.q(
        "SELECT COUNT(*) AS n FROM ML.DETECT_ANOMALIES(MODEL ecommerce_sink.normal_purchases, "
        "STRUCT(0.02 AS contamination))"
    ).to_pylist() == [{"n": len(purchases) - anomalies}]
    # TABLE t input, and input columns the model does not use pass through unchanged.
    by_table = stack.q(
        "SELECT anomaly, CENTROID_ID FROM ML.PREDICT(MODEL ecommerce_sink.anomaly_detection, "
        "TABLE ecommerce_sink.anomaly_data)"
    ).to_pylist()
    assert len(by_table) == len(purchases) and all(r["anomaly"] == (r["CENTROID_ID"] == 1) for r in by_table)
    # ML.VALIDATE_DATA_SKEW against the training statistics recorded at CREATE MODEL.
    skewed = stack.q(
        "SELECT input, value, is_anomaly FROM ML.VALIDATE_DATA_SKEW(MODEL ecommerce_sink.anomaly_detection, "
        "(SELECT 4.9 AS tax, 5.99 AS shipping, 1000000.1 AS value), "
        "STRUCT(0.2 AS numerical_default_threshold, [('tax', 0.5)] AS thresholds))"
    ).to_pylist()
    assert [r["input"] for r in skewed] == ["tax", "shipping", "value"]
    assert [r["is_anomaly"] for r in skewed] == [False, False, True]
    for fn in ("ML.EVALUATE", "ML.CENTROIDS", "ML.TRAINING_INFO", "ML.FEATURE_INFO"):
        assert stack.q(f"SELECT * FROM {fn}(MODEL ecommerce_sink.anomaly_detection)").num_rows >= 1


def test_replace_drop_and_deployed_versions(stack: Stack) -> None:
    load_events(stack, 600)
    stack.q(CREATE)
    stack.q(
        CREATE.replace("NUM_CLUSTERS=2,", "NUM_CLUSTERS=2, VERTEX_AI_MODEL_VERSION_ALIASES=['champion'],")
    )
    # CREATE OR REPLACE replaced registry version 1 by version 2.
    assert stack.versions() == ["2"]
    assert stack.registry.get_model(P, L, "anomaly_detection@champion")["versionId"] == "2"
    with pytest.raises(
        AlreadyExists, match=r"Already Exists: Model hyp-proj:ecommerce_sink\.anomaly_detection"
    ):
        stack.q(CREATE.replace("CREATE OR REPLACE", "CREATE"))
    assert stack.q(CREATE.replace("CREATE OR REPLACE MODEL", "CREATE MODEL IF NOT EXISTS")).num_rows == 0
    assert stack.versions() == ["2"]

    # Deploy version 2 and predict through the registered loader.
    stack.endpoints.create_endpoint(P, L, {"displayName": "my_hyp_endpoint"}, "e1")
    stack.endpoints.deploy_model(
        P,
        L,
        "e1",
        {"deployedModel": {"model": "anomaly_detection", "dedicatedResources": {"minReplicaCount": 1}}},
    )
    (predictor,) = stack.backend.live.values()
    out = predictor.predict(
        [{"tax": 4.9, "shipping": 5.99, "value": 1000000.1}, {"tax": 4.9, "shipping": 5.99, "value": 35.43}],
        None,
    )
    assert [p["nearest_centroid_id"][0] for p in out] == [1, 2]
    # DROP MODEL is refused while deployed and changes nothing.
    with pytest.raises(FailedPrecondition, match="deployed"):
        stack.q("DROP MODEL ecommerce_sink.anomaly_detection")
    assert stack.versions() == ["2"]
    assert stack.q(
        "SELECT COUNT(*) AS n FROM ML.CENTROIDS(MODEL ecommerce_sink.anomaly_detection)"
    ).to_pylist()
    # Replacing a deployed model keeps the deployed version serving and adds the new one as default.
    stack.q(CREATE)
    assert stack.versions() == ["2", "3"]
    assert stack.registry.get_model(P, L, "anomaly_detection")["versionId"] == "3"
    assert stack.registry.get_model(P, L, "anomaly_detection@2")["deployedModels"]
    stack.q("DROP MODEL ecommerce_sink.anomaly_detection")  # version 3 is not deployed
    assert stack.versions() == ["2"]
    with pytest.raises(NotFound, match=r"Not found: Model hyp-proj:ecommerce_sink\.anomaly_detection"):
        stack.q("SELECT * FROM ML.CENTROIDS(MODEL ecommerce_sink.anomaly_detection)")
    with pytest.raises(NotFound):
        stack.q("DROP MODEL ecommerce_sink.anomaly_detection")
    assert stack.q("DROP MODEL IF EXISTS ecommerce_sink.anomaly_detection").num_rows == 0


def test_failed_create_model_leaves_nothing(stack: Stack) -> None:
    load_events(stack, 300)
    bad = [
        (CREATE.replace("NUM_CLUSTERS=2", "NUM_CLUSTERS=2, KMS_KEY_NAME='k'"), InvalidQuery, "KMS_KEY_NAME"),
        (CREATE.replace("NUM_CLUSTERS=2", "NUM_CLUSTERS='two'"), InvalidQuery, "NUM_CLUSTERS expects INT64"),
        (CREATE.replace("NUM_CLUSTERS=2", "NUM_CLUSTERS=HPARAM_RANGE(2, 4)"), InvalidQuery, "HPARAM_RANGE"),
        (CREATE.replace("OPTIONS(", "TRANSFORM(tax) OPTIONS("), InvalidQuery, "TRANSFORM"),
        (
            CREATE.replace("ecommerce.purchase.value AS value", "ecommerce.purchase.items AS value"),
            InvalidQuery,
            "Column value has type ARRAY",
        ),
        (CREATE.replace("event='purchase'", "event='nothing'"), InvalidQuery, "no rows"),
        (CREATE.replace("cloud_run", "missing_table"), NotFound, "missing_table"),
        (CREATE.replace("ecommerce_sink.anomaly_detection", "nope.anomaly_detection"), NotFound, "nope"),
        (CREATE.replace("anomaly_detection", "cloud_run"), AlreadyExists, "cannot share a table's name"),
    ]
    for sql, error, match in bad:
        with pytest.raises(error, match=match):
            stack.q(sql)
    assert stack.versions() == []
    assert stack.sqlml.catalog.list(P, "ecommerce_sink") == []
    assert not list((stack.artifacts.root / "sqlml" / "staging").iterdir())
    assert not list(stack.artifacts.registry_dir.rglob("*.json"))
    # A registry failure after training puts the previous model back and leaves no new version.
    stack.q(CREATE)
    before = stack.q(
        f"SELECT CENTROID_ID FROM ML.PREDICT(MODEL ecommerce_sink.anomaly_detection, ({FEATURES}))"
    )

    def broken_upload(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise FailedPrecondition("registry is read-only")

    original = stack.registry.upload_model
    stack.registry.upload_model = broken_upload  # type: ignore[method-assign]
    try:
        with pytest.raises(FailedPrecondition, match="read-only"):
            stack.q(CREATE.replace("NUM_CLUSTERS=2", "NUM_CLUSTERS=2, MAX_ITERATIONS=5"))
    finally:
        stack.registry.upload_model = original  # type: ignore[method-assign]
    assert stack.versions() == ["1"]
    _, model = stack.sqlml.get_model(stack.sqlml.catalog.list(P, "ecommerce_sink")[0].path)
    assert model.options["MAX_ITERATIONS"] == 20
    assert (
        stack.q(f"SELECT CENTROID_ID FROM ML.PREDICT(MODEL ecommerce_sink.anomaly_detection, ({FEATURES}))")
        == before
    )
    with pytest.raises(InvalidQuery, match="Unexpected argument"):
        stack.q("SELECT * FROM ML.PREDICT(MODEL ecommerce_sink.anomaly_detection, ecommerce_sink.cloud_run)")
    with pytest.raises(InvalidQuery, match="no column value"):
        stack.q(
            "SELECT * FROM ML.PREDICT(MODEL ecommerce_sink.anomaly_detection, (SELECT 1.0 AS tax, 2.0 AS shipping))"
        )


def test_export_model(stack: Stack) -> None:
    load_events(stack, 300)
    stack.q(CREATE.replace(", MODEL_REGISTRY='VERTEX_AI'", ""))
    assert stack.versions() == []
    result = stack.wh.query(
        "EXPORT MODEL ecommerce_sink.anomaly_detection OPTIONS(uri='gs://exports/hyp/model')", project=P
    )
    assert result.statement_type == "EXPORT_MODEL"
    exported = stack.artifacts.resolve("gs://exports/hyp/model")
    assert sorted(p.name for p in exported.iterdir()) == ["loopml_model.json", "model.json", "params.npz"]
    predictor = load_predictor(exported)
    assert predictor.predict([{"tax": 4.9, "shipping": 5.99, "value": 1000000.1}], None)[0][
        "nearest_centroid_id"
    ] == [1]
    with pytest.raises(InvalidQuery, match="ALTER MODEL option KMS_KEY_NAME is not supported"):
        stack.q("ALTER MODEL ecommerce_sink.anomaly_detection SET OPTIONS(kms_key_name='k')")
    with pytest.raises(InvalidQuery, match="Unknown option FORMAT"):
        stack.q("EXPORT MODEL ecommerce_sink.anomaly_detection OPTIONS(uri='gs://exports/x', format='TF')")


def test_supervised_models(stack: Stack) -> None:
    rng = np.random.default_rng(11)
    n = 800
    x = rng.normal(size=n)
    color = rng.choice(["red", "green", "blue"], size=n)
    y = 3.0 * x + np.where(color == "red", 5.0, 0.0) + 1.0 + rng.normal(0, 0.1, n)
    label = y > 2.0
    stack.wh.write_table_arrow(
        P,
        "ecommerce_sink",
        "train",
        pa.table({"x": x, "color": color, "y": y, "big": label, "kind": np.where(label, "big", "small")}),
        mode="create",
    )
    stack.q(
        "CREATE MODEL ecommerce_sink.lin OPTIONS(MODEL_TYPE='LINEAR_REG', INPUT_LABEL_COLS=['y']) AS "
        "SELECT x, color, y FROM ecommerce_sink.train"
    )
    ev = stack.q("SELECT * FROM ML.EVALUATE(MODEL ecommerce_sink.lin)").to_pylist()[0]
    assert ev["r2_score"] > 0.99 and set(ev) >= {
        "mean_absolute_error",
        "mean_squared_error",
        "explained_variance",
    }
    pred = stack.q(
        "SELECT predicted_y, x FROM ML.PREDICT(MODEL ecommerce_sink.lin, (SELECT 1.0 AS x, 'red' AS color))"
    ).to_pylist()[0]
    assert pred["predicted_y"] == pytest.approx(9.0, abs=0.1)

    stack.q(
        "CREATE MODEL ecommerce_sink.logit OPTIONS(MODEL_TYPE='LOGISTIC_REG', INPUT_LABEL_COLS=['big'], "
        "DATA_SPLIT_METHOD='RANDOM', DATA_SPLIT_EVAL_FRACTION=0.25) AS SELECT x, color, big FROM ecommerce_sink.train"
    )
    out = stack.q("SELECT * FROM ML.PREDICT(MODEL ecommerce_sink.logit, (SELECT 2.0 AS x, 'blue' AS color))")
    row = out.to_pylist()[0]
    assert out.column_names[:2] == ["predicted_big", "predicted_big_probs"]
    assert row["predicted_big"] is True
    assert [p["label"] for p in row["predicted_big_probs"]] == [False, True]
    assert sum(p["prob"] for p in row["predicted_big_probs"]) == pytest.approx(1.0)
    strict = stack.q(
        "SELECT predicted_big FROM ML.PREDICT(MODEL ecommerce_sink.logit, "
        "(SELECT 2.0 AS x, 'blue' AS color), STRUCT(1.0 AS threshold))"
    )
    assert strict.to_pylist() == [{"predicted_big": False}]
    ev = stack.q(
        "SELECT * FROM ML.EVALUATE(MODEL ecommerce_sink.logit, (SELECT x, color, big FROM ecommerce_sink.train))"
    )
    assert ev.to_pylist()[0]["accuracy"] > 0.9 and "roc_auc" in ev.column_names

    for mtype, label_col in (("BOOSTED_TREE_CLASSIFIER", "kind"), ("BOOSTED_TREE_REGRESSOR", "y")):
        stack.q(
            f"CREATE MODEL ecommerce_sink.b_{label_col} OPTIONS(MODEL_TYPE='{mtype}', "
            f"INPUT_LABEL_COLS=['{label_col}'], MAX_ITERATIONS=30) AS SELECT x, color, {label_col} FROM ecommerce_sink.train"
        )
        info = stack.q(f"SELECT * FROM ML.TRAINING_INFO(MODEL ecommerce_sink.b_{label_col})").to_pylist()
        assert 1 <= len(info) <= 30 and info[0]["learning_rate"] == pytest.approx(0.3)
    row = stack.q(
        "SELECT predicted_kind, predicted_kind_probs FROM ML.PREDICT(MODEL ecommerce_sink.b_kind, "
        "(SELECT 2.0 AS x, 'blue' AS color))"
    ).to_pylist()[0]
    assert row["predicted_kind"] == "big"
    entry = next(e for e in stack.sqlml.catalog.list(P, "ecommerce_sink") if e.path.model == "b_kind")
    assert (entry.artifact_dir / "xgboost_model.json").is_file()
    served = load_predictor(entry.artifact_dir).predict([{"x": 2.0, "color": "blue"}], None)[0]
    assert served["predicted_kind"] == ["big"] and served["kind_values"] == ["big", "small"]
    with pytest.raises(
        InvalidQuery, match="Label column kind has type STRING; a regressor needs a numeric label"
    ):
        stack.q(
            "CREATE MODEL ecommerce_sink.bad OPTIONS(MODEL_TYPE='LINEAR_REG', INPUT_LABEL_COLS=['kind']) AS "
            "SELECT x, kind FROM ecommerce_sink.train"
        )
    with pytest.raises(InvalidQuery, match="INPUT_LABEL_COLS is not in the training query"):
        stack.q(
            "CREATE MODEL ecommerce_sink.bad OPTIONS(MODEL_TYPE='LINEAR_REG') AS SELECT x FROM ecommerce_sink.train"
        )


def test_bigquery_model_resources(stack: Stack) -> None:
    from google.cloud import bigquery

    load_events(stack, 400)
    stack.q(CREATE)
    resource = stack.sqlml.get_model_resource(P, "ecommerce_sink", "anomaly_detection")
    model = bigquery.Model.from_api_repr(resource)
    assert model.reference is not None
    assert model.reference.path == f"/projects/{P}/datasets/ecommerce_sink/models/anomaly_detection"
    assert model.model_type == "KMEANS" and model.location == "europe-west1" and model.created is not None
    assert [c.name for c in model.feature_columns] == ["tax", "shipping", "value"]
    assert [c.name for c in model.label_columns] == ["CENTROID_ID", "NEAREST_CENTROIDS_DISTANCE"]
    run = model.training_runs[0]
    assert run["trainingOptions"]["numClusters"] == 2 and run["vertexAiModelId"] == "anomaly_detection"
    clusters = run["evaluationMetrics"]["clusteringMetrics"]["clusters"]
    assert clusters[0]["centroidId"] == "1" and clusters[0]["featureValues"][2]["numericalValue"] > 1000
    assert [
        m["modelReference"]["modelId"] for m in stack.sqlml.list_model_resources(P, "ecommerce_sink")
    ] == ["anomaly_detection"]
    with pytest.raises(NotFound):
        stack.sqlml.get_model_resource(P, "ecommerce_sink", "nope")
    with pytest.raises(NotFound):
        stack.sqlml.list_model_resources(P, "no_dataset")
    stack.sqlml.delete_model(P, "ecommerce_sink", "anomaly_detection")
    assert stack.sqlml.list_model_resources(P, "ecommerce_sink") == [] and stack.versions() == []


def test_alter_model_registers_an_existing_model(stack: Stack) -> None:
    load_events(stack, 300)
    stack.q(CREATE.replace(", MODEL_REGISTRY='VERTEX_AI'", ""))
    assert stack.versions() == []
    path = stack.sqlml.catalog.list(P, "ecommerce_sink")[0].path
    # every check runs before anything changes
    for bad, match in [
        ("vertex_ai_model_id='Bad Id'", "Invalid Vertex AI model id 'Bad Id'"),
        ("vertex_ai_model_version_aliases=['champion']", "set VERTEX_AI_MODEL_ID to register"),
        (
            "vertex_ai_model_id='anomaly_detection', vertex_ai_model_version_aliases=['1x']",
            "Invalid alias '1x'",
        ),
        ("labels=[('Team', 'ml')]", "invalid label key 'Team'"),
        ("deploy_model=TRUE", "option DEPLOY_MODEL is not supported"),
        ("num_clusters=3", "Unknown or unsupported ALTER MODEL option NUM_CLUSTERS"),
        ("expiration_timestamp=TIMESTAMP 'soon'", "invalid timestamp 'soon'"),
    ]:
        with pytest.raises(InvalidQuery, match=match):
            stack.q(f"ALTER MODEL ecommerce_sink.anomaly_detection SET OPTIONS({bad})")
    entry = stack.sqlml.catalog.get(path)
    assert entry.registry is None and "labels" not in entry.record and stack.versions() == []

    result = stack.wh.query(
        "ALTER MODEL ecommerce_sink.anomaly_detection SET OPTIONS(vertex_ai_model_id='anomaly_detection', "
        "vertex_ai_model_version_aliases=['champion'], description='registered later', "
        "labels=[('team', 'ml'), STRUCT('stage', 'dev')], expiration_timestamp=TIMESTAMP '2031-01-02 00:00:00 UTC')",
        project=P,
    )
    assert result.statement_type == "ALTER_MODEL"
    assert stack.versions() == ["1"]
    version = stack.registry.get_model(P, L, "anomaly_detection")
    assert set(version["versionAliases"]) == {"default", "champion"}
    assert version["description"] == "registered later" and version["labels"]["team"] == "ml"
    assert version["modelSourceInfo"]["sourceType"] == "BQML"
    resource = stack.sqlml.get_model_resource(P, "ecommerce_sink", "anomaly_detection")
    assert resource["trainingRuns"][0]["vertexAiModelId"] == "anomaly_detection"
    assert resource["labels"] == {"team": "ml", "stage": "dev"}
    assert resource["description"] == "registered later"
    expires = dt.datetime(2031, 1, 2, tzinfo=dt.UTC)
    assert resource["expirationTime"] == str(int(expires.timestamp() * 1000))
    # the registered version serves the SQL model's files
    assert stack.registry.get_model(P, L, "anomaly_detection@1")["artifactUri"].endswith("artifact")

    # one Vertex model id per SQL model; the same id again only adds aliases
    with pytest.raises(InvalidQuery, match="already registered as Vertex AI model anomaly_detection"):
        stack.q("ALTER MODEL ecommerce_sink.anomaly_detection SET OPTIONS(vertex_ai_model_id='other')")
    stack.q(
        "ALTER MODEL ecommerce_sink.anomaly_detection SET OPTIONS(vertex_ai_model_version_aliases=['prod'])"
    )
    assert set(stack.registry.get_model(P, L, "anomaly_detection")["versionAliases"]) == {
        "default",
        "champion",
        "prod",
    }
    # ALTER replaces labels; NULL description clears it
    stack.q(
        "ALTER MODEL ecommerce_sink.anomaly_detection SET OPTIONS(labels=[('team', 'data')], description=NULL)"
    )
    resource = stack.sqlml.get_model_resource(P, "ecommerce_sink", "anomaly_detection")
    assert resource["labels"] == {"team": "data"} and "description" not in resource
    # ... and the registry version follows
    version = stack.registry.get_model(P, L, "anomaly_detection@1")
    assert version["labels"] == {"team": "data", "loopml-source": "bigquery-ml"}
    assert not version.get("description")

    assert stack.q("ALTER MODEL IF EXISTS ecommerce_sink.nope SET OPTIONS(description='x')").num_rows == 0
    with pytest.raises(NotFound, match=r"Model hyp-proj:ecommerce_sink\.nope"):
        stack.q("ALTER MODEL ecommerce_sink.nope SET OPTIONS(description='x')")
    # DROP MODEL removes the registration made by ALTER
    stack.q("DROP MODEL ecommerce_sink.anomaly_detection")
    assert stack.versions() == []


def test_models_patch_through_the_service(stack: Stack) -> None:
    from loopml.errors import PreconditionFailed

    load_events(stack, 300)
    stack.q(CREATE.replace(", MODEL_REGISTRY='VERTEX_AI'", ""))
    first = stack.sqlml.get_model_resource(P, "ecommerce_sink", "anomaly_detection")
    patched = stack.sqlml.patch_model_resource(
        P,
        "ecommerce_sink",
        "anomaly_detection",
        {"description": "d", "labels": {"a": "1", "b": "2"}, "friendlyName": "Anomalies"},
        if_match=first["etag"],
    )
    assert (patched["description"], patched["labels"], patched["friendlyName"]) == (
        "d",
        {"a": "1", "b": "2"},
        "Anomalies",
    )
    assert patched["etag"] != first["etag"] and int(patched["lastModifiedTime"]) >= int(first["creationTime"])
    with pytest.raises(PreconditionFailed, match="has changed"):
        stack.sqlml.patch_model_resource(
            P, "ecommerce_sink", "anomaly_detection", {"description": "e"}, if_match=first["etag"]
        )
    merged = stack.sqlml.patch_model_resource(
        P, "ecommerce_sink", "anomaly_detection", {"labels": {"a": None}}
    )
    assert merged["labels"] == {"b": "2"} and merged["description"] == "d"
    # a body that changes nothing keeps the etag and lastModifiedTime
    same = stack.sqlml.patch_model_resource(
        P, "ecommerce_sink", "anomaly_detection", {"etag": merged["etag"], "modelType": "KMEANS"}
    )
    assert (same["etag"], same["lastModifiedTime"]) == (merged["etag"], merged["lastModifiedTime"])
    from loopml.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="Unknown or read-only field 'bogus'"):
        stack.sqlml.patch_model_resource(P, "ecommerce_sink", "anomaly_detection", {"bogus": 1})
    with pytest.raises(InvalidArgument, match="encryptionConfiguration"):
        stack.sqlml.patch_model_resource(
            P, "ecommerce_sink", "anomaly_detection", {"encryptionConfiguration": {}}
        )
    assert stack.versions() == []
    registered = stack.sqlml.patch_model_resource(
        P, "ecommerce_sink", "anomaly_detection", {"trainingRuns": [{"vertexAiModelId": "patched_model"}]}
    )
    assert registered["trainingRuns"][0]["vertexAiModelId"] == "patched_model"
    assert stack.versions("patched_model") == ["1"]
    assert stack.registry.get_model(P, L, "patched_model")["description"] == "d"
    # the resource sent back as read (its trainingRuns name the registered id), or the same values
    # again by ALTER MODEL, changes nothing: etag and lastModifiedTime stay
    again = stack.sqlml.patch_model_resource(P, "ecommerce_sink", "anomaly_detection", registered)
    assert (again["etag"], again["lastModifiedTime"]) == (registered["etag"], registered["lastModifiedTime"])
    stack.q(
        "ALTER MODEL ecommerce_sink.anomaly_detection SET OPTIONS(vertex_ai_model_id='patched_model', "
        "description='d', labels=[('b', '2')], vertex_ai_model_version_aliases=['default'])"
    )
    again = stack.sqlml.get_model_resource(P, "ecommerce_sink", "anomaly_detection")
    assert (again["etag"], again["lastModifiedTime"]) == (registered["etag"], registered["lastModifiedTime"])
    # ... while a new alias is a change
    stack.q(
        "ALTER MODEL ecommerce_sink.anomaly_detection SET OPTIONS(vertex_ai_model_version_aliases=['prod'])"
    )
    assert stack.registry.get_model(P, L, "patched_model@prod")["versionId"] == "1"
    assert stack.sqlml.get_model_resource(P, "ecommerce_sink", "anomaly_detection")["etag"] != again["etag"]
    with pytest.raises(NotFound):
        stack.sqlml.patch_model_resource(P, "ecommerce_sink", "nope", {"description": "x"})


def test_alter_model_failing_late_changes_nothing(stack: Stack) -> None:
    """A step that fails after others succeeded undoes them: catalog record and registry version."""
    from loopml.sqlml.statements import ModelPath

    load_events(stack, 300)
    stack.q(CREATE)  # registered: anomaly_detection@1
    path = ModelPath(P, "ecommerce_sink", "anomaly_detection")
    entry = stack.sqlml.catalog.get(path)
    record = dict(entry.record)

    def registry_state() -> tuple[Any, Any, list[str]]:
        v = stack.registry.get_model(P, L, "anomaly_detection@1")
        return v.get("description"), v.get("labels"), sorted(v.get("versionAliases") or [])

    before = registry_state()
    alter = (
        "ALTER MODEL ecommerce_sink.anomaly_detection SET OPTIONS(description='late', "
        "labels=[('team', 'ml')], vertex_ai_model_version_aliases=['prod'])"
    )
    # 1. the catalog write fails for real: its temporary file's name is taken by a directory
    blocker = entry.directory / ".entry.json.tmp"
    blocker.mkdir()
    with pytest.raises(IsADirectoryError):
        stack.q(alter)
    assert registry_state() == before  # neither description, labels nor the alias reached it
    assert stack.sqlml.catalog.get(path).record == record
    blocker.rmdir()

    # 2. the registry step fails after the record was written: the record is put back
    resource = stack.sqlml.get_model_resource(P, "ecommerce_sink", "anomaly_detection")
    stack.registry.delete_model(P, L, "anomaly_detection")  # through the Vertex API, behind BQML's back
    with pytest.raises(NotFound):
        stack.q("ALTER MODEL ecommerce_sink.anomaly_detection SET OPTIONS(description='late')")
    assert stack.sqlml.catalog.get(path).record == record
    assert stack.sqlml.get_model_resource(P, "ecommerce_sink", "anomaly_detection") == resource

    # 3. a new registration whose record cannot be written is removed again
    stack.q(CREATE.replace(", MODEL_REGISTRY='VERTEX_AI'", ""))
    entry = stack.sqlml.catalog.get(path)
    blocker = entry.directory / ".entry.json.tmp"
    blocker.mkdir()
    with pytest.raises(IsADirectoryError):
        stack.q("ALTER MODEL ecommerce_sink.anomaly_detection SET OPTIONS(vertex_ai_model_id='late_model')")
    assert stack.versions("late_model") == [] and stack.sqlml.catalog.get(path).registry is None
    blocker.rmdir()
    stack.q(alter.replace("description='late'", "vertex_ai_model_id='late_model', description='late'"))
    assert stack.versions("late_model") == ["1"]
