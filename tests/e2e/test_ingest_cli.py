"""`loopml topics`, `loopml subscriptions` and `loopml synth ecommerce` against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loopml.cli import main as cli_main


@pytest.fixture(scope="module")
def cli(server: object) -> CliRunner:
    cli_main._load()
    return CliRunner(env={"LOOPML_URL": server.url, "LOOPML_DEFAULT_PROJECT": "cli-proj"})  # type: ignore[attr-defined]


def invoke(cli: CliRunner, *args: str) -> str:
    result = cli.invoke(cli_main.app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_topics_and_subscriptions_commands(cli: CliRunner, tmp_path: Path) -> None:
    assert "created topic projects/cli-proj/topics/orders" in invoke(cli, "topics", "create", "orders")
    invoke(cli, "subscriptions", "create", "orders-pull", "--topic", "orders")
    out = invoke(cli, "topics", "publish", "orders", "-m", '{"id": 1}', "-a", "kind=new", "--json")
    (msg_id,) = json.loads(out)["messageIds"]
    listed = json.loads(invoke(cli, "topics", "list", "--json"))
    assert [t["name"] for t in listed] == ["projects/cli-proj/topics/orders"]
    assert "orders-pull" in invoke(cli, "topics", "list")
    pulled = json.loads(invoke(cli, "subscriptions", "pull", "orders-pull", "--json"))
    assert pulled[0]["message"]["messageId"] == msg_id
    assert pulled[0]["message"]["attributes"] == {"kind": "new"}
    assert "acknowledged 1" in invoke(cli, "subscriptions", "ack", "orders-pull", pulled[0]["ackId"])
    assert json.loads(invoke(cli, "subscriptions", "pull", "orders-pull", "--json")) == []
    config = tmp_path / "inference.json"
    config.write_text(json.dumps({"endpoint": "e1"}))
    bad = cli.invoke(
        cli_main.app,
        ["subscriptions", "create", "bad", "--topic", "orders", "--inference-config", str(config)],
    )
    assert bad.exit_code == 1 and "loopmlInferenceConfig.endpoint" in " ".join(bad.output.split())
    described = json.loads(invoke(cli, "subscriptions", "describe", "orders-pull", "--json"))
    assert described["topic"] == "projects/cli-proj/topics/orders" and described["state"] == "ACTIVE"
    assert "orders-pull" in invoke(cli, "subscriptions", "list")
    invoke(cli, "subscriptions", "delete", "orders-pull")
    invoke(cli, "topics", "delete", "orders")
    missing = cli.invoke(cli_main.app, ["topics", "describe", "orders"])
    assert missing.exit_code == 1 and "no such topic" in " ".join(missing.output.split())


def test_synth_subprocess_posts_to_ingest(server: object, cli: CliRunner) -> None:
    invoke(cli, "topics", "create", "synth-topic", "--project", "local")
    invoke(cli, "subscriptions", "create", "synth-pull", "--topic", "synth-topic", "--project", "local")
    env = dict(os.environ, LOOPML_URL=server.url)  # type: ignore[attr-defined]
    argv = [sys.executable, "-m", "loopml", "synth", "ecommerce", "--endpoint"]
    argv += [f"{server.url}/ingest/synth-topic", "--events", "120", "--rate", "0", "--batch", "25"]  # type: ignore[attr-defined]
    argv += ["--seed", "3", "--json"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    totals = json.loads(done.stdout.strip().splitlines()[-1])
    assert totals["sent"] == 120 and totals["acknowledged"] == 120 and totals["failed"] == 0
    status = json.loads(
        invoke(cli, "subscriptions", "describe", "synth-pull", "--project", "local", "--json")
    )
    assert status["loopmlStatus"]["backlog"] == 120


def test_synth_endpoint_with_a_project_query_posts_to_that_project(server: object, cli: CliRunner) -> None:
    # `/ingest/<topic>?project=p` (docs/ingest.md): /json goes on the path, the query stays
    invoke(cli, "topics", "create", "synth-elsewhere", "--project", "other-proj")
    invoke(
        cli,
        "subscriptions",
        "create",
        "elsewhere-pull",
        "--topic",
        "synth-elsewhere",
        "--project",
        "other-proj",
    )
    argv = [sys.executable, "-m", "loopml", "synth", "ecommerce", "--endpoint"]
    argv += [f"{server.url}/ingest/synth-elsewhere?project=other-proj", "--events", "30", "--rate", "0"]  # type: ignore[attr-defined]
    argv += ["--batch", "10", "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    totals = json.loads(done.stdout.strip().splitlines()[-1])
    assert totals["acknowledged"] == 30 and totals["failed"] == 0
    status = json.loads(
        invoke(cli, "subscriptions", "describe", "elsewhere-pull", "--project", "other-proj", "--json")
    )
    assert status["loopmlStatus"]["backlog"] == 30
