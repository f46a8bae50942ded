"""`loopml jobs`: submit, list, describe, follow and cancel custom training jobs.

The commands talk to the server at `LOOPML_URL` through the Vertex REST API
(`/v1/projects/{p}/locations/{l}/customJobs`) and the loopml log extension (`:logs`).
`--script` packages a single file into an sdist, uploads it to the store through the GCS JSON
API and submits it as a pythonPackageSpec, as the Vertex SDK's CustomTrainingJob does.
"""

from __future__ import annotations

import io
import json
import shlex
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from loopml.errors import LoopmlError, NotFound, ServerUnreachable, from_json

jobs_app = typer.Typer(
    help="Custom training jobs (Vertex CustomJobs): submit, list, logs, cancel.", no_args_is_help=True
)
console = Console()
err = Console(stderr=True)

DEFAULT_EXECUTOR = "us-docker.pkg.dev/vertex-ai/training/sklearn-cpu.1-0:latest"
TERMINAL = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"}
_PROJECT = typer.Option(
    "local", "--project", envvar=["LOOPML_PROJECT", "GOOGLE_CLOUD_PROJECT"], help="Project."
)
_LOCATION = typer.Option("us-central1", "--location", envvar="LOOPML_LOCATION", help="Location.")
_JSON = typer.Option(False, "--json", help="Print the raw JSON.")


def register(app: typer.Typer) -> None:
    app.add_typer(jobs_app, name="jobs")


class Api:
    """A tiny Vertex REST client for the jobs collection."""

    def __init__(self, project: str, location: str) -> None:
        from loopml.config import Settings

        self.url = Settings.from_env().url.rstrip("/")
        self.parent = f"projects/{project}/locations/{location}"
        self.project = project
        self.http = httpx.Client(base_url=self.url, timeout=httpx.Timeout(30.0, read=None))

    def call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = self.http.request(method, path, **kw)
        except httpx.ConnectError as exc:
            raise ServerUnreachable(
                f"No loopml server at {self.url}. Start one with `loopml server` or set LOOPML_URL."
            ) from exc
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = None
            raise from_json(resp.status_code, body)
        return resp.json() if resp.content else {}

    def job_path(self, job: str, collection: str = "customJobs") -> str:
        job_id = job.rsplit("/", 1)[-1]
        return f"/v1/{self.parent}/{collection}/{job_id}"

    def find(self, job: str) -> tuple[str, dict[str, Any]]:
        """A job by id or name: customJobs first, then trainingPipelines."""
        if "/trainingPipelines/" in job:
            return "trainingPipelines", self.call("GET", self.job_path(job, "trainingPipelines"))
        try:
            return "customJobs", self.call("GET", self.job_path(job))
        except LoopmlError as exc:
            if exc.status != 404:
                raise
        try:
            return "trainingPipelines", self.call("GET", self.job_path(job, "trainingPipelines"))
        except LoopmlError as exc:
            if exc.status != 404:
                raise
            raise NotFound(  # not "TrainingPipeline … does not exist" for a custom job id
                f"Custom job or training pipeline {job.rsplit('/', 1)[-1]} does not exist in {self.parent}."
            ) from None

    def upload(self, bucket: str, name: str, data: bytes) -> str:
        try:
            self.call("GET", f"/storage/v1/b/{bucket}")
        except LoopmlError as exc:
            if exc.status != 404:
                raise
            self.call("POST", "/storage/v1/b", params={"project": self.project}, json={"name": bucket})
        self.call(
            "POST",
            f"/upload/storage/v1/b/{bucket}/o",
            params={"uploadType": "media", "name": name},
            content=data,
            headers={"content-type": "application/gzip"},
        )
        return f"gs://{bucket}/{name}"

    def follow(self, collection: str, job: str, *, offset: int = 0) -> None:
        path = self.job_path(job, collection) + ":logs"
        try:
            with self.http.stream("GET", path, params={"follow": "true", "offset": offset}) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise from_json(resp.status_code, resp.json())
                for chunk in resp.iter_text():
                    sys.stdout.write(chunk)
                    sys.stdout.flush()
        except httpx.ConnectError as exc:
            raise ServerUnreachable(f"No loopml server at {self.url}.") from exc


def _fail(exc: LoopmlError) -> None:
    err.print(f"[red]error:[/red] {exc.message}")
    raise typer.Exit(2 if exc.status < 500 else 1)


