"""Images without Docker: workshop-style Dockerfiles built for real, resolved, and run as processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loopml.envs import EnvManager
from loopml.errors import InvalidArgument, NotFound
from loopml.images import ImageRuntime, ImageService
from tests.conftest import free_port

PREDICTOR = """\
FROM python:3.11-slim
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
ENV AIP_HTTP_PORT=8080
EXPOSE 8080
CMD ["uvicorn","main:app","--host","0.0.0.0","--port","8080"]
"""
MAIN = """\
import os
from fastapi import FastAPI

app = FastAPI()

@app.get("/health_check")
def health():
    return {"ok": True}

@app.post(os.environ.get("AIP_PREDICT_ROUTE", "/predict"))
def predict(body: dict):
    return {"predictions": [x["value"] > 1000 for x in body["instances"]], "port": os.environ["AIP_HTTP_PORT"]}
"""


def write_context(path: Path, dockerfile: str, files: dict[str, str]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "Dockerfile").write_text(dockerfile)
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    return path


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> ImageService:
    home = tmp_path_factory.mktemp("img-home")
    return ImageService(home / "images", EnvManager(home / "envs"))


@pytest.fixture(scope="module")
def predictor(service: ImageService, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    ctx = write_context(
        tmp_path_factory.mktemp("ctx") / "pred",
        PREDICTOR,
        {
            "requirements.txt": "fastapi\nuvicorn\n",
            "main.py": MAIN,
            ".dockerignore": "*.log\nnotes/\n",
            "debug.log": "x",
            "notes/todo.txt": "x",
        },
    )
    return service.build(
        ctx, ["gcr.io/proj1/pred:v1", "us-central1-docker.pkg.dev/proj1/repo/pred:v1", "pred"]
    )


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode}")
        try:
            return httpx.get(url, timeout=1)
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer")


@pytest.fixture()
def run_image() -> Iterator[object]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(rt: ImageRuntime, argv: list[str], extra: dict[str, str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            argv,
            cwd=rt.workdir,
            env=rt.process_env(extra),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_workshop_predictor_image_builds_with_docker_semantics(predictor: dict[str, object]) -> None:
    assert predictor["workdir"] == "/app"
    assert predictor["env"] == {"AIP_HTTP_PORT": "8080"}
    assert predictor["exposed_ports"] == [8080]
    assert predictor["cmd"] == ["uvicorn", "main:app", "--host", "0.0.0.0", "--port", "8080"]
    assert predictor["python_version"].startswith("cpython-3.11")  # type: ignore[union-attr]
    root = Path(str(predictor["path"])) / "root" / "app"
    assert sorted(p.name for p in root.iterdir()) == [
        ".dockerignore",
        "Dockerfile",
        "main.py",
        "requirements.txt",
    ]


def test_resolve_by_every_reference_form(service: ImageService, predictor: dict[str, object]) -> None:
    digest = str(predictor["digest"])
    forms = [
        "gcr.io/proj1/pred:v1",
        "us-central1-docker.pkg.dev/proj1/repo/pred:v1",
        "pred",
        "pred:latest",
        f"gcr.io/proj1/pred@{digest}",
        digest,
        digest.removeprefix("sha256:")[:12],
    ]
    for form in forms:
        rt = service.resolve(form)
        assert rt is not None, form
        assert rt.digest == digest.removeprefix("sha256:"), form
    assert service.resolve("gcr.io/proj1/pred:v2") is None
    assert service.resolve("gcr.io/proj1/other") is None


def test_resolved_argv_runs_as_a_real_server(
    service: ImageService, predictor: dict[str, object], run_image
) -> None:  # type: ignore[no-untyped-def]
    rt = service.resolve("gcr.io/proj1/pred:v1")
    assert rt is not None
    assert rt.argv() == [str(rt.bin_dir / "uvicorn"), "main:app", "--host", "0.0.0.0", "--port", "8080"]
    port = free_port()
    # Vertex `containerSpec.args` replace CMD; tests bind loopback only
    argv = rt.argv(args_override=["uvicorn", "main:app", "--host", "127.0.0.1", "--port", str(port)])
    proc = run_image(rt, argv, {"AIP_HTTP_PORT": str(port), "AIP_PREDICT_ROUTE": "/v1/predict"})
    assert wait_http(f"http://127.0.0.1:{port}/health_check", proc).status_code == 200
    r = httpx.post(
        f"http://127.0.0.1:{port}/v1/predict", json={"instances": [{"value": 1000000.1}, {"value": 35.4}]}
    )
    assert r.json() == {"predictions": [True, False], "port": str(port)}


def test_shell_form_args_env_and_allow_unsupported(service: ImageService, tmp_path: Path, run_image) -> None:  # type: ignore[no-untyped-def]
    dockerfile = """\
