"""`loopml endpoints traffic`: canary and instant rollback, one command each, against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from tests.e2e.serving_helpers import (
    PARENT,
    SKLEARN_IMAGE,
    call,
    create_endpoint,
    deploy,
    save,
    train,
    upload,
)


def _cli(srv: Any, *args: str, command: str = "traffic") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LOOPML_URL=srv.url, LOOPML_PROJECT="p", LOOPML_LOCATION="us-central1")
    return subprocess.run(
        [sys.executable, "-m", "loopml", "endpoints", command, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_canary_and_rollback(server: Any) -> None:
    upload(server.url, "churn", save(server.home, train()[0], "churn-v1"))
    v2 = {
        "displayName": "churn",
        "artifactUri": save(server.home, train(flip=True)[0], "churn-v2"),
        "containerSpec": {"imageUri": SKLEARN_IMAGE},
        "versionAliases": ["challenger"],
    }
    call(
        server.url,
        "POST",
        f"{PARENT}/models:upload",
        json={"model": v2, "parentModel": f"{PARENT}/models/churn"},
    )
    ep = create_endpoint(server.url, "cli-ep")
    dm1 = deploy(server.url, ep, "churn@1", split={"0": 100})["response"]["deployedModel"]["id"]
    dm2 = deploy(server.url, ep, "churn@2", split={dm1: 100, "0": 0})["response"]["deployedModel"]["id"]

    r = _cli(server, "cli-ep", "churn@challenger=10", "--json")  # canary by alias
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["trafficSplit"] == {dm1: 90, dm2: 10}
    row = [[0.5, 0.5, 0.1]]
    seen = {httpx_post(server.url, ep, row)["deployedModelId"] for _ in range(200)}
    assert seen == {dm1, dm2}

    r = _cli(server, "cli-ep", "churn@1=100", "--json")  # instant rollback
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["trafficSplit"] == {dm1: 100, dm2: 0}
    assert {httpx_post(server.url, ep, row)["deployedModelId"] for _ in range(30)} == {dm1}

    r = _cli(server, "cli-ep")
    assert r.returncode == 0 and "churn@2" in r.stdout and "100" in r.stdout
    r = _cli(server, "cli-ep", "churn=60")
    assert r.returncode == 1 and "several deployed versions" in r.stderr

    r = _cli(server, "cli-ep", "--json", command="replicas")
    assert r.returncode == 0, r.stderr
    statuses = {s["deployedModelId"]: s for s in json.loads(r.stdout)}
    assert set(statuses) == {dm1, dm2}
    for status in statuses.values():
        assert status["availableReplicaCount"] == 1
        (replica,) = status["replicas"]
        assert replica["state"] == "ready" and replica["pid"] > 0 and replica["log"].endswith(".log")


def httpx_post(url: str, ep: str, rows: list[list[float]]) -> dict[str, Any]:
    import httpx

    r = httpx.post(f"{url}/v1/{ep}:predict", json={"instances": rows}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]
