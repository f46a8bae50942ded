"""W4 end to end: build the trainer and Flask images, CustomContainerTrainingJob.run (model upload
from AIP_MODEL_DIR), deploy, and predict through the SDK and gapic with protobuf Values.

Also the python-package route: the same `trainer` package as an sdist in the store, run by
CustomPythonPackageTrainingJob on a prebuilt executor image.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

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
P = "aq-project"
CONTEXT = EXAMPLES / "air_quality"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(shared_home(tmp_path_factory))
    yield server
    server.stop()


def test_air_quality_container_training_and_serving(
    srv: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    for sub, tag in (("training", "air-quality/trainer:1"), ("serving", "air-quality/server:1")):
        built = build_image(srv, CONTEXT / sub, tag)
        assert built.returncode == 0, built.stdout + built.stderr
    monkeypatch.setenv("LOOPML_URL", srv.url)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", srv.url)  # the driver uploads the fixture
    monkeypatch.setenv("PROJECT_ID", P)
    run = load_module(CONTEXT / "run.py", "aq_run")
    fast_sdk_polling()
    result = run.main()

    [prediction] = result["predictions"]
    assert isinstance(prediction["result"], float)
    model_dir = srv.home / "buckets" / f"{P}-air-quality" / "training" / "model"
    assert (model_dir / "normalization_stats.json").is_file()
    assert len(list(model_dir.glob("model_*.pkl"))) == 1
    pipeline = httpx.get(f"{srv.url}/v1/{result['pipeline']}").json()
    assert pipeline["state"] == "PIPELINE_STATE_SUCCEEDED"
    assert pipeline["modelToUpload"]["name"] == result["model"]
    model = httpx.get(f"{srv.url}/v1/{result['model']}").json()
    assert model["artifactUri"].endswith("/training/model/")

    # gapic with protobuf Values, as the workshop's inference.py does
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud.aiplatform_v1 import PredictionServiceClient
    from google.protobuf import json_format
    from google.protobuf.struct_pb2 import Value

    client = PredictionServiceClient(
        client_options=ClientOptions(api_endpoint=srv.url),
        transport="rest",
        credentials=AnonymousCredentials(),
    )
    instance = json_format.ParseDict(run.SAMPLE, Value())
    response = client.predict(
        endpoint=result["endpoint"], instances=[instance], parameters=json_format.ParseDict({}, Value())
    )
    assert response.predictions[0]["result"] == pytest.approx(prediction["result"])
    undeploy_everything(result["endpoint"])
    assert processes_under(srv.home) == []


def test_air_quality_as_python_package(srv: ServerProcess, tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(dist)],
        cwd=CONTEXT / "training",
        check=True,
        capture_output=True,
    )
    [sdist] = list(dist.glob("*.tar.gz"))
    target = srv.home / "buckets" / f"{P}-code" / "code" / sdist.name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(sdist.read_bytes())
    data = srv.home / "buckets" / f"{P}-code" / "data" / "aq.csv"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_bytes((CONTEXT / "data" / "AirQualityUCI_2004-04.csv").read_bytes())

    from google.auth.credentials import AnonymousCredentials
    from google.cloud import aiplatform

    aiplatform.init(
        project=P,
        location="us-east1",
        api_endpoint=srv.url,
        api_transport="rest",
        credentials=AnonymousCredentials(),
        staging_bucket=f"gs://{P}-code",
    )
    fast_sdk_polling()
    job = aiplatform.CustomPythonPackageTrainingJob(
        display_name="aq-package",
        python_package_gcs_uri=f"gs://{P}-code/code/{sdist.name}",
        python_module_name="trainer.task",
        container_uri="us-docker.pkg.dev/vertex-ai/training/sklearn-cpu.1-0:latest",
    )
    out = job.run(
        args=["--data-uri", f"gs://{P}-code/data/aq.csv"],
        base_output_dir=f"gs://{P}-code/pkg-run",
        replica_count=1,
        timeout=600,
    )
    assert out is None  # no serving image given: nothing to upload
    assert job.state.name == "PIPELINE_STATE_SUCCEEDED"
    written = list((srv.home / "buckets" / f"{P}-code" / "pkg-run" / "model").glob("model_*.pkl"))
    assert len(written) == 1
