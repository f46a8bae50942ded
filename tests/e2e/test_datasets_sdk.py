"""Managed tabular datasets through Google's own Vertex SDK, unchanged, against a loopml server.

`TabularDataset.create` from a CSV uploaded over the Cloud Storage API and from a warehouse table
loaded over the BigQuery API; then `CustomTrainingJob`/`CustomContainerTrainingJob.run(dataset=…)`
with fraction splits. The trainer reads `AIP_TRAINING_DATA_URI` & co. the way workshop code does
(google-cloud-storage for CSV shards, google-cloud-bigquery for tables) and fails unless the
splits add up to the source, are disjoint and have the expected sizes. Data: a slice of the UCI
red wine data shipped in `loopml/demo/data` (CC BY 4.0), with a `row_id` column added.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from tests.conftest import ServerProcess, free_port

P, L = "proj1", "us-central1"
PARENT = f"projects/{P}/locations/{L}"
BUCKET = "ds-bucket"
ROWS = 300
WINE = Path(__file__).resolve().parents[2] / "src" / "loopml" / "demo" / "data" / "winequality-red.csv"
SKLEARN_SERVING = "us-docker.pkg.dev/vertex-ai/prediction/sklearn-cpu.1-2:latest"

# The trainer: reads its three splits, checks them against the source, trains, saves a model.
TRAINER = textwrap.dedent(
    """
    import io, json, os, sys
    import joblib
    import pandas as pd
    from sklearn.linear_model import LinearRegression

    fmt = os.environ["AIP_DATA_FORMAT"]
    expected = [int(n) for n in sys.argv[1:4]]

    def read_split(uri):
        if fmt == "csv":
            from google.cloud import storage
            bucket, _, pattern = uri[len("gs://"):].partition("/")
            prefix = pattern.rsplit("*", 1)[0]
            blobs = list(storage.Client().list_blobs(bucket, prefix=prefix))
            assert blobs, f"no shard matches {uri}"
            return pd.concat([pd.read_csv(io.BytesIO(b.download_as_bytes())) for b in blobs])
        assert fmt == "bigquery", fmt
        from google.cloud import bigquery
        return bigquery.Client().list_rows(uri[len("bq://"):]).to_dataframe()

    frames = {s: read_split(os.environ[f"AIP_{s.upper()}_DATA_URI"])
              for s in ("training", "validation", "test")}
    sizes = [len(frames[s]) for s in ("training", "validation", "test")]
    ids = [set(frames[s]["row_id"]) for s in ("training", "validation", "test")]
    print("SPLIT", fmt, sizes, flush=True)
    if sizes != expected:
        sys.exit(f"split sizes {sizes} != {expected}")
    if set.union(*ids) != set(range(sum(expected))) or sum(len(i) for i in ids) != sum(expected):
        sys.exit("splits are not a partition of the source rows")
    train = frames["training"]
    features = [c for c in train.columns if c not in ("quality", "row_id")]
    model = LinearRegression().fit(train[features], train["quality"])
    out = os.environ["AIP_MODEL_DIR"]
    from google.cloud import storage
    bucket, _, prefix = out[len("gs://"):].partition("/")
    buf = io.BytesIO()
    joblib.dump(model, buf)
    storage.Client().bucket(bucket).blob(prefix + "model.joblib").upload_from_string(buf.getvalue())
    print("TRAINED on", len(train), "rows", flush=True)
    """
)


def wine_slice() -> pd.DataFrame:
    frame = pd.read_csv(WINE, sep=";").head(ROWS)
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    frame.insert(0, "row_id", range(ROWS))
    return frame


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(
        home=tmp_path_factory.mktemp("datasets-home"),
        port=free_port(),
        env={"LOOPML_PREBUILT_ENVS": "host", "LOOPML_JOB_KILL_GRACE_S": "2"},
    )
    server.start()
    try:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery, storage

        creds, options = AnonymousCredentials(), {"api_endpoint": server.url}
        text = wine_slice().to_csv(index=False)
        gcs = storage.Client(project=P, credentials=creds, client_options=options)
        gcs.create_bucket(BUCKET).blob("wine/wine.csv").upload_from_string(text, content_type="text/csv")
        bq = bigquery.Client(project=P, credentials=creds, client_options=options)
        bq.create_dataset(f"{P}.winedata")
        config = bigquery.LoadJobConfig(source_format="CSV", skip_leading_rows=1, autodetect=True)
        data = text.encode()
        bq.load_table_from_file(
            io.BytesIO(data), f"{P}.winedata.red", size=len(data), job_config=config
        ).result()
        assert bq.get_table(f"{P}.winedata.red").num_rows == ROWS
        yield server
    finally:
        server.stop()


@pytest.fixture()
def sdk(srv: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> Any:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import aiplatform
    from google.cloud.aiplatform import training_jobs

    # the SDK reads CSV headers and uploads scripts with google-cloud-storage, BigQuery schemas
    # with google-cloud-bigquery: point both at loopml
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", srv.url)
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", srv.url)
    monkeypatch.setattr(training_jobs, "_JOB_WAIT_TIME", 0.5)
    aiplatform.init(
        project=P,
        location=L,
        api_endpoint=srv.url,
        api_transport="rest",
        credentials=AnonymousCredentials(),
        staging_bucket=f"gs://{BUCKET}",
    )
    return aiplatform


def split_rows_csv(srv: ServerProcess, glob: str) -> pd.DataFrame:
    folder, _, pattern = glob[len("gs://") :].rpartition("/")
    files = sorted((srv.home / "buckets" / folder).glob(pattern))
    assert files, glob
    return pd.concat([pd.read_csv(f) for f in files])


def pipeline_job_log(srv: ServerProcess, job: Any) -> str:
    return httpx.get(f"{srv.url}/v1/{job.resource_name}:logs", timeout=30).text


def test_csv_dataset_trains_with_a_fraction_split(sdk: Any, srv: ServerProcess, tmp_path: Path) -> None:
    ds = sdk.TabularDataset.create(display_name="wine-csv", gcs_source=[f"gs://{BUCKET}/wine/wine.csv"])
    assert ds.resource_name.startswith(f"{PARENT}/datasets/")
    assert sorted(ds.column_names) == sorted(wine_slice().columns)  # the SDK reads the CSV header
    assert ds.metadata_schema_uri.endswith("/tabular_1.0.0.yaml")
    script = tmp_path / "task.py"
    script.write_text(TRAINER)
    job = sdk.CustomTrainingJob(
        display_name="wine-csv-train",
        script_path=str(script),
        container_uri="us-docker.pkg.dev/vertex-ai/training/sklearn-cpu.1-0:latest",
        model_serving_container_image_uri=SKLEARN_SERVING,
    )
    model = job.run(
        dataset=ds,
        args=["210", "60", "30"],
        replica_count=1,
        base_output_dir=f"gs://{BUCKET}/runs/csv",
        training_fraction_split=0.7,
        validation_fraction_split=0.2,
        test_fraction_split=0.1,
        model_display_name="wine-csv-model",
        timeout=300,
    )
    text = pipeline_job_log(srv, job)
    assert job.state.name == "PIPELINE_STATE_SUCCEEDED", text
    assert "SPLIT csv [210, 60, 30]" in text and "TRAINED on 210 rows" in text
    ds_id = ds.resource_name.rsplit("/", 1)[1]
    env = dict(
        line.removeprefix("[loopml] ").split("=", 1)
        for line in text.splitlines()
        if "_DATA_" in line and "=" in line
    )
    assert env["AIP_DATA_FORMAT"] == "csv"
    prefix = f"gs://{BUCKET}/runs/csv/dataset-{ds_id}-tables-"
    parts = {}
    for split, size in (("training", 210), ("validation", 60), ("test", 30)):
        uri = env[f"AIP_{split.upper()}_DATA_URI"]
        assert uri.startswith(prefix) and uri.endswith(f"/{split}-*"), uri
        parts[split] = set(split_rows_csv(srv, uri)["row_id"])
        assert len(parts[split]) == size
    assert parts["training"].isdisjoint(parts["validation"]) and parts["validation"].isdisjoint(parts["test"])
    assert parts["training"].isdisjoint(parts["test"])
    assert set.union(*parts.values()) == set(range(ROWS))
    got = httpx.get(f"{srv.url}/v1/{model.resource_name}").json()
    assert got["lineage"]["dataset"] == ds.resource_name
    assert got["lineage"]["datasetSplit"]["counts"] == {"training": 210, "validation": 60, "test": 30}
    assert sdk.TabularDataset(ds_id).display_name == "wine-csv"


def test_table_dataset_trains_into_warehouse_tables(sdk: Any, srv: ServerProcess) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    ds = sdk.TabularDataset.create(display_name="wine-bq", bq_source=f"bq://{P}.winedata.red")
    assert "quality" in ds.column_names
    job = sdk.CustomContainerTrainingJob(
        display_name="wine-bq-train",
        container_uri="python:3.11-slim",
        command=["python", "-c", TRAINER, "240", "30", "30"],  # default split: 0.8 / 0.1 / 0.1
    )
    job.run(
        dataset=ds,
        replica_count=1,
        base_output_dir=f"gs://{BUCKET}/runs/bq",
        bigquery_destination=f"bq://{P}",
        timeout=300,
    )
    text = pipeline_job_log(srv, job)
    assert job.state.name == "PIPELINE_STATE_SUCCEEDED", text
    assert "SPLIT bigquery [240, 30, 30]" in text
    ds_id = ds.resource_name.rsplit("/", 1)[1]
    line = next(x for x in text.splitlines() if x.startswith("[loopml] AIP_TRAINING_DATA_URI="))
    uri = line.split("=", 1)[1]
    assert uri.startswith(f"bq://{P}.dataset_{ds_id}_tables_") and uri.endswith(".training"), uri
    dataset = uri[len("bq://") :].rsplit(".", 1)[0]
    client = bigquery.Client(
        project=P, credentials=AnonymousCredentials(), client_options={"api_endpoint": srv.url}
    )
    ids = {
        split: {row["row_id"] for row in client.query_and_wait(f"SELECT row_id FROM `{dataset}.{split}`")}
        for split in ("training", "validation", "test")
    }
    assert [len(ids[s]) for s in ("training", "validation", "test")] == [240, 30, 30]
    assert set.union(*ids.values()) == set(range(ROWS))


def test_dataset_resource_list_update_delete(sdk: Any, srv: ServerProcess) -> None:
    ds = sdk.TabularDataset.create(
        display_name="to-update", gcs_source=f"gs://{BUCKET}/wine/wine.csv", labels={"stage": "raw"}
    )
    names = [d.resource_name for d in sdk.TabularDataset.list(filter='labels.stage="raw"')]
    assert names == [ds.resource_name]
    ds.update(display_name="updated", labels={"stage": "clean"})
    again = sdk.TabularDataset(ds.resource_name)
    assert (again.display_name, again.labels) == ("updated", {"stage": "clean"})
    ds.delete()
    r = httpx.get(f"{srv.url}/v1/{ds.resource_name}")
    assert r.status_code == 404 and r.json()["error"]["status"] == "NOT_FOUND"


def test_bad_inputs_are_clear_4xx_and_store_nothing(sdk: Any, srv: ServerProcess) -> None:
    from google.api_core import exceptions as gexc

    with pytest.raises(gexc.BadRequest, match=f"gs://{BUCKET}/wine/missing.csv"):
        sdk.TabularDataset.create(display_name="missing", gcs_source=f"gs://{BUCKET}/wine/missing.csv")
    with pytest.raises(gexc.BadRequest, match="does not exist in the warehouse"):
        sdk.TabularDataset.create(display_name="missing", bq_source=f"bq://{P}.winedata.nope")
    assert [d.display_name for d in sdk.TabularDataset.list(filter='display_name="missing"')] == []
    with pytest.raises(gexc.NotFound):
        sdk.TabularDataset("1234567")
    ds = sdk.TabularDataset.create(display_name="fractions", gcs_source=f"gs://{BUCKET}/wine/wine.csv")
    job = sdk.CustomContainerTrainingJob(
        display_name="over-one", container_uri="python:3.11-slim", command=["python", "-c", "pass"]
    )
    with pytest.raises(gexc.BadRequest, match="over 1"):
        job.run(
            dataset=ds,
            replica_count=1,
            base_output_dir=f"gs://{BUCKET}/runs/bad",
            training_fraction_split=0.8,
            validation_fraction_split=0.3,
            test_fraction_split=0.1,
        )
    body = {
        "displayName": "unknown-dataset",
        "trainingTaskInputs": {
            "workerPoolSpecs": [
                {"replicaCount": "1", "containerSpec": {"imageUri": "python:3.11-slim", "command": ["true"]}}
            ],
        },
        "inputDataConfig": {"datasetId": "999", "gcsDestination": {"outputUriPrefix": f"gs://{BUCKET}/x"}},
    }
    r = httpx.post(f"{srv.url}/v1/{PARENT}/trainingPipelines", json=body, timeout=30)
    assert r.status_code == 404, r.text
    assert r.json()["error"]["message"] == f"Dataset {PARENT}/datasets/999 does not exist."
    body["inputDataConfig"] = {"datasetId": ds.resource_name.rsplit("/", 1)[1]}  # no destination
    r = httpx.post(f"{srv.url}/v1/{PARENT}/trainingPipelines", json=body, timeout=30)
    assert r.status_code == 400 and "gcsDestination" in r.json()["error"]["message"]
    listed = (
        httpx.get(f"{srv.url}/v1/{PARENT}/trainingPipelines", timeout=30).json().get("trainingPipelines", [])
    )
    assert not [p for p in listed if p["displayName"] in ("over-one", "unknown-dataset")]


def test_source_removed_after_creation_is_a_400_naming_it(sdk: Any, srv: ServerProcess) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    gcs = storage.Client(
        project=P, credentials=AnonymousCredentials(), client_options={"api_endpoint": srv.url}
    )
    gcs.bucket(BUCKET).blob("wine/gone.csv").upload_from_string(wine_slice().to_csv(index=False))
    ds = sdk.TabularDataset.create(display_name="gone", gcs_source=f"gs://{BUCKET}/wine/gone.csv")
    body = {
        "displayName": "gone-later",
        "trainingTaskInputs": {
            "workerPoolSpecs": [
                {"replicaCount": "1", "containerSpec": {"imageUri": "python:3.11-slim", "command": ["true"]}}
            ],
        },
        "inputDataConfig": {
            "datasetId": ds.resource_name.rsplit("/", 1)[1],
            "gcsDestination": {"outputUriPrefix": f"gs://{BUCKET}/runs/gone"},
        },
    }
    gcs.bucket(BUCKET).blob("wine/gone.csv").delete()
    r = httpx.post(f"{srv.url}/v1/{PARENT}/trainingPipelines", json=body, timeout=30)
    assert r.status_code == 400 and f"gs://{BUCKET}/wine/gone.csv" in r.json()["error"]["message"]


def _cli(srv: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LOOPML_URL=srv.url, LOOPML_PROJECT=P, COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "loopml", "datasets", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_create_list_describe_delete(srv: ServerProcess) -> None:
    made = _cli(
        srv, "create", "-n", "cli-wine", "--gcs-source", f"gs://{BUCKET}/wine/wine.csv", "--label", "via=cli"
    )
    assert made.returncode == 0, made.stderr
    ds_id = made.stdout.split()[2]
    assert ds_id.isdigit() and "(cli-wine)" in made.stdout
    listed = _cli(srv, "list", "--filter", 'labels.via="cli"', "--json")
    assert listed.returncode == 0, listed.stderr
    assert [d["name"].rsplit("/", 1)[1] for d in json.loads(listed.stdout)] == [ds_id]
    table = _cli(srv, "list")
    assert ds_id in table.stdout and f"gs://{BUCKET}/wine/wine.csv" in table.stdout
    shown = _cli(srv, "describe", ds_id)
    assert shown.returncode == 0 and "cli-wine" in shown.stdout and "tabular_1.0.0.yaml" in shown.stdout
    bad = _cli(srv, "create", "-n", "x", "--bq-source", f"bq://{P}.winedata.absent")
    assert bad.returncode == 1 and f"bq://{P}.winedata.absent" in bad.stderr
    assert _cli(srv, "delete", ds_id).returncode == 0
    gone = _cli(srv, "describe", ds_id)
    assert gone.returncode == 1 and "does not exist" in gone.stderr


def test_rest_operations_are_pollable_and_bad_bodies_are_400(srv: ServerProcess) -> None:
    schema = "gs://google-cloud-aiplatform/schema/dataset/metadata/tabular_1.0.0.yaml"
    source = {"inputConfig": {"gcsSource": {"uri": [f"gs://{BUCKET}/wine/wine.csv"]}}}
    base = f"{srv.url}/v1/{PARENT}/datasets"
    op = httpx.post(
        base, json={"displayName": "rest", "metadataSchemaUri": schema, "metadata": source}
    ).json()
    assert op["done"] is True and op["metadata"]["@type"].endswith("CreateDatasetOperationMetadata")
    for prefix in ("ui", "v1"):  # the REST transport polls /ui/{operation}
        polled = httpx.get(f"{srv.url}/{prefix}/{op['name']}").json()
        assert polled["done"] is True and polled["response"]["name"] == op["response"]["name"]
    cases = [
        ({"metadataSchemaUri": schema, "metadata": source}, "displayName is required"),
        ({"displayName": "x", "metadataSchemaUri": "gs://x/image_1.0.0.yaml", "metadata": source}, "tabular"),
        ({"displayName": "x", "metadataSchemaUri": schema}, "Dataset.metadata must be an object"),
        (
            {
                "displayName": "x",
                "metadataSchemaUri": schema,
                "metadata": {
                    "inputConfig": {**source["inputConfig"], "bigquerySource": {"uri": "bq://a.b.c"}}
                },
            },
            "exactly one",
        ),
    ]
    for body, needle in cases:
        r = httpx.post(base, json=body)
        assert r.status_code == 400 and needle in r.json()["error"]["message"], r.text
        assert r.json()["error"]["status"] == "INVALID_ARGUMENT"
    ds = op["response"]["name"].rsplit("/", 1)[1]
    r = httpx.patch(f"{base}/{ds}", params={"updateMask": "metadata"}, json={"metadata": {}})
    assert r.status_code == 400 and "cannot be updated" in r.json()["error"]["message"]
    r = httpx.post(f"{base}/{ds}:import", json={})
    assert r.status_code in (404, 405)
    r = httpx.get(base, params={"pageSize": "many"})
    assert r.status_code == 400 and "pageSize" in r.json()["error"]["message"]
    assert httpx.delete(f"{base}/{ds}").json()["done"] is True


def test_predefined_split_column_from_the_sdk(sdk: Any, srv: ServerProcess) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    frame = wine_slice().head(60)
    frame["ml_use"] = ["training"] * 40 + ["validation"] * 5 + ["test"] * 10 + ["unassigned"] * 5
    gcs = storage.Client(
        project=P, credentials=AnonymousCredentials(), client_options={"api_endpoint": srv.url}
    )
    gcs.bucket(BUCKET).blob("wine/predefined.csv").upload_from_string(frame.to_csv(index=False))
    ds = sdk.TabularDataset.create(display_name="predefined", gcs_source=f"gs://{BUCKET}/wine/predefined.csv")
    code = (
        "import os\n"
        "for s in ('TRAINING', 'VALIDATION', 'TEST'):\n"
        "    uri = os.environ[f'AIP_{s}_DATA_URI']\n"
        "    print('URI', s, uri)\n"
    )
    job = sdk.CustomContainerTrainingJob(
        display_name="predefined-train", container_uri="python:3.11-slim", command=["python", "-c", code]
    )
    job.run(
        dataset=ds,
        replica_count=1,
        base_output_dir=f"gs://{BUCKET}/runs/predefined",
        predefined_split_column_name="ml_use",
        timeout=120,
    )
    text = pipeline_job_log(srv, job)
    assert job.state.name == "PIPELINE_STATE_SUCCEEDED", text
    uris = dict(line.split()[1:3] for line in text.splitlines() if line.startswith("URI "))
    for split, ids in (("training", range(40)), ("validation", range(40, 45)), ("test", range(45, 55))):
        rows = split_rows_csv(srv, uris[split.upper()])
        assert sorted(rows["row_id"]) == list(ids) and set(rows["ml_use"]) == {split}
