"""`LOOPML_CONTAINER_ENGINE=docker`: custom jobs and serving containers run with `docker run`.

No Docker engine runs on the development machines, so the engine (the true outer boundary) is
`tests/fake_docker.py`, first on the server's PATH: it checks the flags loopml passes, runs the
"image" (a JSON map image → argv) as a process with only the container's environment, and keeps
its containers in a state directory the tests read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from loopml.images.docker import home_hash
from tests import fake_docker
from tests.conftest import ServerProcess, free_port
from tests.e2e.serving_helpers import PARENT, call, create_endpoint, wait_for

TRAINER = r"""
import json, os, sys, time, urllib.parse, urllib.request

mode = sys.argv[1] if len(sys.argv) > 1 else "ok"
print("trainer starting in mode", mode, flush=True)
if mode == "fail":
    print("trainer blew up: learning rate must be positive", flush=True)
    sys.exit(3)
if mode == "sleep":
    time.sleep(300)
bucket, _, prefix = os.environ["AIP_MODEL_DIR"][len("gs://"):].partition("/")
name = urllib.parse.quote(prefix + "env.json", safe="")
url = f"{os.environ['STORAGE_EMULATOR_HOST']}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={name}"
body = json.dumps(dict(os.environ)).encode()
req = urllib.request.Request(url, data=body, method="POST", headers={"content-type": "application/json"})
urllib.request.urlopen(req, timeout=30).read()
print("model written", flush=True)
"""

SERVER = r"""
import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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
        data = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        env = {k: v for k, v in os.environ.items()}
        out = {"predictions": [sum(i) for i in data["instances"]], "env": env, "pid": os.getpid()}
        self._send(200, json.dumps(out).encode())

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(os.environ["AIP_HTTP_PORT"])), Handler).serve_forever()
"""

TRAINER_IMAGE = "registry.example.com/team/trainer:1"
SERVER_IMAGE = "registry.example.com/team/echo:1"
CRASH_IMAGE = "registry.example.com/team/crash:1"
SECRET = "tok-9f8e7d6c5b4a-do-not-log"


@pytest.fixture(scope="module")
def docker(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fake-docker")
    (root / "trainer.py").write_text(TRAINER)
    (root / "server.py").write_text(SERVER)
    images = {
        TRAINER_IMAGE: {"entrypoint": [sys.executable, str(root / "trainer.py")], "cmd": ["ok"]},
        SERVER_IMAGE: {"cmd": [sys.executable, str(root / "server.py")], "env": {"GREETING": "from-image"}},
        CRASH_IMAGE: {
            "cmd": [sys.executable, "-c", "import sys; print('model server crashed'); sys.exit(4)"]
        },
    }
    exe = fake_docker.install(root / "bin", root / "state", images)
    return {"bin": exe.parent, "state": root / "state", "exe": exe}


def _env(docker: dict[str, Path]) -> dict[str, str]:
    return {
        "PATH": f"{docker['bin']}:{os.environ['PATH']}",
        "LOOPML_CONTAINER_ENGINE": "docker",
        "LOOPML_JOB_KILL_GRACE_S": "2",
        "LOOPML_REPLICA_START_TIMEOUT_S": "20",
    }


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, docker: dict[str, Path]) -> Iterator[ServerProcess]:
    server = ServerProcess(home=tmp_path_factory.mktemp("docker-home"), port=free_port(), env=_env(docker))
    server.start()
    (server.home / "buckets" / "dk-bucket").mkdir(parents=True, exist_ok=True)
    yield server
    server.stop()
    assert fake_docker.containers(docker["state"]) == {}  # a stopped server leaves no container


def _job_body(name: str, args: list[str] | None = None, image: str = TRAINER_IMAGE) -> dict[str, Any]:
    spec: dict[str, Any] = {"imageUri": image, "env": [{"name": "LR", "value": "0.1"}]}
    if args is not None:
        spec["args"] = args
    return {
        "displayName": name,
        "jobSpec": {
            "workerPoolSpecs": [
                {"machineSpec": {"machineType": "n1-standard-4"}, "replicaCount": "1", "containerSpec": spec}
            ],
            "baseOutputDirectory": {"outputUriPrefix": f"gs://dk-bucket/{name}"},
        },
    }


def _job(srv: ServerProcess, name: str, args: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    body = _job_body(name, args)
    body["jobSpec"].update(extra)
    r = httpx.post(f"{srv.url}/v1/{PARENT}/customJobs", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _wait_state(
    srv: ServerProcess, job: dict[str, Any], states: set[str], timeout: float = 60
) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        got = call(srv.url, "GET", job["name"])
        return got if got["state"] in states else None

    return dict(wait_for(done, timeout=timeout, interval=0.2))


def _runs(state: Path, name: str) -> list[dict[str, Any]]:
    return [e for e in fake_docker.events(state) if e.get("name") == name]


def test_job_on_a_docker_image_writes_its_model(srv: ServerProcess, docker: dict[str, Path]) -> None:
    job = _job(srv, "dk-ok")
    done = _wait_state(srv, job, {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED"})
    assert done["state"] == "JOB_STATE_SUCCEEDED", done
    job_id = job["name"].rsplit("/", 1)[1]
    written = srv.home / "buckets" / "dk-bucket" / "dk-ok" / "model" / "env.json"
    env = json.loads(written.read_text())  # written through the storage API from "inside" the container
    assert env["AIP_MODEL_DIR"] == "gs://dk-bucket/dk-ok/model/" and env["LR"] == "0.1"
    assert env["CLOUD_ML_JOB_ID"] == job_id and env["STORAGE_EMULATOR_HOST"] == srv.url
    assert env["LOOPML_GCS_ROOT"] == "/gcs"
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin"  # the image's, not the host's
    assert "VIRTUAL_ENV" not in env and "LOOPML_HOME" not in env
    name = _cname(srv, "job", job_id)
    run = _runs(docker["state"], name)[0]
    assert run["event"] == "run" and run["image"] == TRAINER_IMAGE
    assert run["argv"][-1] == "ok"  # the image's ENTRYPOINT + CMD
    assert run["labels"]["loopml.kind"] == "job" and run["labels"]["loopml.home"]
    assert run["mounts"] == [f"{srv.home / 'buckets'}:/gcs"]
    assert run["user"] == f"{os.getuid()}:{os.getgid()}"  # what it writes under /gcs stays ours
    log = (srv.home / "logs" / "jobs" / f"{job_id}.log").read_text()
    assert "model written" in log and "docker" in log
    assert name not in fake_docker.containers(docker["state"])


def test_image_built_with_engine_docker_runs_as_a_job(
    srv: ServerProcess, docker: dict[str, Path], tmp_path: Path
) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "trainer.py").write_text(TRAINER)
    (ctx / "Dockerfile").write_text(
        'FROM python:3.11-slim\nWORKDIR /app\nCOPY trainer.py .\nENTRYPOINT ["python", "trainer.py"]\n'
    )
    env = dict(os.environ, LOOPML_HOME=str(srv.home), PATH=f"{docker['bin']}:{os.environ['PATH']}")
    tag = "us-central1-docker.pkg.dev/p/repo/built:v1"
    built = subprocess.run(
        [sys.executable, "-m", "loopml", "images", "build", "--engine", "docker", "-t", tag, str(ctx)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr
    assert "LOOPML_CONTAINER_ENGINE=docker" in built.stderr
    assert [e for e in fake_docker.events(docker["state"]) if e["event"] == "build"][-1]["tags"] == [tag]
    body = _job_body("dk-built", ["ok"], image=tag)
    r = httpx.post(f"{srv.url}/v1/{PARENT}/customJobs", json=body, timeout=60)
    assert r.status_code == 200, r.text
    done = _wait_state(srv, r.json(), {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED"})
    assert done["state"] == "JOB_STATE_SUCCEEDED", done
    written = srv.home / "buckets" / "dk-bucket" / "dk-built" / "model" / "env.json"
    assert json.loads(written.read_text())["CLOUD_ML_JOB_ID"] == done["name"].rsplit("/", 1)[1]


def test_failing_docker_job_is_failed_with_its_log_tail(srv: ServerProcess, docker: dict[str, Path]) -> None:
    job = _job(srv, "dk-fail", ["fail"])
    done = _wait_state(srv, job, {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED"})
    assert done["state"] == "JOB_STATE_FAILED"
    message = done["error"]["message"]
    assert "non-zero status of 3" in message and "learning rate must be positive" in message
    assert fake_docker.containers(docker["state"]) == {}


def test_env_values_are_in_no_log_error_or_command_line(srv: ServerProcess, docker: dict[str, Path]) -> None:
    body = _job_body("dk-secret", ["fail"])
    body["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]["env"].append({"name": "API_KEY", "value": SECRET})
    r = httpx.post(f"{srv.url}/v1/{PARENT}/customJobs", json=body, timeout=60)
    assert r.status_code == 200, r.text
    done = _wait_state(srv, r.json(), {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED"})
    assert done["state"] == "JOB_STATE_FAILED" and "learning rate" in done["error"]["message"]
    assert SECRET not in json.dumps(done["error"])  # (the jobSpec echoes env, as on Vertex)
    job_id = done["name"].rsplit("/", 1)[1]
    log = (srv.home / "logs" / "jobs" / f"{job_id}.log").read_text()
    assert "-e API_KEY" in log and SECRET not in log
    run = _runs(docker["state"], _cname(srv, "job", job_id))[0]
    assert run["env"]["API_KEY"] == SECRET  # the container got it, by name
    assert SECRET not in json.dumps(run["cli"]) and "API_KEY" in run["cli"]

    # a deploy whose container exits: the error quotes the replica log, which has no value
    model = {
        "displayName": "dk-crash",
        "containerSpec": {"imageUri": CRASH_IMAGE, "env": [{"name": "API_KEY", "value": SECRET}]},
    }
    call(srv.url, "POST", f"{PARENT}/models:upload", json={"model": model, "modelId": "dk-crash"})
    ep = create_endpoint(srv.url, "dk-crash-ep")
    deploy = {"deployedModel": {"model": f"{PARENT}/models/dk-crash"}, "trafficSplit": {"0": 100}}
    r = httpx.post(f"{srv.url}/v1/{ep}:deployModel", json=deploy, timeout=60)
    assert r.status_code == 200, r.text
    op = r.json()
    if not op.get("done"):
        op = wait_for(lambda: (o := call(srv.url, "GET", r.json()["name"])).get("done") and o)
    assert op["error"]["code"] == 9, op
    text = json.dumps(op)
    assert "model server crashed" in text and SECRET not in text
    crash = [e for e in fake_docker.events(docker["state"]) if e.get("image") == CRASH_IMAGE]
    assert crash and crash[0]["env"]["API_KEY"] == SECRET and SECRET not in json.dumps(crash[0]["cli"])
    logs = "".join(p.read_text() for p in (srv.home / "logs" / "replicas").glob("*.log"))
    assert "-e API_KEY" in logs and SECRET not in logs
    assert SECRET not in srv.tail(400)


def _cname(srv: ServerProcess, kind: str, ident: str) -> str:
    """The container name: `loopml-<kind>-<hash of the home, 12 chars>-<id>`."""
    return f"loopml-{kind}-{home_hash(srv.home)[:12]}-{ident}"


def test_a_file_the_server_may_not_change_is_a_named_400(srv: ServerProcess) -> None:
    """As a file a root container wrote under /gcs: delete and overwrite are 400s naming the
    cause (not an unexplained 500), and work again once the file is the server's."""
    url = f"{srv.url}/upload/storage/v1/b/dk-bucket/o?uploadType=media&name=ckpt/root-owned.bin"
    assert httpx.post(url, content=b"v1", timeout=30).status_code == 200
    path = srv.home / "buckets" / "dk-bucket" / "ckpt" / "root-owned.bin"
    # root ignores modes: an immutable file refuses unlink/replace (EPERM) even to root
    locked = ["chattr", "+i", str(path)] if os.geteuid() == 0 else ["chmod", "0555", str(path.parent)]
    unlocked = ["chattr", "-i", str(path)] if os.geteuid() == 0 else ["chmod", "0755", str(path.parent)]
    subprocess.run(locked, check=True)
    try:
        r = httpx.delete(f"{srv.url}/storage/v1/b/dk-bucket/o/ckpt%2Froot-owned.bin", timeout=30)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["status"] == "FAILED_PRECONDITION" and "no permission" in error["message"]
        assert str(srv.home) not in error["message"]
        r = httpx.post(url, content=b"v2", timeout=30)
        assert r.status_code == 400 and "no permission" in r.json()["error"]["message"], r.text
        assert path.read_bytes() == b"v1"
    finally:
        subprocess.run(unlocked, check=True)
    r = httpx.delete(f"{srv.url}/storage/v1/b/dk-bucket/o/ckpt%2Froot-owned.bin", timeout=30)
    assert r.status_code == 204, r.text
    assert not path.exists()


