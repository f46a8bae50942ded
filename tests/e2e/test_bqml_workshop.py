"""Workload 1 BigQuery ML parity through Google's own, unmodified clients against `loopml server`.

google-cloud-bigquery: insertAll of nested events, CREATE OR REPLACE MODEL ... KMEANS with
MODEL_REGISTRY='VERTEX_AI' through `client.query(...).result()`, ML.PREDICT / CTAS /
ML.DETECT_ANOMALIES; google-cloud-aiplatform: the model as `models/anomaly_detection`,
`Endpoint.create` + `endpoint.deploy(aiplatform.Model("anomaly_detection"))` and predictions
whose `nearest_centroid_id[0]` is 1 for the anomaly and 2 for a normal purchase.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.api_core.exceptions import BadRequest, NotFound
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform, bigquery

from loopml.ingest.synth import events, is_anomaly

DATA = Path(__file__).resolve().parent.parent / "data" / "bigquery"
P, L = "hyp-bqml", "europe-west1"
DS = f"{P}.ecommerce_sink"
FEATURES = (
    "SELECT ecommerce.purchase.tax AS tax, ecommerce.purchase.shipping AS shipping, "
    f"ecommerce.purchase.value AS value FROM `{DS}.cloud_run` WHERE event='purchase'"
)
# to_dataframe() warns that pandas-gbq is the preferred path; the workshop code uses it as is
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
CREATE = (
    f"CREATE OR REPLACE MODEL `{DS}.anomaly_detection` "
    f"OPTIONS(MODEL_TYPE='KMEANS', NUM_CLUSTERS=2, MODEL_REGISTRY='VERTEX_AI') AS {FEATURES}"
)


@pytest.fixture(scope="module")
def bq(server: Any) -> Iterator[bigquery.Client]:
    os.environ["NO_GCE_CHECK"] = "true"
    client = bigquery.Client(
        project=P, credentials=AnonymousCredentials(), client_options={"api_endpoint": server.url}
    )
    aiplatform.init(
        project=P,
        location=L,
        api_endpoint=server.url,
        api_transport="rest",
        credentials=AnonymousCredentials(),
    )
    yield client
    client.close()


@pytest.fixture(scope="module")
def purchases(bq: bigquery.Client) -> list[dict[str, Any]]:
    dataset = bigquery.Dataset(DS)
    dataset.location = L
    bq.create_dataset(dataset)
    table = bigquery.Table(
        f"{DS}.cloud_run",
        schema=[
            bigquery.SchemaField.from_api_repr(f)
            for f in json.loads((DATA / "cloud_run_schema.json").read_text())
        ],
    )
    table.time_partitioning = bigquery.TimePartitioning(
        type_=bigquery.TimePartitioningType.DAY, field="event_datetime"
    )
    bq.create_table(table)
    rows = list(itertools.islice(events(21), 1200))
    for start in range(0, len(rows), 400):
        assert bq.insert_rows_json(f"{DS}.cloud_run", rows[start : start + 400]) == []
    return [r for r in rows if r["event"] == "purchase"]


def test_workshop_bqml_through_google_clients(bq: bigquery.Client, purchases: list[dict[str, Any]]) -> None:
    anomalies = sum(map(is_anomaly, purchases))
    assert 0.1 < anomalies / len(purchases) < 0.25  # ~16 % of purchases, as in the workshop
    job = bq.query(CREATE)
    assert list(job.result()) == []
    assert job.statement_type == "CREATE_MODEL" and job.ddl_operation_performed == "CREATE"
    assert job._properties["statistics"]["query"]["ddlTargetTable"] == {
        "projectId": P,
        "datasetId": "ecommerce_sink",
        "tableId": "anomaly_detection",
    }

    predicted = list(
        bq.query(
            f"SELECT value, CENTROID_ID, NEAREST_CENTROIDS_DISTANCE FROM ML.PREDICT(MODEL `{DS}.anomaly_detection`, "
            f"({FEATURES}))"
        ).result()
    )
    assert len(predicted) == len(purchases)
    assert all((r["CENTROID_ID"] == 1) == (r["value"] > 1000) for r in predicted)
    nearest = predicted[0]["NEAREST_CENTROIDS_DISTANCE"]
    assert [d["CENTROID_ID"] for d in nearest] == [
        predicted[0]["CENTROID_ID"],
        3 - predicted[0]["CENTROID_ID"],
    ]

    bq.query(
        "CREATE TABLE ecommerce_sink.anomaly_data AS SELECT (CASE WHEN CENTROID_ID = 1 THEN TRUE ELSE FALSE END) "
        f"AS anomaly, tax, shipping, value FROM ML.PREDICT(MODEL ecommerce_sink.anomaly_detection, ({FEATURES}))",
        job_config=bigquery.QueryJobConfig(default_dataset=DS),
    ).result()
    labelled = bq.list_rows(f"{DS}.anomaly_data").to_dataframe(create_bqstorage_client=False)
    assert int(labelled["anomaly"].sum()) == anomalies and len(labelled) == len(purchases)

    # A model of normal purchases (user_id one-hot gives them spread) flags every anomalous one.
    bq.query(
        f"CREATE MODEL `{DS}.normal_purchases` OPTIONS(MODEL_TYPE='KMEANS', NUM_CLUSTERS=2) AS "
        f"SELECT ecommerce.purchase.tax AS tax, ecommerce.purchase.shipping AS shipping, "
        f"ecommerce.purchase.value AS value, user_id FROM `{DS}.cloud_run` "
        "WHERE event='purchase' AND ecommerce.purchase.value < 1000"
    ).result()
    flagged = list(
        bq.query(
            f"SELECT is_anomaly, normalized_distance, centroid_id, value FROM ML.DETECT_ANOMALIES("
            f"MODEL `{DS}.normal_purchases`, STRUCT(0.02 AS contamination), (SELECT ecommerce.purchase.tax AS tax, "
            "ecommerce.purchase.shipping AS shipping, ecommerce.purchase.value AS value, user_id "
            f"FROM `{DS}.cloud_run` WHERE event='purchase'))"
        ).result()
    )
    assert len(flagged) == len(purchases)
    assert all(r["is_anomaly"] == (r["value"] > 1000) for r in flagged)

    # The registered model, through the Vertex SDK.
    model = aiplatform.Model("anomaly_detection")
    assert model.resource_name == f"projects/{P}/locations/{L}/models/anomaly_detection"
    assert model.version_id == "1" and "default" in model.version_aliases
    endpoint = aiplatform.Endpoint.create(display_name="my_hyp_endpoint")
    endpoint.deploy(model=model, min_replica_count=1, max_replica_count=1)
    normal = endpoint.predict(instances=[{"tax": 4.9, "shipping": 5.99, "value": 35.43}])
    anomalous = endpoint.predict(instances=[{"tax": 4.9, "shipping": 5.99, "value": 1000000.1}])
    assert normal.predictions[0]["nearest_centroid_id"][0] == 2
    assert anomalous.predictions[0]["nearest_centroid_id"][0] == 1
    assert list(anomalous.predictions[0]["centroid_ids"]) == [1, 2]
    assert len(anomalous.predictions[0]["centroid_distances"]) == 2
    # Same ids as ML.PREDICT for the same row.
    row = next(
        iter(
            bq.query(
                f"SELECT CENTROID_ID, NEAREST_CENTROIDS_DISTANCE FROM ML.PREDICT(MODEL `{DS}.anomaly_detection`, "
                "(SELECT 4.9 AS tax, 5.99 AS shipping, 1000000.1 AS value))"
            ).result()
        )
    )
    assert row["CENTROID_ID"] == 1
    assert row["NEAREST_CENTROIDS_DISTANCE"][1]["DISTANCE"] == pytest.approx(
        anomalous.predictions[0]["centroid_distances"][1]
    )

    with pytest.raises(BadRequest, match="missing value"):
        endpoint.predict(instances=[{"tax": 4.9, "shipping": 5.99}])

    # DROP MODEL is refused while the registry version is deployed; after undeploying it goes.
    with pytest.raises(BadRequest, match="deployed"):
        bq.query(f"DROP MODEL `{DS}.anomaly_detection`").result()
    endpoint.undeploy_all()
    bq.query(f"DROP MODEL `{DS}.anomaly_detection`").result()
    with pytest.raises(NotFound):
        aiplatform.Model("anomaly_detection")
    endpoint.delete()


def test_bad_create_model_is_400_and_creates_nothing(
    bq: bigquery.Client, purchases: list[dict[str, Any]]
) -> None:
    bad = [
        (
            CREATE.replace("NUM_CLUSTERS=2", "NUM_CLUSTERS=2, KMS_KEY_NAME='projects/p/keys/k'"),
            "KMS_KEY_NAME",
        ),
        (CREATE.replace("NUM_CLUSTERS=2", "NUM_CLUSTERS=2, SOME_OPTION=1"), "SOME_OPTION"),
        (CREATE.replace("NUM_CLUSTERS=2", "NUM_CLUSTERS='2'"), "NUM_CLUSTERS expects INT64"),
        (
            CREATE.replace("ecommerce.purchase.value AS value", "ecommerce.purchase.items AS value"),
            "Column value has type ARRAY",
        ),
    ]
    for sql, message in bad:
        with pytest.raises(BadRequest, match=message) as info:
            bq.query(sql.replace("anomaly_detection", "bad_model")).result()
        assert info.value.code == 400
    with pytest.raises(NotFound):
        bq.query(f"SELECT * FROM ML.CENTROIDS(MODEL `{DS}.bad_model`)").result()
    with pytest.raises(NotFound):
        aiplatform.Model("bad_model")
    with pytest.raises(BadRequest, match="trained with FLOAT64"):
        bq.query(
            f"CREATE OR REPLACE MODEL `{DS}.typed` OPTIONS(MODEL_TYPE='KMEANS', NUM_CLUSTERS=2) AS {FEATURES}"
        ).result()
        bq.query(
            f"SELECT * FROM ML.PREDICT(MODEL `{DS}.typed`, (SELECT 4.9 AS tax, 5.99 AS shipping, 'x' AS value))"
        ).result()
