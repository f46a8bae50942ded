"""W1 custom variant end to end: build both images, train from the warehouse, upload, deploy, predict.

Runs `examples/hack_your_pipe_custom/run.py` unchanged (only LOOPML_URL and image names differ
from a Vertex run) with Google's SDK, google-cloud-bigquery and google-cloud-storage.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.e2e.examples_support import (
    EXAMPLES,
    build_image,
    fast_sdk_polling,
    load_module,
    processes_under,
    shared_home,
    start_server,
    undeploy_everything,
)

pytestmark = pytest.mark.slow
P = "hyp-project"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(shared_home(tmp_path_factory))
    yield server
    server.stop()


def _seed_warehouse(url: str) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery, storage

    bq = bigquery.Client(project=P, credentials=AnonymousCredentials(), client_options={"api_endpoint": url})
    bq.create_dataset("ecommerce_sink", exists_ok=True)
    schema = [
        bigquery.SchemaField("anomaly", "BOOL"),
        bigquery.SchemaField("tax", "FLOAT"),
        bigquery.SchemaField("shipping", "FLOAT"),
        bigquery.SchemaField("value", "FLOAT"),
    ]
    table = bq.create_table(bigquery.Table(f"{P}.ecommerce_sink.anomaly_data", schema=schema), exists_ok=True)
    rng = random.Random(7)
    rows: list[dict[str, Any]] = []
    for _ in range(300):
        anomaly = rng.random() < 0.164
        rows.append(
            {"anomaly": anomaly, "tax": 4.9, "shipping": 5.99, "value": 1000000.1 if anomaly else 35.43}
        )
    assert bq.insert_rows_json(table, rows) == []
    client = storage.Client(
        project=P, credentials=AnonymousCredentials(), client_options={"api_endpoint": url}
    )
    if client.lookup_bucket(f"{P}-ai-bucket") is None:
        client.create_bucket(f"{P}-ai-bucket")


def test_hack_your_pipe_custom_end_to_end(srv: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    context = EXAMPLES / "hack_your_pipe_custom"
    for sub, tag in (("trainer", "hyp/trainer:1"), ("predictor", "hyp/predictor:1")):
        built = build_image(srv, context / sub, tag)
        assert built.returncode == 0, built.stdout + built.stderr
    _seed_warehouse(srv.url)

    monkeypatch.setenv("LOOPML_URL", srv.url)
    monkeypatch.setenv("PROJECT_ID", P)
    monkeypatch.setenv("REGION", "europe-west1")
    run = load_module(context / "run.py", "hyp_run")
    fast_sdk_polling()
    result = run.main()

    assert result["predictions"] == [False, True]
    job = httpx.get(f"{srv.url}/v1/{result['job']}").json()
    assert job["state"] == "JOB_STATE_SUCCEEDED"
    log = httpx.get(f"{srv.url}/v1/{result['job']}:logs").text
    assert "read 300 rows" in log and "model_dir/model.joblib" in log
    model_file = srv.home / "buckets" / f"{P}-ai-bucket" / "vtx-artifacts" / "model_dir" / "model.joblib"
    assert model_file.is_file()
    # the endpoint keeps answering, through the SDK as well as plain REST
    r = httpx.post(
        f"{srv.url}/v1/{result['endpoint']}:predict",
        json={"instances": [{"tax": 4.9, "shipping": 5.99, "value": 1000000.1}]},
        timeout=30,
    )
    assert r.status_code == 200 and r.json()["predictions"] == [True]
    assert "STORAGE_EMULATOR_HOST" not in os.environ
    undeploy_everything(result["endpoint"])
    assert processes_under(srv.home) == []