ARG PY=3.11
FROM python:${PY}-slim
ARG GREETING=hello
ENV GREETING=${GREETING} APP_HOME=/srv/app
WORKDIR $APP_HOME
COPY server.py ./
RUN mkdir -p data && echo "$GREETING" > data/greeting.txt
USER nobody
CMD python server.py --port $PORT
"""
    server = """\
import http.server, os, sys
port = int(sys.argv[sys.argv.index("--port") + 1])
text = open("data/greeting.txt").read().strip() + " " + os.environ["GREETING"] + " " + sys.executable
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(text.encode())
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""
    ctx = write_context(tmp_path / "ctx", dockerfile, {"server.py": server})
    with pytest.raises(InvalidArgument) as err:
        service.build(ctx, ["shell:v1"], build_args={"GREETING": "bonjour"})
    assert "line 7" in err.value.message and "--allow-unsupported" in err.value.message
    config = service.build(ctx, ["shell:v1"], build_args={"GREETING": "bonjour"}, allow_unsupported=True)
    assert any("line 7" in w for w in config["warnings"])
    assert any("USER" in w for w in config["warnings"])
    assert config["cmd"] == ["/bin/sh", "-c", "python server.py --port $PORT"]
    rt = service.resolve("shell:v1")
    assert rt is not None and rt.workdir == rt.root / "srv" / "app"
    assert (rt.workdir / "data" / "greeting.txt").read_text().strip() == "bonjour"
    port = free_port()
    proc = run_image(rt, rt.argv(), {"PORT": str(port)})
    body = wait_http(f"http://127.0.0.1:{port}/", proc).text
    assert body == f"bonjour bonjour {rt.python}"


@pytest.mark.parametrize(
    ("dockerfile", "line", "words"),
    [
        ("FROM python:3.11\nWORKDIR /app\nRUN apt-get update && apt-get install -y gcc\n", 3, ["apt-get"]),
        ("FROM python:3.11 AS build\nRUN pip install six\nFROM python:3.11-slim\n", 3, ["multi-stage"]),
        ("FROM python:3.11\nCOPY --from=build /x /x\n", 2, ["COPY --from"]),
        ("FROM ubuntu:22.04\n", 1, ["ubuntu:22.04", "not supported"]),
        ("FROM python:3.11\nADD https://example.com/x.tgz /x\n", 2, ["URL"]),
        ("FROM python:3.11\nCOPY missing.txt .\n", 2, ["missing.txt", "not found"]),
        ("FROM python:3.11\nCOPY ../outside .\n", 2, ["escapes"]),
        ("FROM python:3.11\nFROBNICATE x\n", 2, ["unknown instruction"]),
    ],
)
def test_unsupported_dockerfiles_fail_with_the_line(
    service: ImageService, tmp_path: Path, dockerfile: str, line: int, words: list[str]
) -> None:
    ctx = write_context(tmp_path / "ctx", dockerfile, {})
    with pytest.raises(InvalidArgument) as err:
        service.build(ctx, ["bad:v1"])
    assert f"line {line}" in err.value.message
    for word in words:
        assert word in err.value.message
    assert service.resolve("bad:v1") is None
    assert not [p for p in service.catalog.root.iterdir() if p.name.startswith(".tmp-")]


