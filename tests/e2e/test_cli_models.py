"""`loopml models …` and `loopml endpoints …` as subprocesses against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import ServerProcess, free_port
from tests.e2e.test_registry_e2e import save_sklearn

SKLEARN = "us-docker.pkg.dev/vertex-ai/prediction/sklearn-cpu.1-2"


def loopml(url: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LOOPML_URL": url, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "loopml", *args], env=env, capture_output=True, text=True, timeout=300, cwd=cwd
    )


def ok_json(url: str, *args: str) -> Any:
    result = loopml(url, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_models_cli(server: ServerProcess, tmp_path: Path) -> None:
    url = server.url
    uri = save_sklearn(server.home, "cli/v1")
    up = loopml(
        url,
        "models",
        "upload",
        "-n",
        "cli-model",
        "-a",
        uri,
        "--image-uri",
        SKLEARN,
        "--model-id",
        "clim",
        "--label",
        "team=cli",
    )
    assert up.returncode == 0, up.stderr
    assert "Uploaded clim@1 (sklearn)" in up.stdout
    # A local directory (relative path) is copied into the registry too.
    local = tmp_path / "local-model"
    local.mkdir()
    (local / "loopml_model.json").write_text('{"framework": "python"}')
    up2 = loopml(
        url,
        "models",
        "upload",
        "-n",
        "cli-model",
        "-a",
        "local-model",
        "--parent-model",
        "clim",
        "--alias",
        "candidate",
        "--json",
        cwd=tmp_path,
    )
    assert up2.returncode == 0, up2.stderr
    v2 = json.loads(up2.stdout)
    assert v2["versionId"] == "2" and v2["framework"] == "python" and v2["versionAliases"] == ["candidate"]

    table = loopml(url, "models", "list")
    assert table.returncode == 0 and "clim" in table.stdout and "sklearn" in table.stdout
    assert [m["versionId"] for m in ok_json(url, "models", "list", "--filter", 'labels.team="cli"')] == ["1"]
    assert [v["versionId"] for v in ok_json(url, "models", "versions", "clim")] == ["1", "2"]
    moved = loopml(url, "models", "alias", "clim@2", "default", "--remove", "candidate")
    assert moved.returncode == 0 and "clim@2: default" in moved.stdout
    assert ok_json(url, "models", "describe", "clim")["versionId"] == "2"
    described = loopml(url, "models", "describe", "clim@1")
    assert "gs://reg-bucket/cli/v1" in described.stdout

    for args, message in [
        (("models", "describe", "clim@9"), "not found"),
        (("models", "alias", "clim@2", "--remove", "default"), "default"),
        (("models", "delete", "clim@2"), "default"),
        (("models", "upload", "-n", "x", "-a", "gs://reg-bucket/../../etc"), "escapes"),
    ]:
        failed = loopml(url, *args)
        assert failed.returncode == 1, (args, failed.stdout)
        assert message in failed.stderr and "Traceback" not in failed.stderr

    assert loopml(url, "models", "delete", "clim@1").returncode == 0
    assert loopml(url, "models", "delete", "clim").returncode == 0
    assert ok_json(url, "models", "list") == []


def test_endpoints_cli(server: ServerProcess, tmp_path: Path) -> None:
    url = server.url
    assert (
        loopml(
            url,
            "models",
            "upload",
            "-n",
            "epm",
            "-a",
            save_sklearn(server.home, "cli/e1"),
            "--image-uri",
            SKLEARN,
            "--model-id",
            "epm",
        ).returncode
        == 0
    )
    created = loopml(url, "endpoints", "create", "cli-ep", "--endpoint-id", "cli-ep")
    assert created.returncode == 0 and "Created endpoint cli-ep" in created.stdout
    assert [e["displayName"] for e in ok_json(url, "endpoints", "list")] == ["cli-ep"]
    dep = loopml(
        url,
        "endpoints",
        "deploy",
        "cli-ep",
        "--model",
        "epm@1",
        "--min-replicas",
        "1",
        "--max-replicas",
        "2",
        "--traffic",
        "100",
        "--json",
    )
    assert dep.returncode == 0, dep.stderr
    dm_id = json.loads(dep.stdout)["id"]
    described = loopml(url, "endpoints", "describe", "cli-ep")
    assert dm_id in described.stdout and "epm@1" in described.stdout
    instances = tmp_path / "instances.json"
    instances.write_text(json.dumps({"instances": [[2.0, 0.0], [-2.0, 0.0]]}))
    pred = loopml(url, "endpoints", "predict", "cli-ep", "--instances", f"@{instances}")
    assert pred.returncode == 0, pred.stderr
    predicted = json.loads(pred.stdout)
    assert predicted["predictions"] == [1, 0] and predicted["deployedModelId"] == dm_id
    inline = loopml(url, "endpoints", "predict", "cli-ep", "--instances", "[[3.0, 0.0]]")
    assert json.loads(inline.stdout)["predictions"] == [1]

    refused = loopml(url, "endpoints", "delete", "cli-ep")
    assert refused.returncode == 1 and "deployed models" in refused.stderr
    bad_json = loopml(url, "endpoints", "predict", "cli-ep", "--instances", "[1,")
    assert bad_json.returncode == 1 and "not valid JSON" in bad_json.stderr
    assert loopml(url, "endpoints", "undeploy", "cli-ep", dm_id).returncode == 0
    assert loopml(url, "endpoints", "delete", "cli-ep").returncode == 0
    assert ok_json(url, "endpoints", "list") == []


def test_cli_without_server() -> None:
    result = loopml(f"http://127.0.0.1:{free_port()}", "models", "list")
    assert result.returncode == 1
    assert "no server reachable" in result.stderr and "loopml server" in result.stderr
