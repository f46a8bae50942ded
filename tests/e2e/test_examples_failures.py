"""Failure cases with real images built by `loopml images build`, driven through the Vertex SDK.

A serving container that never gets healthy, one that dies under traffic, and an image whose
Dockerfile needs the system package manager. Each ends in a clear state and message, and no
process of the deployment is left behind.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerProcess, free_port
from tests.e2e.examples_support import build_image, processes_under

P, L = "fail-project", "us-central1"

SERVER = textwrap.dedent(
    '''
    """A tiny custom container: stdlib HTTP server following the Vertex serving contract."""
    import json, os, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    MODE = os.environ.get("MODE", "ok")

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if MODE == "unhealthy":
                self._send(500, {"error": "still warming up, forever"})
            else:
                self._send(200, {"status": "healthy"})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
            instances = body.get("instances", [])
            if any(isinstance(i, dict) and i.get("die") for i in instances):
                os._exit(3)
            self._send(200, {"predictions": [len(instances)] * len(instances), "pid": os.getpid()})

        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", int(os.environ["AIP_HTTP_PORT"])), Handler).serve_forever()
    '''
)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(
        home=tmp_path_factory.mktemp("fail-home"),
        port=free_port(),
        env={"LOOPML_REPLICA_START_TIMEOUT_S": "15"},
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def image(srv: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> str:
    context = tmp_path_factory.mktemp("tiny-server")
    (context / "server.py").write_text(SERVER)
    (context / "Dockerfile").write_text(
        'FROM python:3.11-slim\nWORKDIR /srv\nCOPY server.py .\nEXPOSE 8080\nCMD ["python", "server.py"]\n'
    )
    built = build_image(srv, context, "tiny/server:1")
    assert built.returncode == 0, built.stdout + built.stderr
    return "tiny/server:1"


@pytest.fixture()
def sdk(srv: ServerProcess) -> Any:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import aiplatform

    aiplatform.init(
        project=P, location=L, api_endpoint=srv.url, api_transport="rest", credentials=AnonymousCredentials()
    )
    return aiplatform


def _upload(sdk: Any, image: str, mode: str) -> Any:
    return sdk.Model.upload(
        display_name=f"tiny-{mode}",
        serving_container_image_uri=image,
        serving_container_predict_route="/predict",
        serving_container_health_route="/health",
        serving_container_environment_variables={"MODE": mode},
    )


def test_never_healthy_deploy_fails_clearly_and_leaves_nothing(
    sdk: Any, srv: ServerProcess, image: str
) -> None:
    model = _upload(sdk, image, "unhealthy")
    endpoint = sdk.Endpoint.create(display_name="never-healthy")
    with pytest.raises(Exception) as info:
        endpoint.deploy(model, machine_type="n1-standard-2", min_replica_count=1, max_replica_count=1)
    message = str(info.value).lower()
    assert "health" in message or "ready" in message, info.value
    deployed = httpx.get(f"{srv.url}/v1/{endpoint.resource_name}").json().get("deployedModels", [])
    assert deployed == []
    time.sleep(1)
    assert processes_under(srv.home) == []
    endpoint.delete()


def test_container_that_dies_under_traffic_is_restarted(sdk: Any, srv: ServerProcess, image: str) -> None:
    model = _upload(sdk, image, "ok")
    endpoint = model.deploy(machine_type="n1-standard-2", min_replica_count=1, max_replica_count=1)
    url = f"{srv.url}/v1/{endpoint.resource_name}:predict"
    assert endpoint.predict(instances=[{"x": 1}, {"x": 2}]).predictions == [2, 2]
    first_pid = httpx.post(url, json={"instances": [{"x": 1}]}, timeout=30).json()
    died = httpx.post(url, json={"instances": [{"die": True}]}, timeout=30)
    assert died.status_code >= 500 and "error" in died.json()
    deadline = time.monotonic() + 60
    answer: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = httpx.post(url, json={"instances": [{"x": 1}]}, timeout=30)
        if r.status_code == 200:
            answer = r.json()
            break
        time.sleep(0.5)
    assert answer.get("predictions") == [1], "the replica was not restarted"
    assert first_pid.get("predictions") == [1]
    endpoint.undeploy_all()
    endpoint.delete()
    time.sleep(1)
    assert processes_under(srv.home) == []


def test_image_with_apt_get_fails_with_imgs_message(srv: ServerProcess, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(
        'FROM python:3.11-slim\nRUN apt-get update && apt-get install -y libgomp1\nCMD ["python", "-c", "print(1)"]\n'
    )
    built = build_image(srv, tmp_path, "needs/apt:1")
    assert built.returncode != 0
    assert "apt-get" in built.stdout + built.stderr
    r = httpx.post(
        f"{srv.url}/v1/projects/{P}/locations/{L}/customJobs",
        json={
            "displayName": "x",
            "jobSpec": {"workerPoolSpecs": [{"containerSpec": {"imageUri": "needs/apt:1"}}]},
        },
    )
    assert r.status_code == 400 and "loopml images build" in r.json()["error"]["message"]
