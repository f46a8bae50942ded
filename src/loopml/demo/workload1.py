"""Demo step 2: workload 1 (Hack Your Pipe) — events → warehouse → BigQuery ML → endpoint → scores."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import islice
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from loopml.demo.common import LOCATION, PROJECT, TOPIC, Api, DemoFailed, Summary, wait


# -- the workshop's tables (reference/workloads.md, workload 1) --------------------------------
def _f(
    name: str, kind: str, mode: str = "NULLABLE", fields: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "type": kind, "mode": mode}
    if fields:
        out["fields"] = fields
    return out


_ITEM = [
    _f("item_id", "INTEGER"),
    _f("item_name", "STRING"),
    _f("item_category", "STRING"),
    _f("item_brand", "STRING"),
    _f("item_variant", "STRING"),
    _f("price", "FLOAT"),
    _f("quantity", "INTEGER"),
]
CLOUD_RUN_SCHEMA = [
    _f("event_datetime", "TIMESTAMP"),
    _f("event", "STRING", "REQUIRED"),
    _f("user_id", "STRING", "REQUIRED"),
    _f("client_id", "STRING"),
    _f("page", "STRING"),
    _f("page_previous", "STRING"),
    _f("weekday", "STRING"),
    _f(
        "ecommerce",
        "RECORD",
        fields=[
            _f("items", "RECORD", "REPEATED", _ITEM),
            _f(
                "purchase",
                "RECORD",
                fields=[
                    _f("items", "RECORD", "REPEATED", _ITEM),
                    _f("tax", "FLOAT"),
                    _f("shipping", "FLOAT"),
                    _f("value", "FLOAT"),
                    _f("coupon", "STRING"),
                    _f("affiliation", "STRING"),
                    _f("currency", "STRING"),
                    _f("transaction_id", "STRING"),
                ],
            ),
        ],
    ),
]
ANOMALY_SCHEMA = [_f("tax", "FLOAT"), _f("shipping", "FLOAT"), _f("value", "FLOAT"), _f("anomaly", "BOOLEAN")]
FEATURES = (
    "SELECT ecommerce.purchase.tax AS tax, ecommerce.purchase.shipping AS shipping, "
    "ecommerce.purchase.value AS value FROM `{p}.ecommerce_sink.cloud_run` WHERE event = 'purchase'"
)


# -- step 2: workload 1 -------------------------------------------------------------------------
def workload1(api: Api, console: Console, summary: Summary, n_events: int, url: str) -> None:
    from loopml.ingest.synth import events, is_anomaly, send

    console.rule("[bold]2 · workload 1: events → warehouse → BigQuery ML → endpoint → streaming scores")
    bq = f"/bigquery/v2/projects/{PROJECT}"
    api.call(
        "POST",
        f"{bq}/datasets",
        json={"datasetReference": {"projectId": PROJECT, "datasetId": "ecommerce_sink"}},
    )
    for table, schema, partition in (
        ("cloud_run", CLOUD_RUN_SCHEMA, {"type": "DAY", "field": "event_datetime"}),
        ("cloud_run_anomaly", ANOMALY_SCHEMA, None),
    ):
        body: dict[str, Any] = {
            "tableReference": {"projectId": PROJECT, "datasetId": "ecommerce_sink", "tableId": table},
            "schema": {"fields": schema},
        }
        if partition:
            body["timePartitioning"] = partition
        api.call("POST", f"{bq}/datasets/ecommerce_sink/tables", json=body)
    console.print(
        "created dataset ecommerce_sink with the workshop's nested, day-partitioned cloud_run table"
    )

    topic = f"projects/{PROJECT}/topics/{TOPIC}"
    api.call("PUT", f"/v1/{topic}")
    api.call(
        "PUT",
        f"/v1/projects/{PROJECT}/subscriptions/hyp_subscription_bq",
        json={
            "topic": topic,
            "bigqueryConfig": {
                "table": f"{PROJECT}.ecommerce_sink.cloud_run",
                "useTableSchema": True,
                "dropUnknownFields": True,
            },
        },
    )
    console.print(f"created topic {TOPIC} with a BigQuery subscription into cloud_run")

    noise, seed = 0.02, 42
    with _progress(console) as progress:
        task = progress.add_task("ingesting events", total=n_events)
        stats = send(
            f"{url}/ingest/{TOPIC}",
            count=n_events,
            rate=0,
            batch=100,
            seed=seed,
            noise=noise,
            on_progress=lambda k: progress.advance(task, k),
        )
    if stats.failed or stats.acknowledged != n_events:
        raise DemoFailed(f"ingest: {stats.failed} of {n_events} events failed: {stats.errors[:3]}")
    console.print(
        f"ingested {n_events:,} events in {stats.seconds:.1f} s ({stats.events_per_s:,.0f} events/s), each acknowledged once durable"
    )
    sent = list(islice(events(seed, noise=noise), n_events))
    purchases = [e for e in sent if e["event"] == "purchase"]

    def landed() -> int:
        return int(api.query(f"SELECT COUNT(*) AS n FROM `{PROJECT}.ecommerce_sink.cloud_run`")[0]["n"])

    wait("the BigQuery subscription to write every event", lambda: landed() == n_events)
    console.print(f"all {n_events:,} events are rows of cloud_run ({len(purchases)} purchases)")

    features = FEATURES.format(p=PROJECT)
    start = time.perf_counter()
    api.query(
        f"CREATE OR REPLACE MODEL `{PROJECT}.ecommerce_sink.anomaly_detection` "
        f"OPTIONS(MODEL_TYPE='KMEANS', NUM_CLUSTERS=2, MODEL_REGISTRY='VERTEX_AI', "
        f"VERTEX_AI_MODEL_VERSION_ALIASES=['demo']) AS {features}"
    )
    console.print(
        f"CREATE MODEL … KMEANS trained and registered to the model registry in {time.perf_counter() - start:.1f} s"
    )
    centroids = api.query(
        f"SELECT CENTROID_ID AS c, COUNT(*) AS n, ROUND(AVG(value), 2) AS mean_value FROM ML.PREDICT("
        f"MODEL `{PROJECT}.ecommerce_sink.anomaly_detection`, ({features})) GROUP BY 1 ORDER BY 1"
    )
    for row in centroids:
        console.print(
            f"  ML.PREDICT: centroid {row['c']}: {row['n']} purchases, mean value {row['mean_value']}"
        )
    if len(centroids) != 2 or int(centroids[0]["n"]) != sum(is_anomaly(e) for e in purchases):
        raise DemoFailed(f"centroid 1 should hold exactly the anomalous purchases, got {centroids}")

    parent = f"projects/{PROJECT}/locations/{LOCATION}"
    model = api.call("GET", f"/v1/{parent}/models/anomaly_detection@demo")
    endpoint, _ = api.endpoint_with("my_hyp_endpoint", model["name"], max_replicas=1)
    out = api.call(
        "POST",
        f"/v1/{endpoint}:predict",
        json={
            "instances": [
                {"tax": 4.9, "shipping": 5.99, "value": 35.43},
                {"tax": 4.9, "shipping": 5.99, "value": 1000000.1},
            ]
        },
    )
    normal, anomalous = (p["nearest_centroid_id"][0] for p in out["predictions"])
    if (normal, anomalous) != (2, 1):
        raise DemoFailed(f"expected centroids 2 (normal) and 1 (anomalous), got {normal} and {anomalous}")
    console.print(f"deployed {model['name']} (lineage: {_lineage(model)})")
    console.print(
        "predicted a $35.43 purchase → centroid 2 (normal), a $1,000,000.10 purchase → centroid 1 (anomaly)"
    )

    api.call(
        "PUT",
        f"/v1/projects/{PROJECT}/subscriptions/hyp_subscription_anomaly",
        json={
            "topic": topic,
            "loopmlInferenceConfig": {
                "endpoint": endpoint,
                "filter": 'event = "purchase"',
                "instanceFields": {
                    "tax": "ecommerce.purchase.tax",
                    "shipping": "ecommerce.purchase.shipping",
                    "value": "ecommerce.purchase.value",
                },
                "outputTable": f"{PROJECT}.ecommerce_sink.cloud_run_anomaly",
                "outputFields": {"anomaly": "prediction.nearest_centroid_id[0] == 1"},
            },
        },
    )
    more = max(200, n_events // 5)
    stats = send(f"{url}/ingest/{TOPIC}", count=more, rate=0, batch=50, seed=seed + 1, noise=noise)
    if stats.failed:
        raise DemoFailed(f"ingest: {stats.failed} of {more} events failed: {stats.errors[:3]}")
    new_purchases = [e for e in islice(events(seed + 1, noise=noise), more) if e["event"] == "purchase"]

    def scored() -> list[dict[str, Any]]:
        return api.query(f"SELECT anomaly FROM `{PROJECT}.ecommerce_sink.cloud_run_anomaly`")

    wait("streaming inference to score every new purchase", lambda: len(scored()) == len(new_purchases))
    flagged = sum(r["anomaly"] == "true" for r in scored())
    if flagged != sum(is_anomaly(e) for e in new_purchases):
        raise DemoFailed(
            f"streaming inference flagged {flagged} purchases, expected {sum(is_anomaly(e) for e in new_purchases)}"
        )
    console.print(
        f"streaming inference scored {len(new_purchases)} new purchases into cloud_run_anomaly; "
        f"{flagged} flagged as anomalies (exactly the anomalous ones)"
    )
    summary.add(
        "events ingested",
        f"{n_events + more:,} ({n_events:,} for training, {more:,} more while streaming inference scored purchases)",
    )
    summary.add("k-means model", f"{model['name']}@demo on {endpoint}")
    summary.add("anomalies flagged in the stream", f"{flagged} of {len(new_purchases)} purchases")


def _lineage(model: dict[str, Any]) -> str:
    lineage = model.get("lineage") or {}
    tables = ", ".join(lineage.get("trainingTables") or []) or "?"
    return f"{lineage.get('kind', '?')} statement over {tables}"


@contextmanager
def _progress(console: Console) -> Iterator[Progress]:
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        yield progress
