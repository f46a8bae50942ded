"""Custom serving containers as host processes with the Vertex env contract (vertex-api.md §8)."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.e2e.serving_helpers import PARENT, call, create_endpoint, replica_count, replica_pids, wait_for

SERVER_SCRIPT = r"""
import json, os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(os.environ["AIP_HTTP_PORT"])
HEALTH = os.environ["AIP_HEALTH_ROUTE"]
PREDICT = os.environ["AIP_PREDICT_ROUTE"]
NEVER_HEALTHY = os.environ.get("NEVER_HEALTHY") == "1"
probes = {"n": 0}
time.sleep(0.3)  # a slow start: the platform must wait for the health route


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, status, body, ctype="application/json"):
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path != HEALTH:
            return self._send(404, b"{}")
        probes["n"] += 1
        ready = probes["n"] > 3 and not NEVER_HEALTHY
        self._send(200 if ready else 503, b"{}")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path != PREDICT:
            return self._send(404, b"{}")
        if probes["n"] <= 3:
            return self._send(500, b'{"error": "predict before the health check passed"}')
        ctype = self.headers.get("content-type", "")
        if ctype.startswith("text/plain"):
            return self._send(200, b"raw:" + body, "text/plain")
        data = json.loads(body)
        env = {k: v for k, v in os.environ.items() if k.startswith("AIP_") or k == "GREETING"}
        out = {"predictions": [sum(i) for i in data["instances"]], "env": env, "pid": os.getpid()}
        self._send(200, json.dumps(out).encode())

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
"""


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.conftest import ServerProcess, free_port

    s = ServerProcess(
        home=tmp_path_factory.mktemp("serve-containers"),
        port=free_port(),
        env={"LOOPML_REPLICA_START_TIMEOUT_S": "8"},
    )
    s.start()
    yield s
    s.stop()


def _upload(srv: Any, model_id: str, script: Path, env: list[dict[str, str]]) -> None:
    art = srv.home / "buckets" / "ctr-bucket" / model_id / "assets"
    art.mkdir(parents=True)
    (art / "vocab.txt").write_text("a b c")
    container = {
        "imageUri": "example.com/tiny-server:1",
        "command": [sys.executable, str(script)],
        "env": env,
    }
    model = {
        "displayName": model_id,
        "artifactUri": f"gs://ctr-bucket/{model_id}",
        "containerSpec": container,
    }
    op = call(srv.url, "POST", f"{PARENT}/models:upload", json={"model": model, "modelId": model_id})
    assert op["done"] and "error" not in op, op


def _deploy(srv: Any, endpoint: str, model_id: str) -> dict[str, Any]:
    body = {
        "deployedModel": {
            "model": f"{PARENT}/models/{model_id}",
            "dedicatedResources": {"machineSpec": {"machineType": "n1-standard-4"}, "minReplicaCount": 1},
        },
        "trafficSplit": {"0": 100},
    }
    r = httpx.post(f"{srv.url}/v1/{endpoint}:deployModel", json=body, timeout=120)
    return {"status": r.status_code, **r.json()}


def test_custom_container_lifecycle(srv: Any, tmp_path: Path) -> None:
    script = tmp_path / "tiny_server.py"
    script.write_text(SERVER_SCRIPT)
    _upload(srv, "tiny", script, [{"name": "GREETING", "value": "hi"}])
    ep = create_endpoint(srv.url, "tiny-ep")
    op = _deploy(srv, ep, "tiny")
    assert op["status"] == 200 and op.get("done") and "error" not in op, op
    dm_id = op["response"]["deployedModel"]["id"]

    # healthy before traffic: the very first request after deploy is answered by a ready server
    r = httpx.post(f"{srv.url}/v1/{ep}:predict", json={"instances": [[1, 2], [3, 4]]}, timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["predictions"] == [3, 7]
    assert out["deployedModelId"] == dm_id and out["modelVersionId"] == "1"
    env = out["env"]
    assert env["AIP_DEPLOYED_MODEL_ID"] == dm_id and env["AIP_ENDPOINT_ID"] == "tiny-ep"
    assert env["AIP_PREDICT_ROUTE"] == f"/v1/endpoints/tiny-ep/deployedModels/{dm_id}:predict"
    assert env["AIP_HEALTH_ROUTE"] == f"/v1/endpoints/tiny-ep/deployedModels/{dm_id}"
    assert env["AIP_FRAMEWORK"] == "CUSTOM_CONTAINER" and env["AIP_MODE"] == "PREDICTION"
    assert env["AIP_MACHINE_TYPE"] == "n1-standard-4" and env["GREETING"] == "hi"
    storage = env["AIP_STORAGE_URI"]
    assert storage.startswith("gs://")
    copied = srv.home / "buckets" / storage[len("gs://") :] / "assets" / "vocab.txt"
    assert copied.read_text() == "a b c"  # a copy, with its sub-directories

    raw = httpx.post(
        f"{srv.url}/v1/{ep}:rawPredict", content=b"hello", headers={"content-type": "text/plain"}, timeout=30
    )
    assert raw.status_code == 200 and raw.content == b"raw:hello"
    assert raw.headers["content-type"].startswith("text/plain")
    assert raw.headers["x-vertex-ai-deployed-model-id"] == dm_id
    assert raw.headers["x-vertex-ai-endpoint-id"] == "tiny-ep"

    # a crash is seen, logged and the replica restarted
    first_pid = out["pid"]
    assert srv.proc is not None and first_pid in replica_pids(srv.proc.pid, "tiny_server.py")
    psutil.Process(first_pid).send_signal(signal.SIGKILL)

    def answered_by_new_process() -> bool:
        r = httpx.post(f"{srv.url}/v1/{ep}:predict", json={"instances": [[1]]}, timeout=30)
        return r.status_code == 200 and r.json()["pid"] != first_pid

    wait_for(answered_by_new_process, timeout=60, interval=0.3)
    assert replica_count(srv.url, ep, dm_id) == 1
    assert "restarting replica" in srv.tail(200)

    call(srv.url, "POST", f"{ep}:undeployModel", json={"deployedModelId": dm_id})
    wait_for(lambda: not replica_pids(srv.proc.pid, "tiny_server.py"), timeout=30)


def test_never_healthy_container_fails_deploy_and_leaves_nothing(srv: Any, tmp_path: Path) -> None:
    script = tmp_path / "sick_server.py"
    script.write_text(SERVER_SCRIPT)
    _upload(srv, "sick", script, [{"name": "NEVER_HEALTHY", "value": "1"}])
    ep = create_endpoint(srv.url, "sick-ep")
    started = time.monotonic()
    op = _deploy(srv, ep, "sick")
    message = str(op.get("error", {}).get("message", "")) or str(op)
    assert "did not become healthy" in message, op
    assert time.monotonic() - started < 100
    assert srv.proc is not None and not replica_pids(srv.proc.pid, "sick_server.py")
    assert call(srv.url, "GET", ep).get("deployedModels", []) == []


def test_replicas_die_with_a_killed_server(server_factory: Any, tmp_path: Path) -> None:
    from tests.e2e.serving_helpers import deploy, save, train, upload

    srv = server_factory()
    script = tmp_path / "orphan_server.py"
    script.write_text(SERVER_SCRIPT)
    _upload(srv, "orphan", script, [])
    ep = create_endpoint(srv.url, "orphan-ep")
    assert _deploy(srv, ep, "orphan").get("done")
    upload(srv.url, "builtin", save(srv.home, train()[0], "builtin"))
    deploy(srv.url, ep, "builtin", split={})
    assert srv.proc is not None
    pids = replica_pids(srv.proc.pid, "orphan_server.py") + replica_pids(srv.proc.pid)
    assert len(pids) == 2
    srv.kill()  # SIGKILL: the server cannot clean up; PR_SET_PDEATHSIG takes the replicas down

    def alive(pid: int) -> bool:
        try:  # a process can exit between any two of these calls
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def all_gone() -> bool:
        return not any(alive(p) for p in pids)

    wait_for(all_gone, timeout=20)


IMAGE_SERVER = r"""
import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(os.environ["SERVE_PORT"])  # ignores AIP_HTTP_PORT, as hard-coded workshop servers do


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, status, body):
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._send(200 if self.path == os.environ["AIP_HEALTH_ROUTE"] else 404, b"{}")

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        env = {k: os.environ.get(k) for k in ("AIP_PREDICT_ROUTE", "AIP_HTTP_PORT", "GREETING", "PATH")}
        self._send(200, json.dumps({"predictions": [env], "cwd": os.getcwd()}).encode())

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
"""

DOCKERFILE = """\
FROM python:3.11-slim
WORKDIR /app
COPY server.py .
ENV GREETING=from-image AIP_PREDICT_ROUTE=/not-this-one
CMD ["python", "server.py"]
"""


def test_container_from_a_built_image(srv: Any, tmp_path: Path) -> None:
    import os
    import subprocess

    from tests.conftest import free_port

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    (ctx / "server.py").write_text(IMAGE_SERVER)
    env = dict(os.environ, LOOPML_HOME=str(srv.home))
    built = subprocess.run(
        [sys.executable, "-m", "loopml", "images", "build", "-t", "gcr.io/p/echo:v1", str(ctx)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    serve_port, declared = free_port(), free_port()
    container = {
        "imageUri": "gcr.io/p/echo:v1",
        "env": [{"name": "SERVE_PORT", "value": str(serve_port)}],
        "ports": [{"containerPort": declared}],
    }
    model = {"displayName": "echo", "containerSpec": container}
    op = call(srv.url, "POST", f"{PARENT}/models:upload", json={"model": model, "modelId": "echo"})
    assert "error" not in op, op
    ep = create_endpoint(srv.url, "echo-ep")
    op = _deploy(srv, ep, "echo")
    assert op["status"] == 200 and "error" not in op, op
    dm_id = op["response"]["deployedModel"]["id"]
    r = httpx.post(f"{srv.url}/v1/{ep}:predict", json={"instances": [1]}, timeout=30)
    assert r.status_code == 200, r.text
    seen = r.json()["predictions"][0]
    assert (
        seen["AIP_PREDICT_ROUTE"] == f"/v1/endpoints/echo-ep/deployedModels/{dm_id}:predict"
    )  # platform wins
    assert seen["AIP_HTTP_PORT"] == str(declared)  # the declared containerPort, free here
    assert seen["GREETING"] == "from-image"
    assert seen["PATH"].split(":")[0].startswith(str(srv.home))  # the image's env bin dir first
    assert r.json()["cwd"].endswith("app")
    call(srv.url, "POST", f"{ep}:undeployModel", json={"deployedModelId": dm_id})


def test_hard_coded_port_taken_by_the_server_is_rewritten(srv: Any, tmp_path: Path) -> None:
    script = tmp_path / "flagged_server.py"
    script.write_text(
        IMAGE_SERVER.replace(
            'int(os.environ["SERVE_PORT"])', 'int(sys.argv[sys.argv.index("--port") + 1])'
        ).replace("import json, os", "import json, os, sys")
    )
    # The declared port (and the one on the command line) is the loopml server's own port.
    container = {
        "imageUri": "example.com/flagged:1",
        "command": [sys.executable, str(script), "--port", str(srv.port)],
        "ports": [{"containerPort": srv.port}],
    }
    model = {"displayName": "flagged", "containerSpec": container}
    assert "error" not in call(
        srv.url, "POST", f"{PARENT}/models:upload", json={"model": model, "modelId": "flagged"}
    )
    ep = create_endpoint(srv.url, "flagged-ep")
    op = _deploy(srv, ep, "flagged")
    assert op["status"] == 200 and "error" not in op, op
    r = httpx.post(f"{srv.url}/v1/{ep}:predict", json={"instances": [1]}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["AIP_HTTP_PORT"] != str(srv.port)
    call(
        srv.url,
        "POST",
        f"{ep}:undeployModel",
        json={"deployedModelId": op["response"]["deployedModel"]["id"]},
    )


# A server that, like the workshops' predictors, reads its model over loopml's own Cloud Storage
# API (STORAGE_EMULATOR_HOST) before it listens: it needs the loopml server to be serving.
FETCHING_SERVER = r"""
import json, os, urllib.parse, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