def test_cancel_stops_the_container(srv: ServerProcess, docker: dict[str, Path]) -> None:
    job = _job(srv, "dk-sleep", ["sleep"])
    _wait_state(srv, job, {"JOB_STATE_RUNNING"})
    name = _cname(srv, "job", job["name"].rsplit("/", 1)[1])
    record = wait_for(lambda: fake_docker.containers(docker["state"]).get(name), timeout=30)
    assert psutil.pid_exists(record["pid"])
    call(srv.url, "POST", f"{job['name']}:cancel", json={})
    done = _wait_state(srv, job, {"JOB_STATE_CANCELLED", "JOB_STATE_FAILED", "JOB_STATE_SUCCEEDED"})
    assert done["state"] == "JOB_STATE_CANCELLED"
    assert [e["event"] for e in _runs(docker["state"], name)][:3] == ["run", "stop", "exited"]
    assert name not in fake_docker.containers(docker["state"])
    assert not psutil.pid_exists(record["pid"]) or psutil.Process(record["pid"]).status() == "zombie"


def test_timeout_stops_the_container(srv: ServerProcess, docker: dict[str, Path]) -> None:
    job = _job(srv, "dk-timeout", ["sleep"], scheduling={"timeout": "2s"})
    done = _wait_state(srv, job, {"JOB_STATE_CANCELLED", "JOB_STATE_FAILED", "JOB_STATE_SUCCEEDED"})
    assert done["state"] == "JOB_STATE_FAILED" and "timed out" in done["error"]["message"]
    name = _cname(srv, "job", job["name"].rsplit("/", 1)[1])
    assert "stop" in [e["event"] for e in _runs(docker["state"], name)]
    assert name not in fake_docker.containers(docker["state"])