def script_sdist(script: Path, requirements: list[str]) -> tuple[str, bytes]:
    """A minimal sdist holding `script` as module `loopml_script.task`."""
    name, version = "loopml_script", "0.0.1"
    root = f"{name}-{version}"
    req = ", ".join(repr(r) for r in requirements)
    setup = (
        "from setuptools import setup\n"
        f"setup(name={name!r}, version={version!r}, packages=[{name!r}], install_requires=[{req}])\n"
    )
    pkg_info = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    files = {
        f"{root}/setup.py": setup.encode(),
        f"{root}/PKG-INFO": pkg_info.encode(),
        f"{root}/{name}/__init__.py": b"",
        f"{root}/{name}/task.py": script.read_bytes(),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return f"{root}.tar.gz", buf.getvalue()


@jobs_app.command("submit")
def submit(
    image: str = typer.Option(
        None, "--image", help="Container image URI (built with `loopml images build`)."
    ),
    python_package: str = typer.Option(None, "--python-package", help="gs:// URI of an sdist in the store."),
    module: str = typer.Option(None, "--module", help="Module to run with --python-package (python -m)."),
    script: Path = typer.Option(None, "--script", exists=True, dir_okay=False, help="A Python file to run."),
    executor_image: str = typer.Option(
        DEFAULT_EXECUTOR, "--executor-image", help="Prebuilt image for packages."
    ),
    requirement: list[str] = typer.Option([], "--requirement", help="Extra requirement for --script."),
    command: str = typer.Option(None, "--command", help="Override the image ENTRYPOINT (shell-split)."),
    args: str = typer.Option("", "--args", help="Arguments (shell-split), e.g. --args '--epochs 3'."),
    env: list[str] = typer.Option([], "--env", help="K=V environment variable (repeatable)."),
    display_name: str = typer.Option(None, "--display-name", help="Display name of the job."),
    base_output_dir: str = typer.Option(None, "--base-output-dir", help="gs:// base of AIP_MODEL_DIR etc."),
    timeout: int = typer.Option(None, "--timeout", help="scheduling.timeout in seconds."),
    staging_bucket: str = typer.Option("loopml-staging", "--staging-bucket", help="Bucket for --script."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Stream the log until the job ends."),
    project: str = _PROJECT,
    location: str = _LOCATION,
    as_json: bool = _JSON,
) -> None:
    """Submit a custom job: an image, a python package in the store, or a local script."""
    chosen = [x for x in (image, python_package, script) if x]
    if len(chosen) != 1:
        err.print("[red]error:[/red] give exactly one of --image, --python-package or --script.")
        raise typer.Exit(2)
    if python_package and not module:
        err.print("[red]error:[/red] --python-package needs --module.")
        raise typer.Exit(2)
    env_list = []
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            err.print(f"[red]error:[/red] --env {item!r} must be KEY=VALUE.")
            raise typer.Exit(2)
        env_list.append({"name": key, "value": value})
    api = Api(project, location)
    try:
        pool: dict[str, Any] = {"machineSpec": {"machineType": "n1-standard-4"}, "replicaCount": 1}
        if image:
            container: dict[str, Any] = {"imageUri": image, "args": shlex.split(args), "env": env_list}
            if command:
                container["command"] = shlex.split(command)
            pool["containerSpec"] = container
        else:
            if script:
                filename, data = script_sdist(script, requirement)
                uri = api.upload(staging_bucket, f"loopml-scripts/{int(time.time() * 1000)}/{filename}", data)
                mod = "loopml_script.task"
            else:
                uri, mod = python_package, module
            pool["pythonPackageSpec"] = {
                "executorImageUri": executor_image,
                "packageUris": [uri],
                "pythonModule": mod,
                "args": shlex.split(args),
                "env": env_list,
            }
        spec: dict[str, Any] = {"workerPoolSpecs": [pool]}
        if base_output_dir:
            spec["baseOutputDirectory"] = {"outputUriPrefix": base_output_dir}
        if timeout:
            spec["scheduling"] = {"timeout": f"{timeout}s"}
        name = display_name or (Path(str(script)).stem if script else (image or module or "job"))
        job = api.call("POST", f"/v1/{api.parent}/customJobs", json={"displayName": name, "jobSpec": spec})
    except LoopmlError as exc:
        _fail(exc)
        return
    if as_json and not follow:
        console.print_json(json.dumps(job))
        return
    console.print(f"submitted [bold]{job['name']}[/bold]")
    if follow:
        raise typer.Exit(_follow(api, "customJobs", job["name"]))


def _follow(api: Api, collection: str, name: str) -> int:
    state = "JOB_STATE_PENDING"
    with console.status("[cyan]waiting for the job to start…") as status:
        while True:
            job = api.call("GET", api.job_path(name, collection))
            state = "JOB_STATE_" + str(job.get("state", "")).split("_STATE_", 1)[-1]
            status.update(f"[cyan]{state.removeprefix('JOB_STATE_').lower()}…")
            if state not in ("JOB_STATE_PENDING", "JOB_STATE_QUEUED"):
                break
            time.sleep(0.5)
    api.follow(collection, name)
    job = api.call("GET", api.job_path(name, collection))
    state = "JOB_STATE_" + str(job.get("state", "")).split("_STATE_", 1)[-1]
    colour = "green" if state == "JOB_STATE_SUCCEEDED" else "red"
    console.print(f"[{colour}]{job['name']}: {state}[/{colour}]")
    if job.get("error"):
        err.print(job["error"].get("message", ""))
    return 0 if state == "JOB_STATE_SUCCEEDED" else 1


@jobs_app.command("list")
def list_jobs(
    pipelines: bool = typer.Option(False, "--pipelines", help="List trainingPipelines instead."),
    filter_text: str = typer.Option("", "--filter", help='e.g. state="JOB_STATE_FAILED"'),
    project: str = _PROJECT,
    location: str = _LOCATION,
    as_json: bool = _JSON,
) -> None:
    """List custom jobs (newest first)."""
    api = Api(project, location)
    collection = "trainingPipelines" if pipelines else "customJobs"
    items: list[dict[str, Any]] = []
    token = ""
    try:
        while True:
            params = {"filter": filter_text, "pageToken": token} if token else {"filter": filter_text}
            page = api.call("GET", f"/v1/{api.parent}/{collection}", params=params)
            items.extend(page.get(collection, []))
            token = page.get("nextPageToken", "")
            if not token:
                break
    except LoopmlError as exc:
        _fail(exc)
    if as_json:
        console.print_json(json.dumps(items))
        return
    table = Table("id", "display name", "state", "created", "ended")
    for job in items:
        table.add_row(
            job["name"].rsplit("/", 1)[-1],
            job.get("displayName", ""),
            job.get("state", ""),
            job.get("createTime", ""),
            job.get("endTime", ""),
        )
    console.print(table)


@jobs_app.command("describe")
def describe(job: str, project: str = _PROJECT, location: str = _LOCATION) -> None:
    """Show a job (custom job or training pipeline) as JSON."""
    try:
        _collection, body = Api(project, location).find(job)
    except LoopmlError as exc:
        _fail(exc)
        return
    console.print_json(json.dumps(body))


@jobs_app.command("logs")
def logs(
    job: str,
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep streaming until the job ends."),
    project: str = _PROJECT,
    location: str = _LOCATION,
) -> None:
    """Print a job's log (`-f` to follow it)."""
    api = Api(project, location)
    try:
        collection, body = api.find(job)
        if follow:
            raise typer.Exit(_follow(api, collection, body["name"]))
        resp = api.http.get(api.job_path(body["name"], collection) + ":logs")
        if resp.status_code >= 400:
            raise from_json(resp.status_code, resp.json())
        sys.stdout.write(resp.text)
    except LoopmlError as exc:
        _fail(exc)


@jobs_app.command("cancel")
def cancel(job: str, project: str = _PROJECT, location: str = _LOCATION) -> None:
    """Cancel a running job (SIGTERM, then SIGKILL after a grace period)."""
    api = Api(project, location)
    try:
        collection, body = api.find(job)
        api.call("POST", api.job_path(body["name"], collection) + ":cancel", json={})
        with console.status("[cyan]cancelling…"):
            for _ in range(600):
                body = api.call("GET", api.job_path(body["name"], collection))
                if "JOB_STATE_" + str(body.get("state", "")).split("_STATE_", 1)[-1] in TERMINAL:
                    break
                time.sleep(0.2)
    except LoopmlError as exc:
        _fail(exc)
        return
    console.print(f"{body['name']}: {body.get('state')}")
