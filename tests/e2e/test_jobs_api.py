"""customJobs and trainingPipelines through Google's own Vertex SDK, the REST API and the CLI.

One server per module with `LOOPML_PREBUILT_ENVS=host` (prebuilt images run on loopml's own
interpreter, so no environment is built). Every failure case checks that no job process is left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import ServerProcess, free_port

P, L = "proj1", "us-central1"
IMAGE = "python:3.11-slim"  # a prebuilt base: loopml's interpreter in host mode
PARENT = f"projects/{P}/locations/{L}"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(
        home=tmp_path_factory.mktemp("jobs-home"),
        port=free_port(),
        env={"LOOPML_PREBUILT_ENVS": "host", "LOOPML_JOB_KILL_GRACE_S": "2"},
    )
    server.start()
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(
        project=P, credentials=AnonymousCredentials(), client_options={"api_endpoint": server.url}
    )
    client.create_bucket("staging-bucket")
    yield server
    server.stop()


@pytest.fixture()
def sdk(srv: ServerProcess) -> Any:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import aiplatform
    from google.cloud.aiplatform import jobs, training_jobs

    jobs._JOB_WAIT_TIME = 0.5  # the SDK's poll interval (5 s) is for the cloud
    training_jobs._JOB_WAIT_TIME = 0.5
    aiplatform.init(
        project=P,
        location=L,
        api_endpoint=srv.url,
        api_transport="rest",
        credentials=AnonymousCredentials(),
        staging_bucket="gs://staging-bucket",
    )
    return aiplatform


def job_processes(marker: str) -> list[psutil.Process]:
    out = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if marker in " ".join(proc.info["cmdline"] or []):
                out.append(proc)
        except psutil.Error:
            continue
    return [p for p in out if p.pid != os.getpid()]


def python_pool(code: str, **container: Any) -> dict[str, Any]:
    return {
        "machine_spec": {"machine_type": "n1-standard-4"},
        "replica_count": 1,
        "container_spec": {"image_uri": IMAGE, "command": ["python", "-c", code], **container},
    }


def test_custom_job_via_sdk_sees_the_contract_and_metadata(sdk: Any, srv: ServerProcess) -> None:
    code = textwrap.dedent(
        """
        import os, google.auth
        from google.cloud import storage
        creds, project = google.auth.default()
        print("AUTH", type(creds).__name__, project)
        for k in ("AIP_MODEL_DIR", "AIP_CHECKPOINT_DIR", "AIP_TENSORBOARD_LOG_DIR", "CLOUD_ML_JOB_ID",
                  "CLOUD_ML_PROJECT_ID", "CLOUD_ML_REGION", "MY_VAR", "STORAGE_EMULATOR_HOST", "LOOPML_GCS_ROOT"):
            print(k, "=", os.environ.get(k))
        uri = os.environ["AIP_MODEL_DIR"]
        bucket, _, prefix = uri[5:].partition("/")
        storage.Client().bucket(bucket).blob(prefix + "model.txt").upload_from_string("trained")
        """
    )
    job = sdk.CustomJob(
        display_name="contract",
        worker_pool_specs=[python_pool(code, env=[{"name": "MY_VAR", "value": "42"}])],
        base_output_dir="gs://staging-bucket/contract",
    )
    job.run(timeout=120)
    assert job.state.name == "JOB_STATE_SUCCEEDED"
    job_id = job.resource_name.rsplit("/", 1)[1]
    text = httpx.get(f"{srv.url}/v1/{job.resource_name}:logs").text
    assert f"AUTH Credentials {P}" in text
    assert "AIP_MODEL_DIR = gs://staging-bucket/contract/model/" in text
    assert "AIP_CHECKPOINT_DIR = gs://staging-bucket/contract/checkpoints/" in text
    assert "AIP_TENSORBOARD_LOG_DIR = gs://staging-bucket/contract/logs/" in text
    assert f"CLOUD_ML_JOB_ID = {job_id}" in text and f"CLOUD_ML_PROJECT_ID = {P}" in text
    assert "MY_VAR = 42" in text
    assert f"LOOPML_GCS_ROOT = {srv.home / 'buckets'}" in text  # the /gcs/ view
    assert (
        srv.home / "buckets" / "staging-bucket" / "contract" / "model" / "model.txt"
    ).read_text() == "trained"
    assert (srv.home / "logs" / "jobs" / f"{job_id}.log").exists()


def test_training_pipeline_uploads_the_model(sdk: Any, srv: ServerProcess) -> None:
    code = textwrap.dedent(
        """
        import os
        from google.cloud import storage
        bucket, _, prefix = os.environ["AIP_MODEL_DIR"][5:].partition("/")
        storage.Client().bucket(bucket).blob(prefix + "model.joblib").upload_from_string(b"not really")
        """
    )
    job = sdk.CustomContainerTrainingJob(
        display_name="pipeline-upload",
        container_uri=IMAGE,
        command=["python", "-c", code],
        model_serving_container_image_uri="us-docker.pkg.dev/vertex-ai/prediction/sklearn-cpu.1-2:latest",
    )
    model = job.run(
        replica_count=1,
        base_output_dir="gs://staging-bucket/pipe1",
        model_display_name="pipe-model",
        timeout=120,
    )
    assert job.state.name == "PIPELINE_STATE_SUCCEEDED"
    assert model.version_id == "1"
    body = httpx.get(f"{srv.url}/v1/{job.resource_name}").json()
    assert body["modelToUpload"]["name"] == model.resource_name
    assert body["trainingTaskMetadata"]["backingCustomJob"].startswith(f"{PARENT}/customJobs/")
    got = httpx.get(f"{srv.url}/v1/{model.resource_name}").json()
    assert got["displayName"] == "pipe-model"
    # lineage: the uploaded model records the pipeline that trained it
    assert got["trainingPipeline"] == job.resource_name
    assert got["lineage"]["kind"] == "training_pipeline" and got["lineage"]["job"] == job.resource_name
    assert got["containerSpec"]["imageUri"].endswith("sklearn-cpu.1-2:latest")
    # parentModel: a second run becomes version 2 of the same model
    job2 = sdk.CustomContainerTrainingJob(
        display_name="pipeline-upload-2",
        container_uri=IMAGE,
        command=["python", "-c", code],
        model_serving_container_image_uri="us-docker.pkg.dev/vertex-ai/prediction/sklearn-cpu.1-2:latest",
    )
    model2 = job2.run(
        replica_count=1,
        base_output_dir="gs://staging-bucket/pipe2",
        parent_model=model.resource_name,
        timeout=120,
    )
    assert model2.resource_name == model.resource_name
    assert model2.version_id == "2"
    v2 = httpx.get(f"{srv.url}/v1/{model.resource_name}@2").json()
    assert v2["trainingPipeline"] == job2.resource_name != job.resource_name


def test_script_job_via_sdk_is_packaged_and_run(sdk: Any, srv: ServerProcess, tmp_path: Path) -> None:
    script = tmp_path / "task.py"
    script.write_text("import sys\nprint('script says', sys.argv[1:])\n")
    os.environ["STORAGE_EMULATOR_HOST"] = srv.url  # the SDK uploads the sdist with google-cloud-storage
    try:
        job = sdk.CustomTrainingJob(
            display_name="script",
            script_path=str(script),
            container_uri="us-docker.pkg.dev/vertex-ai/training/sklearn-cpu.1-0:latest",
        )
        job.run(
            replica_count=1,
            args=["--alpha", "0.5"],
            base_output_dir="gs://staging-bucket/script",
            timeout=300,
        )
    finally:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    assert job.state.name == "PIPELINE_STATE_SUCCEEDED"
    text = httpx.get(f"{srv.url}/v1/{job.resource_name}:logs").text
    assert "script says ['--alpha', '0.5']" in text


def test_exit_1_fails_with_the_log_tail(sdk: Any) -> None:
    job = sdk.CustomJob(
        display_name="exit1",
        worker_pool_specs=[python_pool("import sys; print('KeyError: no column tax'); sys.exit(1)")],
    )
    with pytest.raises(RuntimeError) as info:
        job.run(timeout=120)
    assert job.state.name == "JOB_STATE_FAILED"
    assert "non-zero status of 1" in str(info.value)
    assert "KeyError: no column tax" in str(info.value)


def test_timeout_fails_and_leaves_nothing_running(sdk: Any) -> None:
    marker = f"hang-{time.time_ns()}"
    job = sdk.CustomJob(
        display_name="hang",
        worker_pool_specs=[python_pool(f"import time  # {marker}\ntime.sleep(600)")],
    )
    with pytest.raises(RuntimeError, match="timed out after 2s"):
        job.run(timeout=2)
    assert job.state.name == "JOB_STATE_FAILED"
    assert job_processes(marker) == []


def _post(srv: ServerProcess, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{srv.url}/v1/{PARENT}/{path}", json=body, timeout=30)


def test_rest_errors_are_clear_4xx(srv: ServerProcess) -> None:
    pkg = {
        "displayName": "bad",
        "jobSpec": {
            "workerPoolSpecs": [
                {
                    "replicaCount": "1",
                    "pythonPackageSpec": {
                        "executorImageUri": "us-docker.pkg.dev/vertex-ai/training/sklearn-cpu.1-0:latest",
                        "packageUris": ["https://example.com/trainer-0.1.tar.gz"],
                        "pythonModule": "trainer.task",
                    },
                }
            ]
        },
    }
    r = _post(srv, "customJobs", pkg)
    assert r.status_code == 400 and "not a gs:// URI" in r.json()["error"]["message"]
    pkg["jobSpec"]["workerPoolSpecs"][0]["pythonPackageSpec"]["packageUris"] = [
        "gs://staging-bucket/none.tar.gz"
    ]
    r = _post(srv, "customJobs", pkg)
    assert r.status_code == 400 and "does not exist" in r.json()["error"]["message"]
    r = _post(
        srv, "customJobs", {"displayName": "x", "jobSpec": {"workerPoolSpecs": [{"replicaCount": 1.5}]}}
    )
    assert r.status_code == 400 and "replicaCount" in r.json()["error"]["message"]
    r = _post(
        srv,
        "customJobs",
        {
            "displayName": "x",
            "jobSpec": {"workerPoolSpecs": [{"containerSpec": {"imageUri": "never/built:1"}}]},
        },
    )
    assert r.status_code == 400 and "loopml images build" in r.json()["error"]["message"]
    r = _post(
        srv,
        "trainingPipelines",
        {"displayName": "automl", "trainingTaskDefinition": "gs://x/automl_tabular_1.0.0.yaml"},
    )
    assert r.status_code == 400 and "AutoML" in r.json()["error"]["message"]
    r = httpx.get(f"{srv.url}/v1/{PARENT}/customJobs/123")
    assert r.status_code == 404 and r.json()["error"]["status"] == "NOT_FOUND"
    listed = httpx.get(f"{srv.url}/v1/{PARENT}/customJobs", params={"filter": 'display_name="bad"'}).json()
    assert listed.get("customJobs", []) == []


def test_rest_pipeline_with_warehouse_table_gets_data_variables(srv: ServerProcess) -> None:
    code = (
        "import os\nfor k in sorted(os.environ):\n    k.startswith('AIP_') and print(k, '=', os.environ[k])"
    )
    body = {
        "displayName": "with-data",
        "trainingTaskDefinition": "gs://google-cloud-aiplatform/schema/trainingjob/definition/custom_task_1.0.0.yaml",
        "trainingTaskInputs": {
            "workerPoolSpecs": [
                {"replicaCount": "1", "containerSpec": {"imageUri": IMAGE, "command": ["python", "-c", code]}}
            ],
            "baseOutputDirectory": {"outputUriPrefix": "gs://staging-bucket/with-data"},
        },
        "inputDataConfig": {"warehouseTable": {"training": f"bq://{P}.ds.train", "test": f"{P}.ds.test"}},
    }
    created = _post(srv, "trainingPipelines", body)
    assert created.status_code == 200, created.text
    name = created.json()["name"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        got = httpx.get(f"{srv.url}/v1/{name}").json()
        if got["state"] in ("PIPELINE_STATE_SUCCEEDED", "PIPELINE_STATE_FAILED"):
            break
        time.sleep(0.2)
    assert got["state"] == "PIPELINE_STATE_SUCCEEDED", got
    text = httpx.get(f"{srv.url}/v1/{name}:logs").text
    assert "AIP_DATA_FORMAT = bigquery" in text
    assert f"AIP_TRAINING_DATA_URI = bq://{P}.ds.train" in text
    assert f"AIP_TEST_DATA_URI = bq://{P}.ds.test" in text
    assert "AIP_MODEL_DIR = gs://staging-bucket/with-data/model/" in text
    bad = dict(body, inputDataConfig={"datasetId": "123"})
    r = _post(srv, "trainingPipelines", bad)
    assert r.status_code == 404 and "datasets/123 does not exist" in r.json()["error"]["message"]


def _cli(srv: ServerProcess, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LOOPML_URL=srv.url, LOOPML_PROJECT=P, COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "loopml", "jobs", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_submit_follow_list_cancel(srv: ServerProcess, tmp_path: Path) -> None:
    script = tmp_path / "hello.py"
    script.write_text("import os\nprint('hello from', os.environ['CLOUD_ML_JOB_ID'])\n")
    done = _cli(srv, "submit", "--script", str(script), "--executor-image", IMAGE, "--follow")
    assert done.returncode == 0, done.stderr + done.stdout
    assert "hello from" in done.stdout and "JOB_STATE_SUCCEEDED" in done.stdout

    failed = _cli(
        srv, "submit", "--image", IMAGE, "--command", "python -c 'import sys; sys.exit(3)'", "--follow"
    )
    assert failed.returncode == 1
    assert "non-zero status of 3" in failed.stderr

    marker = f"cli-cancel-{time.time_ns()}"
    started = _cli(
        srv,
        "submit",
        "--image",
        IMAGE,
        "--command",
        f"python -c 'import time  # {marker}\ntime.sleep(600)'",
        "--json",
    )
    assert started.returncode == 0, started.stderr
    name = json.loads(started.stdout)["name"]
    deadline = time.monotonic() + 60
    while not job_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    cancelled = _cli(srv, "cancel", name.rsplit("/", 1)[1])
    assert cancelled.returncode == 0, cancelled.stderr
    assert "JOB_STATE_CANCELLED" in cancelled.stdout
    assert job_processes(marker) == []

    listed = _cli(srv, "list", "--json")
    states = {j["name"]: j["state"] for j in json.loads(listed.stdout)}
    assert states[name] == "JOB_STATE_CANCELLED"
    logs = _cli(srv, "logs", name.rsplit("/", 1)[1])
    assert "starting workerpool0-0" in logs.stdout
    missing = _cli(srv, "describe", "999")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    missing = _cli(srv, "logs", "999")  # neither kind: the message names both, not just pipelines
    assert missing.returncode == 2
    assert "Custom job or training pipeline 999 does not exist in projects/" in " ".join(
        missing.stderr.split()
    )


def test_server_crash_never_leaves_a_job_running(tmp_path: Path) -> None:
    server = ServerProcess(home=tmp_path / "home", port=free_port(), env={"LOOPML_PREBUILT_ENVS": "host"})
    server.start()
    try:
        marker = f"crash-{time.time_ns()}"
        body = {
            "displayName": "long",
            "jobSpec": {
                "workerPoolSpecs": [
                    {
                        "containerSpec": {
                            "imageUri": IMAGE,
                            "command": ["python", "-c", f"import time  # {marker}\ntime.sleep(600)"],
                        }
                    }
                ]
            },
        }
        job = _post(server, "customJobs", body).json()
        deadline = time.monotonic() + 60
        while not job_processes(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert job_processes(marker)
        while httpx.get(f"{server.url}/v1/{job['name']}").json()["state"] != "JOB_STATE_RUNNING":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        server.kill()  # SIGKILL: the job dies with it (PR_SET_PDEATHSIG)
        deadline = time.monotonic() + 10
        while job_processes(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert job_processes(marker) == []
        server.start()
        after = httpx.get(f"{server.url}/v1/{job['name']}").json()
        assert after["state"] == "JOB_STATE_FAILED"
        assert "server stopped while this job was running" in after["error"]["message"]
    finally:
        server.stop()


def test_cli_logs_follow_streams_a_running_job_until_it_ends(srv: ServerProcess, tmp_path: Path) -> None:
    """`loopml jobs logs -f` shows output as it is written and returns when the job ends.

    The job prints a line, then waits for a file the test creates only after the follower has
    shown that line (no timing): the follower must still be running then, and must print the
    second line and the final state before it exits.
    """
    gate = tmp_path / "go-on"
    code = (
        "import os, sys, time\n"
        "print('first line', flush=True)\n"
        f"while not os.path.exists({str(gate)!r}):\n"
        "    time.sleep(0.05)\n"
        "print('second line', flush=True)\n"
    )
    script = tmp_path / "gated.py"
    script.write_text(code)
    started = _cli(srv, "submit", "--image", IMAGE, "--command", f"python {script}", "--json")
    assert started.returncode == 0, started.stderr
    job_id = json.loads(started.stdout)["name"].rsplit("/", 1)[1]
    env = dict(os.environ, LOOPML_URL=srv.url, LOOPML_PROJECT=P, COLUMNS="200")
    follower = subprocess.Popen(
        [sys.executable, "-m", "loopml", "jobs", "logs", job_id, "-f"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        seen: list[str] = []
        deadline = time.monotonic() + 120
        while not any("first line" in line for line in seen):
            assert time.monotonic() < deadline, "".join(seen)
            line = follower.stdout.readline()
            assert line, "the follower stopped before the job's first line: " + "".join(seen)
            seen.append(line)
        assert follower.poll() is None, "the follower returned while the job was still running"
        assert not any("second line" in line for line in seen)
        gate.write_text("")  # let the job finish
        rest, errors = follower.communicate(timeout=120)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert follower.returncode == 0, errors
    assert "second line" in rest and rest.index("second line") < rest.index("JOB_STATE_SUCCEEDED")