def test_pip_install_local_package_and_inherit_from_catalog_image(
    service: ImageService, tmp_path: Path
) -> None:
    base = write_context(
        tmp_path / "base",
        "FROM python:3.11-slim\nWORKDIR /app\nCOPY . .\nRUN pip install --upgrade pip && pip install .\n"
        'ENTRYPOINT ["python", "-m", "trainer.task"]\nCMD ["--epochs", "1"]\n',
        {
            "pyproject.toml": '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
            '[project]\nname = "trainer"\nversion = "0.1"\n',
            "trainer/__init__.py": "",
            "trainer/task.py": "import sys\nprint('trained', sys.argv[1:])\n",
        },
    )
    service.build(base, ["trainer-base:v1"])
    child = write_context(
        tmp_path / "child", 'FROM trainer-base:v1\nRUN pip install six\nCMD ["--epochs", "3"]\n', {}
    )
    config = service.build(child, ["trainer:v2"])
    assert config["entrypoint"] == ["python", "-m", "trainer.task"]
    rt = service.resolve("trainer:v2")
    assert rt is not None
    out = subprocess.run(rt.argv(), cwd="/", env=rt.process_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "trained ['--epochs', '3']"
    check = subprocess.run([str(rt.python), "-c", "import six, trainer"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    # the runtime says what its env contains: the same inputs give the same cached env
    assert "six" in rt.requirements and len(rt.local_packages) == 1
    same = service.envs.ensure(rt.requirements, local_packages=rt.local_packages, python=rt.python_request)
    assert same == rt.env_dir


def test_missing_python_version_builds_on_host_with_a_warning(service: ImageService, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", 'FROM python:3.99-slim\nCMD ["python"]\n', {})
    config = service.build(ctx, ["old-python:v1"])
    assert config["python_requested"] == "3.99"
    assert config["python_version"] == f"cpython-{'.'.join(map(str, sys.version_info[:3]))}"
    assert any("Python 3.99" in w for w in config["warnings"])


def test_delete_and_prebuilt_in_host_mode(service: ImageService, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", 'FROM python:3.11\nCMD ["python", "-c", "print(1)"]\n', {})
    config = service.build(ctx, ["tmpimg:a", "tmpimg:b"])
    result = service.delete("tmpimg:a")
    assert result == {"digest": config["digest"], "untagged": ["tmpimg:a"], "deleted": False}
    assert service.resolve("tmpimg:b") is not None
    assert service.delete("tmpimg:b")["deleted"] is True
    assert service.resolve("tmpimg:b") is None
    with pytest.raises(NotFound):
        service.get("tmpimg:b")
    host = ImageService(service.catalog.root, service.envs, prebuilt_mode="host")
    rt = host.resolve("us-docker.pkg.dev/vertex-ai/training/sklearn-cpu.1-0:latest")
    assert rt is not None and rt.prebuilt == "sklearn"
    assert rt.python == Path(os.path.abspath(sys.executable))


@pytest.mark.slow
def test_prebuilt_training_image_gets_an_isolated_data_stack_env(service: ImageService) -> None:
    rt = service.resolve("us-docker.pkg.dev/vertex-ai/training/sklearn-cpu.1-0:latest")
    assert rt is not None and rt.prebuilt == "sklearn" and rt.env_dir is not None
    code = (
        "import sklearn, pandas, gcsfs, google.cloud.storage, google.cloud.bigquery, sys; print(sys.prefix)"
    )
    out = subprocess.run([str(rt.python), "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(rt.env_dir)


def test_cli_build_list_describe_delete(tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", 'FROM python:3.11-slim\nLABEL team=ml\nCMD ["python"]\n', {})
    env = dict(os.environ, LOOPML_HOME=str(tmp_path / "home"))
    loopml = [sys.executable, "-m", "loopml", "images"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*loopml, *args], env=env, capture_output=True, text=True, timeout=120)

    built = run("build", "-t", "gcr.io/p/cli-img:v1", str(ctx), "--json")
    assert built.returncode == 0, built.stderr
    digest = json.loads(built.stdout)["digest"]
    listed = json.loads(run("list", "--json").stdout)
    assert [i["tags"] for i in listed] == [["gcr.io/p/cli-img:v1"]]
    described = json.loads(run("describe", "gcr.io/p/cli-img:v1", "--json").stdout)
    assert described["digest"] == digest and described["labels"] == {"team": "ml"}
    missing = run("describe", "nope:v1")
    assert missing.returncode == 1 and "not found" in missing.stderr
    bad = run("build", "-t", "Bad Name", str(ctx))
    assert bad.returncode == 1 and "Invalid image" in bad.stderr
    assert run("delete", "gcr.io/p/cli-img:v1").returncode == 0
    assert json.loads(run("list", "--json").stdout) == []
