"""Workload 1 (hack-your-pipe "Activate") end to end, with Google's own clients.

Generator → `/ingest/hyp-pubsub-topic` → (a) a BigQuery subscription into the workshop's nested,
day-partitioned `ecommerce_sink.cloud_run`, (b) a BigQuery subscription into
`pubsub_direct(data STRING)`, (c) a push subscription to a Flask processing service under
gunicorn that inserts with `insert_rows_json`; then BigQuery ML k-means registered to the Vertex
registry, ML.PREDICT / ML.DETECT_ANOMALIES, deployment through the Vertex SDK, and the streaming
inference subscription filling `cloud_run_anomaly` with one row per purchase.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform, bigquery

from loopml.ingest.synth import events, is_anomaly
from tests.conftest import free_port

pytestmark = pytest.mark.slow

P = "hyp-project"
L = "europe-west1"
TOPIC = "hyp-pubsub-topic"
NOISE = "0.02"  # small noise on tax/shipping/value so a model of normal purchases has spread

ITEM = [
    bigquery.SchemaField("item_id", "INTEGER"),
    bigquery.SchemaField("item_name", "STRING"),
    bigquery.SchemaField("item_category", "STRING"),
    bigquery.SchemaField("item_brand", "STRING"),
    bigquery.SchemaField("item_variant", "STRING"),
    bigquery.SchemaField("price", "FLOAT"),
    bigquery.SchemaField("quantity", "INTEGER"),
]
CLOUD_RUN_SCHEMA = [
    bigquery.SchemaField("event_datetime", "TIMESTAMP"),
    bigquery.SchemaField("event", "STRING", mode="REQUIRED"),
    bigquery.SchemaField("user_id", "STRING", mode="REQUIRED"),
    bigquery.SchemaField("client_id", "STRING"),
    bigquery.SchemaField("page", "STRING"),
    bigquery.SchemaField("page_previous", "STRING"),
    bigquery.SchemaField("weekday", "STRING"),
    bigquery.SchemaField(
        "ecommerce",
        "RECORD",
        fields=[
            bigquery.SchemaField("items", "RECORD", mode="REPEATED", fields=ITEM),
            bigquery.SchemaField(
                "purchase",
                "RECORD",
                fields=[
                    bigquery.SchemaField("items", "RECORD", mode="REPEATED", fields=ITEM),
                    bigquery.SchemaField("tax", "FLOAT"),
                    bigquery.SchemaField("shipping", "FLOAT"),
                    bigquery.SchemaField("value", "FLOAT"),
                    bigquery.SchemaField("coupon", "STRING"),
                    bigquery.SchemaField("affiliation", "STRING"),
                    bigquery.SchemaField("currency", "STRING"),
                    bigquery.SchemaField("transaction_id", "STRING"),
                ],
            ),
        ],
    ),
]
ANOMALY_SCHEMA = [
    bigquery.SchemaField(name, kind)
    for name, kind in (("tax", "FLOAT"), ("shipping", "FLOAT"), ("value", "FLOAT"), ("anomaly", "BOOLEAN"))
]

PROCESSING_SERVICE = textwrap.dedent(
    """
    import base64, datetime, json, os

    from flask import Flask, request
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    app = Flask(__name__)
    project = os.environ["GCP_PROJECT"]
    client = bigquery.Client(project=project, location="europe-west1", credentials=AnonymousCredentials())
    table = f"{project}.ecommerce_sink.cloud_run_push"

    @app.route("/", methods=["POST"])
    def index():
        envelope = request.get_json()
        if not envelope or "message" not in envelope:
            return "Bad Request: invalid Pub/Sub message format", 400
        row = json.loads(base64.b64decode(envelope["message"]["data"]).decode("utf-8"))
        when = datetime.datetime.strptime(row["event_datetime"], "%Y-%m-%d %H:%M:%S")
        row["weekday"] = when.strftime("%A")
        errors = client.insert_rows_json(table, [row])
        if errors:
            return f"Bad Request: {errors}", 400
        return ("", 204)
    """
)


@pytest.fixture(scope="module")
def hyp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from tests.conftest import ServerProcess

    home = tmp_path_factory.mktemp("w1-home")
    srv = ServerProcess(home=home, port=free_port(), env={"LOOPML_DEFAULT_PROJECT": P})
    srv.start()
    svc_dir = tmp_path_factory.mktemp("w1-service")
    (svc_dir / "main.py").write_text(PROCESSING_SERVICE)
    port = free_port()
    env = dict(os.environ, GCP_PROJECT=P, BIGQUERY_EMULATOR_HOST=srv.url, NO_GCE_CHECK="true")
    gunicorn = Path(sys.executable).parent / "gunicorn"
    log = open(svc_dir / "gunicorn.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(gunicorn), "-w", "1", "--threads", "8", "-b", f"127.0.0.1:{port}", "main:app"],
        cwd=svc_dir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    http = httpx.Client(base_url=srv.url, timeout=30)
    try:
        yield {"server": srv, "http": http, "push_url": f"http://127.0.0.1:{port}/"}
    finally:
        http.close()
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        srv.stop()


def bq(url: str) -> bigquery.Client:
    return bigquery.Client(
        project=P,
        location=L,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=url),
    )


def count(client: bigquery.Client, table: str, where: str = "TRUE") -> int:
    rows = list(
        client.query(f"SELECT COUNT(*) AS n FROM `{P}.ecommerce_sink.{table}` WHERE {where}").result()
    )
    return int(rows[0]["n"])


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 400.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(1.0)


def synth(url: str, n: int, seed: int) -> dict[str, Any]:
    import json

    argv = [sys.executable, "-m", "loopml", "synth", "ecommerce", "--endpoint", f"{url}/ingest/{TOPIC}"]
    argv += [
        "--events",
        str(n),
        "--rate",
        "0",
        "--batch",
        "50",
        "--seed",
        str(seed),
        "--noise",
        NOISE,
        "--json",
    ]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=300, env=dict(os.environ, LOOPML_URL=url)
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def expected(n: int, seed: int) -> list[dict[str, Any]]:
    return list(islice(events(seed, noise=float(NOISE)), n))


def test_workload1_end_to_end(hyp: dict[str, Any]) -> None:
    url = hyp["server"].url
    client = bq(url)
    client.create_dataset(bigquery.Dataset(f"{P}.ecommerce_sink"))
    cloud_run = bigquery.Table(f"{P}.ecommerce_sink.cloud_run", schema=CLOUD_RUN_SCHEMA)
    cloud_run.time_partitioning = bigquery.TimePartitioning(type_="DAY", field="event_datetime")
    client.create_table(cloud_run)
    push_table = bigquery.Table(f"{P}.ecommerce_sink.cloud_run_push", schema=CLOUD_RUN_SCHEMA)
    client.create_table(push_table)
    client.create_table(
        bigquery.Table(f"{P}.ecommerce_sink.pubsub_direct", [bigquery.SchemaField("data", "STRING")])
    )
    client.create_table(bigquery.Table(f"{P}.ecommerce_sink.cloud_run_anomaly", schema=ANOMALY_SCHEMA))

    http = hyp["http"]
    assert http.put(f"/v1/projects/{P}/topics/{TOPIC}").status_code == 200
    topic = f"projects/{P}/topics/{TOPIC}"
    subs = {
        "hyp_subscription_bq": {
            "bigqueryConfig": {
                "table": f"{P}.ecommerce_sink.cloud_run",
                "useTableSchema": True,
                "dropUnknownFields": True,
            }
        },
        "hyp_subscription_direct": {"bigqueryConfig": {"table": f"{P}:ecommerce_sink.pubsub_direct"}},
        "hyp_subscription_cloud_run": {
            "ackDeadlineSeconds": 20,
            "retryPolicy": {"minimumBackoff": "10s", "maximumBackoff": "60s"},
            "pushConfig": {"pushEndpoint": hyp["push_url"]},
        },
    }
    for name, body in subs.items():
        r = http.put(f"/v1/projects/{P}/subscriptions/{name}", json={"topic": topic, **body})
        assert r.status_code == 200, r.text

    # -- ingest: 5,000 events through the generator -------------------------------------------
    totals = synth(url, 5000, seed=11)
    assert totals["acknowledged"] == 5000 and totals["failed"] == 0
    sent = expected(5000, 11)
    purchases = [e for e in sent if e["event"] == "purchase"]
    anomalies = [e for e in purchases if is_anomaly(e)]
    assert anomalies and len(anomalies) < len(purchases)
    wait_for("cloud_run", lambda: count(client, "cloud_run") == 5000)
    wait_for("pubsub_direct", lambda: count(client, "pubsub_direct") == 5000)
    wait_for("push → Flask → cloud_run_push", lambda: count(client, "cloud_run_push") == 5000)
    assert count(client, "cloud_run", "event = 'purchase'") == len(purchases)
    assert count(client, "cloud_run_push", "weekday = 'Monday'") == 5000
    row = next(
        iter(
            client.query(
                f"SELECT ecommerce.purchase.items[OFFSET(0)].item_id AS item, event_datetime "
                f"FROM `{P}.ecommerce_sink.cloud_run` WHERE event = 'purchase' LIMIT 1"
            ).result()
        )
    )
    assert row["item"] == 67890 and row["event_datetime"].isoformat().startswith("2020-11-16T21:1")
    for name in subs:
        status = http.get(f"/v1/projects/{P}/subscriptions/{name}").json()
        assert status["loopmlStatus"]["deadLetters"] == 0, status

    # -- BigQuery ML: the workshop's model, registered to the Vertex registry -----------------
    features = (
        "SELECT ecommerce.purchase.tax AS tax, ecommerce.purchase.shipping AS shipping, "
        f"ecommerce.purchase.value AS value FROM `{P}.ecommerce_sink.cloud_run` WHERE event='purchase'"
    )
    client.query(
        f"CREATE OR REPLACE MODEL `{P}.ecommerce_sink.anomaly_detection` OPTIONS(MODEL_TYPE='KMEANS', "
        f"NUM_CLUSTERS=2, MODEL_REGISTRY='VERTEX_AI') AS {features}"
    ).result()
    predicted = list(
        client.query(
            f"SELECT value, CENTROID_ID FROM ML.PREDICT(MODEL `{P}.ecommerce_sink.anomaly_detection`, ({features}))"
        ).result()
    )
    assert len(predicted) == len(purchases)
    assert all((r["CENTROID_ID"] == 1) == (r["value"] > 1000) for r in predicted)
    # ML.DETECT_ANOMALIES: a model of normal purchases flags every anomalous one
    client.query(
        f"CREATE OR REPLACE MODEL `{P}.ecommerce_sink.normal_purchases` OPTIONS(MODEL_TYPE='KMEANS', "
        f"NUM_CLUSTERS=2) AS {features} AND ecommerce.purchase.value < 1000"
    ).result()
    flagged = list(
        client.query(
            f"SELECT value, is_anomaly FROM ML.DETECT_ANOMALIES(MODEL `{P}.ecommerce_sink.normal_purchases`, "
            f"STRUCT(0.02 AS contamination), ({features}))"
        ).result()
    )
    assert all(r["is_anomaly"] for r in flagged if r["value"] > 1000)
    normal_flags = [r["is_anomaly"] for r in flagged if r["value"] < 1000]
    assert sum(normal_flags) <= 0.1 * len(normal_flags)

    # -- deploy through the Vertex SDK and predict --------------------------------------------
    aiplatform.init(
        project=P, location=L, api_endpoint=url, api_transport="rest", credentials=AnonymousCredentials()
    )
    model = aiplatform.Model("anomaly_detection")
    endpoint = aiplatform.Endpoint.create(display_name="my_hyp_endpoint")
    endpoint.deploy(model=model, min_replica_count=1, max_replica_count=1)
    normal = endpoint.predict(instances=[{"tax": 4.9, "shipping": 5.99, "value": 35.43}])
    anomalous = endpoint.predict(instances=[{"tax": 4.9, "shipping": 5.99, "value": 1000000.1}])
    assert normal.predictions[0]["nearest_centroid_id"][0] == 2
    assert anomalous.predictions[0]["nearest_centroid_id"][0] == 1

    # -- streaming inference without user code -------------------------------------------------
    r = http.put(
        f"/v1/projects/{P}/subscriptions/hyp_subscription_anomaly",
        json={
            "topic": topic,
            "loopmlInferenceConfig": {
                "endpoint": endpoint.resource_name,
                "filter": 'event = "purchase"',
                "instanceFields": {
                    "tax": "ecommerce.purchase.tax",
                    "shipping": "ecommerce.purchase.shipping",
                    "value": "ecommerce.purchase.value",
                },
                "outputTable": f"{P}.ecommerce_sink.cloud_run_anomaly",
                "outputFields": {"anomaly": "prediction.nearest_centroid_id[0] == 1"},
            },
        },
    )
    assert r.status_code == 200, r.text
    assert synth(url, 1000, seed=12)["acknowledged"] == 1000
    second = [e for e in expected(1000, 12) if e["event"] == "purchase"]
    wait_for("cloud_run_anomaly", lambda: count(client, "cloud_run_anomaly") == len(second))
    scored = list(client.query(f"SELECT value, anomaly FROM `{P}.ecommerce_sink.cloud_run_anomaly`").result())
    assert sum(r["anomaly"] for r in scored) == sum(is_anomaly(e) for e in second) > 0
    assert all(r["anomaly"] == (r["value"] > 1000) for r in scored)
    status = http.get(f"/v1/projects/{P}/subscriptions/hyp_subscription_anomaly").json()
    assert status["loopmlStatus"]["deadLetters"] == 0 and status["state"] == "ACTIVE"
    endpoint.undeploy_all()
