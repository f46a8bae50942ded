"""`loopml demo`: the main job end to end on the embedded defaults, against a real server.

The demo starts its own `loopml server` (a child process on a free loopback port, state in a
directory of its own) and drives it only through the public APIs a user's code would use:

1. **Online prediction.** A scikit-learn classifier of the UCI red-wine data (shipped in
   `loopml/demo/data`, CC BY 4.0) is uploaded to a bucket over the Cloud Storage API, registered
   with `models:upload` and a prebuilt sklearn serving image, deployed to an endpoint and asked
   for predictions (which must match the model in this process).
2. **Workload 1** (the e-commerce anomaly detection of Hack Your Pipe): a topic with a BigQuery
   subscription into the workshop's nested `ecommerce_sink.cloud_run` table, synthetic shop events
   ingested over HTTP, `CREATE MODEL … KMEANS … MODEL_REGISTRY='VERTEX_AI'`, `ML.PREDICT`,
   deployment of the registered model, prediction of a normal and an anomalous purchase, and
   streaming inference that scores every new purchase into `cloud_run_anomaly`.

Every step checks its result and the demo exits non-zero when one is wrong.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from itertools import islice
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

PROJECT = "demo-project"
LOCATION = "us-central1"
TOPIC = "hyp-pubsub-topic"
BUCKET = "demo-models"
SKLEARN_IMAGE = "us-docker.pkg.dev/vertex-ai/prediction/sklearn-cpu.1-3:latest"
MARKER = ".loopml-demo-home"


class DemoFailed(RuntimeError):
    """A step of the demo did not give the result it must."""


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


@dataclass
class Summary:
    home: Path
    url: str
    facts: list[tuple[str, str]] = field(default_factory=list)

    def add(self, what: str, value: Any) -> None:
        self.facts.append((what, str(value)))


# -- the server ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def demo_server(home: Path, port: int, keep_running: bool) -> Iterator[str]:
    """Run `loopml server` as a child process until the block ends (or leave it running)."""
    url = f"http://127.0.0.1:{port}"
    log_path = home / "demo-server.log"
    env = dict(os.environ, LOOPML_HOME=str(home), LOOPML_DEFAULT_PROJECT=PROJECT)
    env.pop("LOOPML_DATABASE_URL", None)  # the demo runs on the embedded defaults
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "loopml", "server", "--port", str(port), "--home", str(home)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=keep_running,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise DemoFailed(f"the server exited with code {proc.returncode}; see {log_path}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise DemoFailed(f"the server did not become ready in 120 s; see {log_path}")
            time.sleep(0.2)
        yield url
    finally:
        if not keep_running and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- small REST helpers -------------------------------------------------------------------------
class Api:
    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=300)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.http.request(method, path, **kwargs)
        if resp.status_code >= 400:
            raise DemoFailed(f"{method} {path} → HTTP {resp.status_code}: {resp.text[:500]}")
        return resp.json() if resp.content else None

    def operation(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        op = self.call(method, path, **kwargs)
        deadline = time.monotonic() + 600
        while not op.get("done"):
            if time.monotonic() > deadline:
                raise DemoFailed(f"operation {op.get('name')} did not finish in 600 s")
            time.sleep(0.2)
            op = self.call("GET", f"/v1/{op['name']}")
        if "error" in op:
            raise DemoFailed(f"{method} {path} failed: {op['error'].get('message')}")
        response: dict[str, Any] = op.get("response") or {}
        return response

    def query(self, sql: str) -> list[dict[str, Any]]:
        """jobs.query, waiting until done; rows as dicts (nested records not decoded)."""
        body = {"query": sql, "useLegacySql": False, "timeoutMs": 600_000}
        out = self.call("POST", f"/bigquery/v2/projects/{PROJECT}/queries", json=body)
        while not out.get("jobComplete"):
            job_id = out["jobReference"]["jobId"]
            out = self.call(
                "GET", f"/bigquery/v2/projects/{PROJECT}/queries/{job_id}", params={"timeoutMs": 10_000}
            )
        names = [f["name"] for f in (out.get("schema") or {}).get("fields", [])]
        return [
            {n: cell["v"] for n, cell in zip(names, row["f"], strict=True)} for row in out.get("rows", [])
        ]

    def close(self) -> None:
        self.http.close()


def _wait(what: str, cond: Callable[[], bool], timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise DemoFailed(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


# -- step 1: a scikit-learn model, online -------------------------------------------------------
def wine_data() -> tuple[list[str], list[list[float]], list[int]]:
    text = resources.files("loopml.demo").joinpath("data/winequality-red.csv").read_text()
    reader = csv.reader(io.StringIO(text), delimiter=";")
    header = next(reader)
    rows = [[float(v) for v in r] for r in reader if r]
    return header[:-1], [r[:-1] for r in rows], [int(r[-1] >= 6) for r in rows]


def online_prediction(api: Api, console: Console, summary: Summary) -> None:
    import joblib
    import numpy as np
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import train_test_split

    console.rule("[bold]1 · a scikit-learn model, registered, deployed and served")
    _columns, x, y = wine_data()
    x_train, x_test, y_train, y_test = train_test_split(
        np.array(x), np.array(y), test_size=0.2, random_state=7, stratify=y
    )
    model = RandomForestClassifier(n_estimators=100, max_depth=8, random_state=7, n_jobs=1)
    model.fit(x_train, y_train)
    accuracy = float((model.predict(x_test) == y_test).mean())
    console.print(
        f"trained a random forest on {len(x_train)} red wines (good = quality ≥ 6): test accuracy {accuracy:.3f}"
    )

    buf = io.BytesIO()
    joblib.dump(model, buf)
    api.call("POST", "/storage/v1/b", params={"project": PROJECT}, json={"name": BUCKET})
    api.call(
        "POST",
        f"/upload/storage/v1/b/{BUCKET}/o",
        params={"uploadType": "media", "name": "wine/1/model.joblib"},
        content=buf.getvalue(),
        headers={"content-type": "application/octet-stream"},
    )
    console.print(f"uploaded gs://{BUCKET}/wine/1/model.joblib over the Cloud Storage API")

    parent = f"projects/{PROJECT}/locations/{LOCATION}"
    uploaded = api.operation(
        "POST",
        f"/v1/{parent}/models:upload",
        json={
            "modelId": "wine-quality",
            "model": {
                "displayName": "wine-quality",
                "description": "Random forest of good (quality >= 6) red wines, UCI Wine Quality (CC BY 4.0)",
                "artifactUri": f"gs://{BUCKET}/wine/1/",
                "containerSpec": {"imageUri": SKLEARN_IMAGE},
                "labels": {"source": "loopml-demo"},
            },
        },
    )
    console.print(f"registered {uploaded['model']} version {uploaded['modelVersionId']}")
    endpoint = api.operation("POST", f"/v1/{parent}/endpoints", json={"displayName": "wine-endpoint"})
    deployed = api.operation(
        "POST",
        f"/v1/{endpoint['name']}:deployModel",
        json={
            "deployedModel": {
                "model": uploaded["model"],
                "dedicatedResources": {
                    "machineSpec": {"machineType": "n1-standard-2"},
                    "minReplicaCount": 1,
                    "maxReplicaCount": 2,
                },
            },
            "trafficSplit": {"0": 100},
        },
    )
    console.print(f"deployed to {endpoint['name']} as deployed model {deployed['deployedModel']['id']}")

    sample = x_test[:8].tolist()
    out = api.call("POST", f"/v1/{endpoint['name']}:predict", json={"instances": sample})
    served = [int(p) for p in out["predictions"]]
    local = [int(p) for p in model.predict(np.array(sample))]
    if served != local:
        raise DemoFailed(f"served predictions {served} differ from the model's own {local}")
    console.print(f"predicted 8 wines over HTTP: {served} (identical to the model in this process)")
    n, rows = 300, x_test[:300].tolist()
    start = time.perf_counter()
    for row in rows:
        model.predict(np.array([row]))
    own = (time.perf_counter() - start) / n * 1000
    start = time.perf_counter()
    for row in rows:
        api.call("POST", f"/v1/{endpoint['name']}:predict", json={"instances": [row]})
    per = (time.perf_counter() - start) / n * 1000
    console.print(
        f"{n} single-instance requests, one after another: {per:.2f} ms each "
        f"(the forest itself takes {own:.2f} ms per row in this process)"
    )
    summary.add("wine model", f"{uploaded['model']} on {endpoint['name']}")
    summary.add("wine test accuracy", f"{accuracy:.3f}")
    summary.add("online round trip (sequential)", f"{per:.2f} ms/request, model {own:.2f} ms")


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

    _wait("the BigQuery subscription to write every event", lambda: landed() == n_events)
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
    endpoint = api.operation("POST", f"/v1/{parent}/endpoints", json={"displayName": "my_hyp_endpoint"})
    api.operation(
        "POST",
        f"/v1/{endpoint['name']}:deployModel",
        json={
            "deployedModel": {
                "model": model["name"],
                "dedicatedResources": {
                    "machineSpec": {"machineType": "n1-standard-2"},
                    "minReplicaCount": 1,
                    "maxReplicaCount": 1,
                },
            },
            "trafficSplit": {"0": 100},
        },
    )
    out = api.call(
        "POST",
        f"/v1/{endpoint['name']}:predict",
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
                "endpoint": endpoint["name"],
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

    _wait("streaming inference to score every new purchase", lambda: len(scored()) == len(new_purchases))
    flagged = sum(r["anomaly"] == "true" for r in scored())
    if flagged != sum(is_anomaly(e) for e in new_purchases):
        raise DemoFailed(
            f"streaming inference flagged {flagged} purchases, expected {sum(is_anomaly(e) for e in new_purchases)}"
        )
    console.print(
        f"streaming inference scored {len(new_purchases)} new purchases into cloud_run_anomaly; "
        f"{flagged} flagged as anomalies (exactly the anomalous ones)"
    )
    summary.add("events ingested", f"{n_events + more:,}")
    summary.add("k-means model", f"{model['name']}@demo on {endpoint['name']}")
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


# -- the whole demo -----------------------------------------------------------------------------
def prepare_home(home: Path, fresh: bool) -> None:
    if home.exists() and any(home.iterdir()):
        if not (home / MARKER).exists():
            raise DemoFailed(
                f"{home} exists and is not a demo home; pass an empty or new directory with --home"
            )
        if fresh:
            shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True)
    (home / MARKER).write_text("made by `loopml demo`; safe to delete\n")


def run(
    home: Path,
    *,
    port: int | None = None,
    events: int = 5000,
    keep_running: bool = False,
    console: Console | None = None,
) -> Summary:
    console = console or Console()
    home = home.resolve()
    prepare_home(home, fresh=True)
    port = port or free_port()
    started = time.perf_counter()
    with demo_server(home, port, keep_running) as url:
        console.print(f"[bold]loopml demo[/]: server on {url}, state in {home}")
        summary = Summary(home=home, url=url)
        api = Api(url)
        try:
            online_prediction(api, console, summary)
            workload1(api, console, summary, events, url)
        finally:
            api.close()
        summary.add("total time", f"{time.perf_counter() - started:.1f} s")
    console.rule("[bold green]demo finished: every step checked")
    for what, value in summary.facts:
        console.print(f"  {what:<32} {value}")
    console.print(f"  {'server log':<32} {home / 'demo-server.log'}")
    console.print(f"  {'warehouse (DuckDB)':<32} {home / 'warehouse.duckdb'}")
    if keep_running:
        console.print(f"\nThe server keeps running on {url}. Try:\n  export LOOPML_URL={url}")
        console.print(
            "  loopml models list --project demo-project\n  loopml endpoints list --project demo-project"
        )
    else:
        console.print(
            f"\nLook around: LOOPML_HOME={home} loopml server, then `loopml models list --project {PROJECT}`."
        )
    return summary