bucket, _, prefix = os.environ["AIP_STORAGE_URI"][len("gs://"):].partition("/")
name = urllib.parse.quote(prefix.rstrip("/") + "/weight.txt", safe="")
url = f"{os.environ['STORAGE_EMULATOR_HOST']}/storage/v1/b/{bucket}/o/{name}?alt=media"
WEIGHT = float(urllib.request.urlopen(url, timeout=30).read())


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, status, body):
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._send(200, b"{}")

    def do_POST(self):
        data = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        self._send(200, json.dumps({"predictions": [WEIGHT * sum(i) for i in data["instances"]]}).encode())

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(os.environ["AIP_HTTP_PORT"])), Handler).serve_forever()
"""


def test_restart_replays_a_container_that_loads_over_the_storage_api(
    server_factory: Any, tmp_path: Path
) -> None:
    srv = server_factory()
    script = tmp_path / "fetching_server.py"
    script.write_text(FETCHING_SERVER)
    art = srv.home / "buckets" / "ctr-bucket" / "fetching"
    art.mkdir(parents=True)
    (art / "weight.txt").write_text("2.5")
    model = {
        "displayName": "fetching",
        "artifactUri": "gs://ctr-bucket/fetching",
        "containerSpec": {"imageUri": "example.com/fetching:1", "command": [sys.executable, str(script)]},
    }
    op = call(srv.url, "POST", f"{PARENT}/models:upload", json={"model": model, "modelId": "fetching"})
    assert op["done"] and "error" not in op, op
    ep = create_endpoint(srv.url, "fetching-ep")
    assert _deploy(srv, ep, "fetching").get("done")
    predict = {"instances": [[1, 1]]}
    assert call(srv.url, "POST", f"{ep}:predict", json=predict)["predictions"] == [5.0]

    # The replay of this deployment needs the server's own storage API: the server must answer
    # while it replays, and report healthy only once the deployment serves again.
    started = time.monotonic()
    srv.restart()
    assert time.monotonic() - started < 60, "restart took too long: the replay blocked start-up"
    assert call(srv.url, "POST", f"{ep}:predict", json=predict)["predictions"] == [5.0]
    assert replica_count(srv.url, ep, call(srv.url, "GET", ep)["deployedModels"][0]["id"]) == 1
    call(
        srv.url,
        "POST",
        f"{ep}:undeployModel",
        json={"deployedModelId": call(srv.url, "GET", ep)["deployedModels"][0]["id"]},
    )
