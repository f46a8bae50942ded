"""`loopml batch-predict` and `loopml batch list|describe|cancel` against a real server."""

from __future__ import annotations

import json

import httpx
import joblib
import numpy as np
from sklearn.tree import DecisionTreeClassifier
from typer.testing import CliRunner

from loopml.cli import main as cli_main
from tests.conftest import ServerProcess

P, L = "cli-batch", "us-central1"
SKLEARN_IMAGE = "us-docker.pkg.dev/vertex-ai/prediction/sklearn-cpu.1-2:latest"


def test_batch_predict_command_follows_the_job(server: ServerProcess) -> None:
    cli_main._load()
    cli = CliRunner(env={"LOOPML_URL": server.url, "LOOPML_PROJECT": P, "LOOPML_LOCATION": L})
    x = np.random.default_rng(3).uniform(-1, 1, size=(300, 2))
    model = DecisionTreeClassifier(max_depth=3, random_state=0).fit(x, (x[:, 0] > x[:, 1]).astype(int))
    target = server.home / "buckets" / "climodels" / "m"
    target.mkdir(parents=True)
    joblib.dump(model, target / "model.joblib")
    body = {
        "modelId": "m",
        "model": {
            "displayName": "m",
            "artifactUri": "gs://climodels/m",
            "containerSpec": {"imageUri": SKLEARN_IMAGE},
        },
    }
    r = httpx.post(f"{server.url}/v1/projects/{P}/locations/{L}/models:upload", json=body, timeout=60)
    assert r.status_code == 200, r.text
    data = server.home / "buckets" / "cliin"
    data.mkdir(parents=True)
    (data / "x.csv").write_text(
        "k,a,b\n" + "".join(f"id{i},{a},{b}\n" for i, (a, b) in enumerate(x.tolist()))
    )

    result = cli.invoke(
        cli_main.app,
        [
            "batch-predict",
            "--model",
            "m@1",
            "--gcs-source",
            "gs://cliin/x.csv",
            "--format",
            "csv",
            "--gcs-destination",
            "gs://cliout/run",
            "--key-field",
            "k",
            "--batch-size",
            "32",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    job = json.loads(result.output[result.output.index("{") :])
    assert job["state"] == "JOB_STATE_SUCCEEDED" and job["completionStats"]["successfulCount"] == "300"
    assert job["instanceConfig"] == {"keyField": "k"} and job["manualBatchTuningParameters"] == {
        "batchSize": 32
    }
    out = server.home / "buckets" / job["outputInfo"]["gcsOutputDirectory"].removeprefix("gs://")
    preds = [json.loads(line) for line in (out / "predictions_0001.jsonl").read_text().splitlines()]
    assert {p["key"]: p["prediction"] for p in preds} == {
        f"id{i}": int(v) for i, v in enumerate(model.predict(x))
    }

    job_id = job["name"].rsplit("/", 1)[-1]
    listed = cli.invoke(cli_main.app, ["batch", "list", "--state", "succeeded", "--json"])
    assert listed.exit_code == 0, listed.output
    assert [j["name"] for j in json.loads(listed.output)] == [job["name"]]
    assert "SUCCEEDED" in cli.invoke(cli_main.app, ["batch", "list"]).output
    described = cli.invoke(cli_main.app, ["batch", "describe", job_id])
    assert described.exit_code == 0 and "gs://cliout/run/prediction-m-" in described.output
    cancelled = cli.invoke(cli_main.app, ["batch", "cancel", job_id])
    assert cancelled.exit_code == 1 and "already JOB_STATE_SUCCEEDED" in cancelled.output
    bad = cli.invoke(cli_main.app, ["batch-predict", "--model", "m", "--gcs-destination", "gs://cliout/x"])
    assert bad.exit_code == 1 and "exactly one of --bigquery-source or --gcs-source" in bad.output