def test_image_reference_docker_would_take_for_an_option_is_a_400(srv: ServerProcess) -> None:
    body = _job_body("dk-bad", image="--privileged")
    r = httpx.post(f"{srv.url}/v1/{PARENT}/customJobs", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert "not a Docker image name" in r.json()["error"]["message"]


def _deploy_echo(srv: ServerProcess, model_id: str, endpoint_id: str) -> tuple[str, str]:
    art = srv.home / "buckets" / "dk-bucket" / model_id
    art.mkdir(parents=True, exist_ok=True)
    (art / "weights.txt").write_text("1 2 3")
    model = {
        "displayName": model_id,
        "artifactUri": f"gs://dk-bucket/{model_id}",
        "containerSpec": {
            "imageUri": SERVER_IMAGE,
            "env": [{"name": "GREETING", "value": "hi"}],
            # a port free now rather than the default 8080, which others on the host may hold
            "ports": [{"containerPort": free_port()}],
        },
    }
    op = call(srv.url, "POST", f"{PARENT}/models:upload", json={"model": model, "modelId": model_id})
    assert op["done"] and "error" not in op, op
    ep = create_endpoint(srv.url, endpoint_id)
    body = {
        "deployedModel": {
            "model": f"{PARENT}/models/{model_id}",
            "dedicatedResources": {"machineSpec": {"machineType": "n1-standard-2"}, "minReplicaCount": 1},
        },
        "trafficSplit": {"0": 100},
    }
    op = call(srv.url, "POST", f"{ep}:deployModel", json=body)
    assert op.get("done") and "error" not in op, op
    return ep, op["response"]["deployedModel"]["id"]


def test_serving_on_a_docker_image(srv: ServerProcess, docker: dict[str, Path]) -> None:
    ep, dm_id = _deploy_echo(srv, "dk-echo", "dk-echo-ep")
    name = _cname(srv, "replica", f"{dm_id}-r0")
    r = httpx.post(f"{srv.url}/v1/{ep}:predict", json={"instances": [[1, 2], [3, 4]]}, timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["predictions"] == [3, 7] and out["deployedModelId"] == dm_id
    env = out["env"]
    assert env["AIP_PREDICT_ROUTE"] == f"/v1/endpoints/dk-echo-ep/deployedModels/{dm_id}:predict"
    assert env["GREETING"] == "hi" and env["AIP_FRAMEWORK"] == "CUSTOM_CONTAINER"
    assert env["STORAGE_EMULATOR_HOST"] == srv.url and env["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    storage = env["AIP_STORAGE_URI"]
    local = srv.home / "buckets" / storage[len("gs://") :]
    assert (local / "weights.txt").read_text() == "1 2 3"
    record = fake_docker.containers(docker["state"])[name]
    assert record["mounts"] == [f"{local}:{local}:ro"] and record["labels"]["loopml.kind"] == "replica"
    assert record["pid"] == out["pid"]

    # the container dies: the replica is restarted (a new container of the same name)
    killed = subprocess.run([str(docker["exe"]), "kill", name], capture_output=True, text=True)
    assert killed.returncode == 0, killed.stderr

    def answered_by_new_container() -> bool:
        r = httpx.post(f"{srv.url}/v1/{ep}:predict", json={"instances": [[1]]}, timeout=30)
        return r.status_code == 200 and r.json()["pid"] != out["pid"]

    wait_for(answered_by_new_container, timeout=60, interval=0.3)
    assert "restarting replica" in srv.tail(200)
    log = (srv.home / "logs" / "replicas" / f"{dm_id}-r0.log").read_text()
    assert log.count(" run --rm --name " + name) >= 2

    call(srv.url, "POST", f"{ep}:undeployModel", json={"deployedModelId": dm_id})
    wait_for(lambda: name not in fake_docker.containers(docker["state"]), timeout=30)
    assert _runs(docker["state"], name)[-1]["event"] in ("exited", "rm")
    assert "stop" in [e["event"] for e in _runs(docker["state"], name)]


def test_unreachable_engine_is_a_400_with_docker_info_s_error_in_the_log_only(
    server_factory: Any, docker: dict[str, Path]
) -> None:
    (docker["state"] / "daemon-down").write_text("")
    try:
        srv = server_factory(env=_env(docker))
        (srv.home / "buckets" / "dk-bucket").mkdir(parents=True, exist_ok=True)
        body = {
            "displayName": "dk-down",
            "jobSpec": {
                "workerPoolSpecs": [
                    {
                        "machineSpec": {"machineType": "n1-standard-4"},
                        "replicaCount": "1",
                        "containerSpec": {"imageUri": TRAINER_IMAGE},
                    }
                ]
            },
        }
        r = httpx.post(f"{srv.url}/v1/{PARENT}/customJobs", json=body, timeout=60)
        assert r.status_code == 400, r.text
        message = r.json()["error"]["message"]
        assert "`docker info` failed with exit status 1" in message
        assert "Cannot connect to the Docker daemon" not in message  # docker info's text: log only
        assert "Cannot connect to the Docker daemon" in srv.tail(200)
        assert call(srv.url, "GET", f"{PARENT}/customJobs").get("customJobs", []) == []
        model = {"displayName": "down", "containerSpec": {"imageUri": SERVER_IMAGE}}
        call(srv.url, "POST", f"{PARENT}/models:upload", json={"model": model, "modelId": "down"})
        ep = create_endpoint(srv.url, "down-ep")
        deploy = {"deployedModel": {"model": f"{PARENT}/models/down"}, "trafficSplit": {"0": 100}}
        r = httpx.post(f"{srv.url}/v1/{ep}:deployModel", json=deploy, timeout=60)
        assert r.status_code == 200, r.text
        op = r.json()
        assert op["done"] and op["error"]["code"] == 9, op  # FAILED_PRECONDITION
        assert "`docker info` failed with exit status 1" in op["error"]["message"]
        assert "Cannot connect to the Docker daemon" not in json.dumps(op)
    finally:
        (docker["state"] / "daemon-down").unlink()


def test_server_stop_and_kill_leave_no_container(server_factory: Any, docker: dict[str, Path]) -> None:
    srv = server_factory(env=_env(docker))
    (srv.home / "buckets" / "dk-bucket").mkdir(parents=True, exist_ok=True)
    job = _job(srv, "dk-long", ["sleep"])
    _wait_state(srv, job, {"JOB_STATE_RUNNING"})
    _ep, dm_id = _deploy_echo(srv, "dk-stop", "dk-stop-ep")
    names = {_cname(srv, "job", job["name"].rsplit("/", 1)[1]), _cname(srv, "replica", f"{dm_id}-r0")}
    wait_for(lambda: names <= set(fake_docker.containers(docker["state"])), timeout=30)
    srv.stop()
    assert not names & set(fake_docker.containers(docker["state"]))

    # SIGKILL: the docker clients die with the server, the containers do not (as with a real
    # engine); the next server of this home removes them before it replays the deployment.
    srv.start()
    replica = _cname(srv, "replica", f"{dm_id}-r0")
    first = wait_for(lambda: fake_docker.containers(docker["state"]).get(replica), timeout=60)
    srv.kill()
    time.sleep(0.5)
    left = fake_docker.containers(docker["state"]).get(replica)
    assert left is not None and left["pid"] == first["pid"] and psutil.pid_exists(first["pid"])
    srv.start()
    second = wait_for(lambda: fake_docker.containers(docker["state"]).get(replica), timeout=60)
    assert second["pid"] != first["pid"]
    gone = wait_for(
        lambda: not psutil.pid_exists(first["pid"]) or psutil.Process(first["pid"]).status() == "zombie",
        timeout=10,
    )
    assert gone
    assert "removing leftover container " + replica in srv.tail(400)
    srv.stop()
    assert fake_docker.containers(docker["state"]) == {}
