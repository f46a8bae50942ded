"""Helpers shared by the serving e2e tests: REST calls against a running `loopml server`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import psutil
from sklearn.tree import DecisionTreeClassifier

SKLEARN_IMAGE = "us-docker.pkg.dev/vertex-ai/prediction/sklearn-cpu.1-2:latest"
PARENT = "projects/p/locations/us-central1"


def train(flip: bool = False) -> tuple[DecisionTreeClassifier, np.ndarray]:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 3)).round(3)
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    if flip:
        y = 1 - y
    return DecisionTreeClassifier(max_depth=4, random_state=0).fit(x, y), x


def save(home: Path, obj: Any, prefix: str, name: str = "model.joblib") -> str:
    d = home / "buckets" / "serve-bucket" / prefix
    d.mkdir(parents=True, exist_ok=True)
    joblib.dump(obj, d / name)
    return f"gs://serve-bucket/{prefix}"


def call(url: str, method: str, path: str, **kw: Any) -> Any:
    r = httpx.request(method, f"{url}/v1/{path}", timeout=180.0, **kw)
    assert r.status_code == 200, r.text
    return r.json()


def upload(url: str, model_id: str, artifact_uri: str, container: dict[str, Any] | None = None) -> None:
    model = {
        "displayName": model_id,
        "artifactUri": artifact_uri,
        "containerSpec": container or {"imageUri": SKLEARN_IMAGE},
    }
    op = call(url, "POST", f"{PARENT}/models:upload", json={"model": model, "modelId": model_id})
    assert op["done"] and "error" not in op, op


def create_endpoint(url: str, endpoint_id: str) -> str:
    call(
        url,
        "POST",
        f"{PARENT}/endpoints",
        params={"endpointId": endpoint_id},
        json={"displayName": endpoint_id},
    )
    return f"{PARENT}/endpoints/{endpoint_id}"


def deploy(
    url: str,
    endpoint: str,
    model_id: str,
    *,
    split: dict[str, int],
    min_r: int = 1,
    max_r: int = 1,
    metrics: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    resources: dict[str, Any] = {
        "machineSpec": {"machineType": "n1-standard-2"},
        "minReplicaCount": min_r,
        "maxReplicaCount": max_r,
    }
    if metrics:
        resources["autoscalingMetricSpecs"] = metrics
    body = {
        "deployedModel": {"model": f"{PARENT}/models/{model_id}", "dedicatedResources": resources},
        "trafficSplit": split,
    }
    op = call(url, "POST", f"{endpoint}:deployModel", json=body)
    assert op["done"], op
    return op  # type: ignore[no-any-return]


def predict(
    url: str, endpoint: str, body: dict[str, Any], client: httpx.Client | None = None
) -> httpx.Response:
    c = client or httpx
    return c.post(f"{url}/v1/{endpoint}:predict", json=body, timeout=60.0)  # type: ignore[no-any-return]


def replica_count(url: str, endpoint: str, dm_id: str) -> int:
    ep = call(url, "GET", endpoint)
    for dm in ep.get("deployedModels", []):
        if dm["id"] == dm_id:
            return int((dm.get("status") or {}).get("availableReplicaCount", 0))
    return 0


def replica_pids(server_pid: int, marker: str = "loopml.serving.replica") -> list[int]:
    out = []
    for child in psutil.Process(server_pid).children(recursive=True):
        try:
            if any(marker in part for part in child.cmdline()):
                out.append(child.pid)
        except psutil.Error:
            pass
    return out


def wait_for(pred: Any, timeout: float = 90.0, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not reached in time")
