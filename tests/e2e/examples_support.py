"""Shared set-up for the example e2e tests: one LOOPML_HOME per session (cached envs and images)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import psutil
import pytest

from tests.conftest import REPO, ServerProcess, free_port

EXAMPLES = REPO / "examples"


def shared_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same home for every example module in a session, so envs and images are built once."""
    home = tmp_path_factory.getbasetemp() / "examples-home"
    home.mkdir(parents=True, exist_ok=True)
    return home


def start_server(home: Path) -> ServerProcess:
    server = ServerProcess(home=home, port=free_port(), env={"LOOPML_JOB_KILL_GRACE_S": "2"})
    try:
        server.start(timeout=120)
    except BaseException:
        server.kill()
        raise
    return server


def undeploy_everything(endpoint_name: str) -> None:
    """Undeploy and delete an endpoint through the SDK (its replicas stop)."""
    from google.cloud import aiplatform

    endpoint = aiplatform.Endpoint(endpoint_name)
    endpoint.undeploy_all()
    endpoint.delete()


def build_image(server: ServerProcess, context: Path, tag: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LOOPML_HOME=str(server.home), LOOPML_URL=server.url)
    return subprocess.run(
        [sys.executable, "-m", "loopml", "images", "build", str(context), "--tag", tag],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def load_module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fast_sdk_polling() -> None:
    from google.cloud.aiplatform import jobs, training_jobs

    jobs._JOB_WAIT_TIME = 0.5  # the SDK polls every 5 s, which is for the cloud
    training_jobs._JOB_WAIT_TIME = 0.5


def processes_under(root: Path) -> list[psutil.Process]:
    """Processes whose command line mentions a path under `root` (jobs and replicas of a home)."""
    found = []
    needle = str(root)
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(needle in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            continue
    return found
