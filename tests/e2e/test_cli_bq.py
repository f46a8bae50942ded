"""`loopml bq` against a real server: mk, load, query (pretty/json/csv), head, show, ls, rm."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loopml.cli import main as cli_main

DATA = Path(__file__).resolve().parent.parent / "data" / "bigquery"


@pytest.fixture(scope="module")
def cli(server: object) -> CliRunner:
    cli_main._load()
    return CliRunner(env={"LOOPML_URL": server.url, "LOOPML_DEFAULT_PROJECT": "bq-proj"})  # type: ignore[attr-defined]


def invoke(cli: CliRunner, *args: str) -> str:
    result = cli.invoke(cli_main.app, ["bq", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_bq_commands(cli: CliRunner, tmp_path: Path) -> None:
    assert "Dataset 'bq-proj:shop' successfully created." in invoke(cli, "mk", "--dataset", "bq-proj:shop")
    invoke(cli, "mk", "--table", "shop.t", "tax:FLOAT,shipping:FLOAT,label")
    invoke(
        cli,
        "mk",
        "-t",
        "shop.cloud_run",
        str(DATA / "cloud_run_schema.json"),
        "--time_partitioning_field",
        "event_datetime",
    )
    csv_file = tmp_path / "t.csv"
    csv_file.write_text("tax,shipping,label\n4.9,5.99,normal\n4.9,5.99,anomaly\n")
    assert "Loaded 2 row(s)" in invoke(
        cli, "load", "--source_format=CSV", "--skip_leading_rows=1", "shop.t", str(csv_file)
    )
    events = json.loads((DATA / "ecommerce_events.json").read_text())
    ndjson = tmp_path / "events.json"
    ndjson.write_text("\n".join(json.dumps(e) for e in events.values()))
    invoke(cli, "load", "--source_format=NEWLINE_DELIMITED_JSON", "shop.cloud_run", str(ndjson))

    rows = json.loads(
        invoke(
            cli, "query", "--format=json", "SELECT label, tax + shipping AS total FROM shop.t ORDER BY label"
        )
    )
    assert rows == [{"label": "anomaly", "total": 10.89}, {"label": "normal", "total": 10.89}]
    csv_out = invoke(
        cli,
        "query",
        "--format=csv",
        "SELECT event, ecommerce.purchase.value AS v FROM shop.cloud_run WHERE event = 'purchase' ORDER BY v",
    )
    assert csv_out.splitlines() == ["event,v", "purchase,35.43", "purchase,1000000.1"]
    pretty = invoke(
        cli, "query", "--use_legacy_sql=false", "SELECT COUNT(*) AS n FROM `bq-proj.shop.cloud_run`"
    )
    assert "4" in pretty and "n" in pretty
    checked = invoke(cli, "query", "--dry_run", "SELECT label, COUNT(*) AS n FROM shop.t GROUP BY label")
    assert "Query successfully validated." in checked and "|- n: integer" in checked
    assert "Number of affected rows: 1" in invoke(cli, "query", "DELETE FROM shop.t WHERE label = 'anomaly'")

    head = json.loads(invoke(cli, "head", "-n", "1", "--format=json", "shop.cloud_run"))
    assert len(head) == 1 and head[0]["event_datetime"].startswith("2020-11-16T")
    shown = invoke(cli, "show", "shop.cloud_run")
    assert "|- ecommerce: record" in shown and "item_id: integer" in shown and "(REQUIRED)" in shown
    assert json.loads(invoke(cli, "show", "--format=json", "shop.t"))["numRows"] == "1"
    listed = json.loads(invoke(cli, "ls", "--format=json", "shop"))
    assert sorted(t["tableId"] for t in listed) == ["cloud_run", "t"]
    assert "shop" in invoke(cli, "ls")

    legacy = cli.invoke(cli_main.app, ["bq", "query", "--use_legacy_sql=true", "SELECT 1"])
    assert legacy.exit_code == 1 and "Legacy SQL is not supported" in legacy.output
    bad = cli.invoke(cli_main.app, ["bq", "query", "SELECT nope FROM shop.t"])
    assert bad.exit_code == 1 and "Unrecognized name: nope" in bad.output
    missing = cli.invoke(cli_main.app, ["bq", "show", "shop.nothing"])
    assert missing.exit_code == 1 and "Not found: Table bq-proj:shop.nothing" in missing.output

    invoke(cli, "rm", "-f", "shop.t")
    still = cli.invoke(cli_main.app, ["bq", "rm", "-f", "shop"])
    assert still.exit_code == 1 and "still in use" in still.output
    invoke(cli, "rm", "-r", "-f", "shop")
    assert json.loads(invoke(cli, "ls", "--format=json")) == []


def test_bq_without_server_says_so() -> None:
    cli_main._load()
    runner = CliRunner(env={"LOOPML_URL": "http://127.0.0.1:9"})
    result = runner.invoke(cli_main.app, ["bq", "ls"])
    assert result.exit_code == 1 and "loopml server" in result.output
