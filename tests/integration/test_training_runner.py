"""The job runner against a real SQLite store and real child processes (no HTTP server)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from loopml import training
from loopml.config import Settings
from loopml.errors import InvalidArgument
from loopml.platform import Platform
from loopml.refs import now
from loopml.training import TrainingService

P, L = "proj1", "us-central1"


def _platform(home: Path) -> Platform:
    platform = Platform(Settings(home=home, port=1))
    platform.db.migrate()
    platform.services["training"] = training.build(platform)
    return platform


@pytest.fixture()
def svc(tmp_path: Path) -> Iterator[TrainingService]:
    platform = _platform(tmp_path)
    service: TrainingService = platform.services["training"]
    service.runner.grace_s = 2.0
    service.runner.start()
    yield service
    service.runner.stop()
    platform.db.dispose()


def command_job(code: str, **spec: Any) -> dict[str, Any]:
    pool = {"replicaCount": 1, "containerSpec": {"imageUri": "local/any", "command": ["python", "-c", code]}}
    return {"displayName": "t", "jobSpec": {"workerPoolSpecs": [pool], **spec}}


def wait(svc: TrainingService, job: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    collection = "customJobs" if "/customJobs/" in job["name"] else "trainingPipelines"
    job_id = job["name"].rsplit("/", 1)[1]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = svc.get(P, L, collection, job_id)
        if body["state"].endswith(("SUCCEEDED", "FAILED", "CANCELLED")):
            return body
        time.sleep(0.1)
    raise AssertionError(f"job did not end: {body}")


def test_success_sees_the_contract(svc: TrainingService) -> None:
    code = "import os; print('MODEL', os.environ['AIP_MODEL_DIR'], os.environ['CLOUD_ML_JOB_ID'])"
    job = svc.create_custom_job(
        P, L, command_job(code, baseOutputDirectory={"outputUriPrefix": "gs://bucket1/o"})
    )
    assert job["state"] == "JOB_STATE_PENDING"
    done = wait(svc, job)
    assert done["state"] == "JOB_STATE_SUCCEEDED", done
    assert "startTime" in done and "endTime" in done and "error" not in done
    log_path, _ = svc.log_path(P, L, "customJobs", job["name"].rsplit("/", 1)[1])
    assert f"MODEL gs://bucket1/o/model/ {job['name'].rsplit('/', 1)[1]}" in log_path.read_text()


def test_exit_1_fails_with_the_log_tail(svc: TrainingService) -> None:
    job = svc.create_custom_job(P, L, command_job("import sys; print('boom: bad column'); sys.exit(1)"))
    done = wait(svc, job)
    assert done["state"] == "JOB_STATE_FAILED"
    assert "non-zero status of 1" in done["error"]["message"]
    assert "boom: bad column" in done["error"]["message"]


def _spawn_grandchild_code(pidfile: Path) -> str:
    return (
        "import subprocess, sys, time, pathlib;"
        f"c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']);"
        f"pathlib.Path({str(pidfile)!r}).write_text(str(c.pid));"
        "time.sleep(600)"
    )


def _wait_pid(pidfile: Path) -> int:
    for _ in range(200):
        if pidfile.exists() and pidfile.read_text():
            return int(pidfile.read_text())
        time.sleep(0.05)
    raise AssertionError("child never started")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_timeout_fails_and_kills_the_process_group(svc: TrainingService, tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    job = svc.create_custom_job(
        P, L, command_job(_spawn_grandchild_code(pidfile), scheduling={"timeout": "2s"})
    )
    grandchild = _wait_pid(pidfile)
    done = wait(svc, job)
    assert done["state"] == "JOB_STATE_FAILED"
    assert "timed out after 2s" in done["error"]["message"]
    assert _gone(grandchild)


def test_cancel_kills_and_marks_cancelled(svc: TrainingService, tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    job = svc.create_custom_job(P, L, command_job(_spawn_grandchild_code(pidfile)))
    grandchild = _wait_pid(pidfile)
    job_id = job["name"].rsplit("/", 1)[1]
    svc.cancel(P, L, "customJobs", job_id)
    done = wait(svc, job)
    assert done["state"] == "JOB_STATE_CANCELLED"
    assert _gone(grandchild)
    with pytest.raises(Exception, match="already JOB_STATE_CANCELLED"):
        svc.cancel(P, L, "customJobs", job_id)


def test_list_filter_and_pages(svc: TrainingService) -> None:
    jobs = [svc.create_custom_job(P, L, command_job("pass")) for _ in range(3)]
    for job in jobs:
        wait(svc, job)
    page = svc.list(P, L, "customJobs", page_size=2)
    assert len(page["customJobs"]) == 2 and page["nextPageToken"]
    rest = svc.list(P, L, "customJobs", page_size=2, page_token=page["nextPageToken"])
    assert len(rest["customJobs"]) == 1 and "nextPageToken" not in rest
    assert len(svc.list(P, L, "customJobs", filter_text='state="JOB_STATE_SUCCEEDED"')["customJobs"]) == 3
    assert svc.list(P, L, "customJobs", filter_text="state=5")["customJobs"] == []
    name = svc.delete(P, L, "customJobs", jobs[0]["name"].rsplit("/", 1)[1])
    assert name == jobs[0]["name"]
    assert len(svc.list(P, L, "customJobs")["customJobs"]) == 2


def _sdist(tmp_path: Path) -> bytes:
    files = {
        "trainer-0.1/setup.py": b"from setuptools import setup\nsetup(name='trainer', version='0.1', packages=['trainer'])\n",
        "trainer-0.1/PKG-INFO": b"Metadata-Version: 2.1\nName: trainer\nVersion: 0.1\n",
        "trainer-0.1/trainer/__init__.py": b"",
        "trainer-0.1/trainer/task.py": b"import sys\nprint('package task ran with', sys.argv[1:])\n",
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_python_package_job_installs_the_sdist_once(svc: TrainingService, tmp_path: Path) -> None:
    svc.resolver.store.write_bytes("gs://code-bucket/code/trainer-0.1.tar.gz", _sdist(tmp_path))
    body = {
        "displayName": "pkg",
        "jobSpec": {
            "worker_pool_specs": [
                {
                    "replica_count": 1.0,
                    "python_package_spec": {
                        "executor_image_uri": "us-docker.pkg.dev/vertex-ai/training/sklearn-cpu.1-0:latest",
                        "package_uris": ["gs://code-bucket/code/trainer-0.1.tar.gz"],
                        "python_module": "trainer.task",
                        "args": ["--x", "1"],
                    },
                }
            ]
        },
    }
    first = wait(svc, svc.create_custom_job(P, L, body), timeout=180)
    assert first["state"] == "JOB_STATE_SUCCEEDED", first
    second = svc.create_custom_job(P, L, body)
    assert wait(svc, second)["state"] == "JOB_STATE_SUCCEEDED"
    log_text = svc.log_path(P, L, "customJobs", second["name"].rsplit("/", 1)[1])[0].read_text()
    assert "package task ran with ['--x', '1']" in log_text
    assert "using cached package environment" in log_text


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("https://example.com/t.tar.gz", "not a gs:// URI"),
        ("/etc/passwd", "not a gs:// URI"),
        ("gs://code-bucket/missing.tar.gz", "does not exist"),
        ("gs://code-bucket/../x.tar.gz", "escapes"),
    ],
)
def test_package_uri_outside_the_store_is_400(svc: TrainingService, uri: str, message: str) -> None:
    body = {
        "displayName": "pkg",
        "jobSpec": {
            "workerPoolSpecs": [
                {
                    "pythonPackageSpec": {
                        "executorImageUri": "python:3.11",
                        "packageUris": [uri],
                        "pythonModule": "trainer.task",
                    }
                }
            ]
        },
    }
    with pytest.raises(InvalidArgument, match=message):
        svc.create_custom_job(P, L, body)
    assert svc.list(P, L, "customJobs") == {"customJobs": []}


def test_restart_fails_running_jobs_and_kills_survivors(tmp_path: Path) -> None:
    platform = _platform(tmp_path)
    service: TrainingService = platform.services["training"]
    # A job "RUNNING" under a previous server, whose process group survived it.
    survivor = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
    )
    service.runner.submit = lambda pk: None  # type: ignore[method-assign]  # simulate: no runner yet
    created = service.create_custom_job(P, L, command_job("pass"))
    job_id = created["name"].rsplit("/", 1)[1]
    launching = service.create_custom_job(P, L, command_job("pass"))["name"].rsplit("/", 1)[1]
    queued = service.create_custom_job(P, L, command_job("print('ran after restart')"))
    with platform.db.session() as s:
        row = service.store.get_row(s, P, L, "customJobs", job_id)
        row.state, row.pid = "JOB_STATE_RUNNING", survivor.pid
        # crashed between "launch attempted" and "RUNNING recorded": must not run twice
        service.store.get_row(s, P, L, "customJobs", launching).start_time = now()
    platform.db.dispose()

    again = _platform(tmp_path)
    fresh: TrainingService = again.services["training"]
    fresh.runner.start()
    try:
        after = fresh.get(P, L, "customJobs", job_id)
        assert after["state"] == "JOB_STATE_FAILED"
        assert "server stopped while this job was running" in after["error"]["message"]
        survivor.wait(timeout=10)
        assert survivor.returncode == -9
        assert fresh.get(P, L, "customJobs", launching)["state"] == "JOB_STATE_FAILED"
        assert wait(fresh, queued)["state"] == "JOB_STATE_SUCCEEDED"  # never started: started now
    finally:
        fresh.runner.stop()
        again.db.dispose()


def test_stop_ends_running_jobs(tmp_path: Path) -> None:
    platform = _platform(tmp_path)
    service: TrainingService = platform.services["training"]
    service.runner.grace_s = 1.0
    # Other fixtures of the session (the PostgreSQL server, module-scoped loopml servers) may
    # have children of their own: only what this test started must be gone.
    before = {c.pid for c in psutil.Process(os.getpid()).children(recursive=True)}
    service.runner.start()
    pidfile = tmp_path / "gc.pid"
    job = service.create_custom_job(P, L, command_job(_spawn_grandchild_code(pidfile)))
    grandchild = _wait_pid(pidfile)
    service.runner.stop()
    body = service.get(P, L, "customJobs", job["name"].rsplit("/", 1)[1])
    assert body["state"] == "JOB_STATE_FAILED"
    assert "server stopped" in body["error"]["message"]
    assert _gone(grandchild)
    assert not [
        c
        for c in psutil.Process(os.getpid()).children(recursive=True)
        if c.pid not in before and c.status() != psutil.STATUS_ZOMBIE
    ]
    platform.db.dispose()
