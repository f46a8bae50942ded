"""Shared pieces of the demo: its server, a small REST helper, constants and the summary."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

PROJECT = "demo-project"
LOCATION = "us-central1"
TOPIC = "hyp-pubsub-topic"
BUCKET = "demo-models"
SKLEARN_IMAGE = "us-docker.pkg.dev/vertex-ai/prediction/sklearn-cpu.1-3:latest"
MARKER = ".loopml-demo-home"


class DemoFailed(RuntimeError):
    """A step of the demo did not give the result it must."""


@dataclass
class Summary:
    home: Path
    url: str
    facts: list[tuple[str, str]] = field(default_factory=list)

    def add(self, what: str, value: Any) -> None:
        self.facts.append((what, str(value)))


# -- the server ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def demo_server(home: Path, port: int, keep_running: bool) -> Iterator[str]:
    """Run `loopml server` as a child process until the block ends (or leave it running)."""
    url = f"http://127.0.0.1:{port}"
    log_path = home / "demo-server.log"
    env = dict(os.environ, LOOPML_HOME=str(home), LOOPML_DEFAULT_PROJECT=PROJECT)
    env.pop("LOOPML_DATABASE_URL", None)  # the demo runs on the embedded defaults
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "loopml", "server", "--port", str(port), "--home", str(home)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=keep_running,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise DemoFailed(f"the server exited with code {proc.returncode}; see {log_path}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise DemoFailed(f"the server did not become ready in 120 s; see {log_path}")
            time.sleep(0.2)
        yield url
    finally:
        if not keep_running and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- small REST helpers -------------------------------------------------------------------------
class Api:
    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=300)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.http.request(method, path, **kwargs)
        if resp.status_code >= 400:
            raise DemoFailed(f"{method} {path} → HTTP {resp.status_code}: {resp.text[:500]}")
        return resp.json() if resp.content else None

    def operation(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        op = self.call(method, path, **kwargs)
        deadline = time.monotonic() + 600
        while not op.get("done"):
            if time.monotonic() > deadline:
                raise DemoFailed(f"operation {op.get('name')} did not finish in 600 s")
            time.sleep(0.2)
            op = self.call("GET", f"/v1/{op['name']}")
        if "error" in op:
            raise DemoFailed(f"{method} {path} failed: {op['error'].get('message')}")
        response: dict[str, Any] = op.get("response") or {}
        return response

    def endpoint_with(self, display_name: str, model: str, max_replicas: int) -> tuple[str, str]:
        """Create an endpoint and deploy `model` on it with all traffic; (endpoint, deployed id)."""
        parent = f"projects/{PROJECT}/locations/{LOCATION}"
        endpoint = self.operation("POST", f"/v1/{parent}/endpoints", json={"displayName": display_name})
        resources = {
            "machineSpec": {"machineType": "n1-standard-2"},
            "minReplicaCount": 1,
            "maxReplicaCount": max_replicas,
        }
        deployed = self.operation(
            "POST",
            f"/v1/{endpoint['name']}:deployModel",
            json={
                "deployedModel": {"model": model, "dedicatedResources": resources},
                "trafficSplit": {"0": 100},
            },
        )
        return str(endpoint["name"]), str(deployed["deployedModel"]["id"])

    def query(self, sql: str) -> list[dict[str, Any]]:
        """jobs.query, waiting until done; rows as dicts (nested records not decoded)."""
        body = {"query": sql, "useLegacySql": False, "timeoutMs": 600_000}
        out = self.call("POST", f"/bigquery/v2/projects/{PROJECT}/queries", json=body)
        while not out.get("jobComplete"):
            job_id = out["jobReference"]["jobId"]
            out = self.call(
                "GET", f"/bigquery/v2/projects/{PROJECT}/queries/{job_id}", params={"timeoutMs": 10_000}
            )
        names = [f["name"] for f in (out.get("schema") or {}).get("fields", [])]
        return [
            {n: cell["v"] for n, cell in zip(names, row["f"], strict=True)} for row in out.get("rows", [])
        ]

    def close(self) -> None:
        self.http.close()


def wait(what: str, cond: Callable[[], bool], timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise DemoFailed(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)
