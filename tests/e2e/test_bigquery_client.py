"""Unmodified google-cloud-bigquery against a real loopml server on loopback."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

DATA = Path(__file__).resolve().parent.parent / "data" / "bigquery"
P = "hyp-project"

# to_dataframe() warns that pandas-gbq is the preferred path; the workshop code uses it as is
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")


def schema_fields(raw: list[dict[str, Any]]) -> list[bigquery.SchemaField]:
    return [bigquery.SchemaField.from_api_repr(f) for f in raw]


@pytest.fixture(scope="module")
def client(server: Any) -> Iterator[bigquery.Client]:
    c = bigquery.Client(
        project=P, credentials=AnonymousCredentials(), client_options={"api_endpoint": server.url}
    )
    yield c
    c.close()


@pytest.fixture(scope="module")
def sink(client: bigquery.Client) -> str:
    client.create_dataset(f"{P}.ecommerce_sink", exists_ok=True)
    table = bigquery.Table(
        f"{P}.ecommerce_sink.cloud_run",
        schema=schema_fields(json.loads((DATA / "cloud_run_schema.json").read_text())),
    )
    table.time_partitioning = bigquery.TimePartitioning(
        type_=bigquery.TimePartitioningType.DAY, field="event_datetime"
    )
    client.create_table(table)
    events = json.loads((DATA / "ecommerce_events.json").read_text())
    rows = [dict(e, weekday="Monday") for e in events.values()]
    assert client.insert_rows_json(f"{P}.ecommerce_sink.cloud_run", rows) == []
    return f"{P}.ecommerce_sink.cloud_run"


def test_dataset_and_table_resources(client: bigquery.Client, sink: str) -> None:
    table = client.get_table(sink)
    assert table.full_table_id == f"{P}:ecommerce_sink.cloud_run"
    assert table.num_rows == 4 and table.time_partitioning.field == "event_datetime"
    eco = next(f for f in table.schema if f.name == "ecommerce")
    assert eco.field_type == "RECORD"
    items = next(f for f in eco.fields if f.name == "items")
    assert (
        items.mode == "REPEATED"
        and items.fields[0].name == "item_id"
        and items.fields[0].field_type == "INTEGER"
    )
    assert next(f for f in table.schema if f.name == "event").mode == "REQUIRED"
    # exists_ok goes through 409 then GET
    again = client.create_table(bigquery.Table(sink, schema=table.schema), exists_ok=True)
    assert again.num_rows == 4
    assert [t.table_id for t in client.list_tables(f"{P}.ecommerce_sink")] == ["cloud_run"]
    assert "ecommerce_sink" in [d.dataset_id for d in client.list_datasets()]
    with pytest.raises(gexc.Conflict):
        client.create_dataset(f"{P}.ecommerce_sink")


def test_query_nested_fields_and_timestamps(client: bigquery.Client, sink: str) -> None:
    rows = list(
        client.query(
            f"SELECT ecommerce.purchase.tax AS tax, ecommerce.purchase.shipping AS shipping, "
            f"ecommerce.purchase.value AS value, event_datetime FROM `{sink}` WHERE event = 'purchase' ORDER BY value"
        ).result()
    )
    assert [(r.tax, r.shipping, r.value) for r in rows] == [(4.9, 5.99, 35.43), (4.9, 5.99, 1000000.1)]
    assert rows[0].event_datetime == dt.datetime(2020, 11, 16, 21, 10, 12, tzinfo=dt.UTC)
    waited = list(
        client.query_and_wait(
            "SELECT event, ecommerce.items FROM ecommerce_sink.cloud_run WHERE event = 'view_item'"
        )
    )
    assert waited[0].event == "view_item" and waited[0]["items"][0]["item_id"] == 67890


def test_list_rows_to_dataframe(client: bigquery.Client, sink: str) -> None:
    df = client.list_rows(sink, max_results=10).to_dataframe(create_bqstorage_client=False)
    assert len(df) == 4 and set(df["event"]) == {"view_item", "add_to_cart", "purchase"}
    assert str(df["event_datetime"].dt.tz) == "UTC"
    paged = list(client.list_rows(sink, page_size=1))
    assert len(paged) == 4


def test_ctas_dml_and_params(client: bigquery.Client, sink: str) -> None:
    client.query(
        "CREATE OR REPLACE TABLE ecommerce_sink.anomaly_data AS SELECT "
        "(CASE WHEN ecommerce.purchase.value > 1000 THEN TRUE ELSE FALSE END) AS anomaly, "
        "ecommerce.purchase.tax AS tax, ecommerce.purchase.shipping AS shipping, ecommerce.purchase.value AS value "
        f"FROM `{sink}` WHERE event = 'purchase'"
    ).result()
    table = client.get_table(f"{P}.ecommerce_sink.anomaly_data")
    assert table.num_rows == 2 and [f.field_type for f in table.schema] == [
        "BOOLEAN",
        "FLOAT",
        "FLOAT",
        "FLOAT",
    ]
    df = client.list_rows(table).to_dataframe(create_bqstorage_client=False)
    assert sorted(df["anomaly"].tolist()) == [False, True]
    job = client.query("DELETE FROM ecommerce_sink.anomaly_data WHERE anomaly")
    job.result()
    assert job.num_dml_affected_rows == 1
    cfg = bigquery.QueryJobConfig(
        query_parameters=[
            bigquery.ScalarQueryParameter("ev", "STRING", "purchase"),
            bigquery.ScalarQueryParameter("n", "INT64", 1),
        ]
    )
    rows = list(
        client.query(f"SELECT COUNT(*) + @n AS c FROM `{sink}` WHERE event = @ev", job_config=cfg).result()
    )
    assert rows[0].c == 3


def test_errors(client: bigquery.Client, sink: str) -> None:
    with pytest.raises(gexc.NotFound, match="cloud_nope"):
        client.get_table(f"{P}.ecommerce_sink.cloud_nope")
    with pytest.raises(gexc.NotFound):
        client.query("SELECT * FROM ecommerce_sink.cloud_nope").result()
    with pytest.raises(gexc.BadRequest, match=r"\[2:"):
        client.query("SELECT 1,\n  FROM WHERE").result()
    with pytest.raises(gexc.BadRequest, match=r"Unrecognized name: nope"):
        client.query_and_wait(f"SELECT nope FROM `{sink}`")
    errors = client.insert_rows_json(
        sink, [{"event": "x", "user_id": "u", "ecommerce": {"items": [{"item_id": "zz"}]}}, {"event": "y"}]
    )
    assert {e["index"] for e in errors} == {0, 1}
    located = {e["index"]: e["errors"][0] for e in errors}
    assert located[0]["location"] == "ecommerce.items[0].item_id" and located[1]["location"] == "user_id"
    assert client.get_table(sink).num_rows == 4


def test_schema_patch_load_and_delete(client: bigquery.Client) -> None:
    client.create_dataset(f"{P}.scratch")
    table = client.create_table(bigquery.Table(f"{P}.scratch.t", schema=[bigquery.SchemaField("a", "INT64")]))
    table.schema = [*table.schema, bigquery.SchemaField("b", "STRING")]
    table = client.update_table(table, ["schema"])
    assert [f.name for f in table.schema] == ["a", "b"]
    data = b"a,b\n1,x\n2,y\n"
    job = client.load_table_from_file(
        io.BytesIO(data),
        f"{P}.scratch.t",
        size=len(data),
        job_config=bigquery.LoadJobConfig(source_format="CSV", skip_leading_rows=1),
    )
    job.result()
    assert client.get_table(f"{P}.scratch.t").num_rows == 2
    # no size: the client uses a resumable upload session
    job = client.load_table_from_file(
        io.BytesIO(b"3,z\n"), f"{P}.scratch.t", job_config=bigquery.LoadJobConfig(source_format="CSV")
    )
    job.result()
    assert job.output_rows == 1
    frame = client.query_and_wait(f"SELECT a, b FROM `{P}.scratch.t` ORDER BY a").to_dataframe()
    job = client.load_table_from_dataframe(frame, f"{P}.scratch.copy")
    job.result()
    assert client.get_table(f"{P}.scratch.copy").num_rows == 3
    ds = client.get_dataset(f"{P}.scratch")
    ds.description, ds.labels = "scratch space", {"team": "wh"}
    ds = client.update_dataset(ds, ["description", "labels"])
    assert (ds.description, ds.labels) == ("scratch space", {"team": "wh"})
    client.delete_dataset(f"{P}.scratch", delete_contents=True)
    with pytest.raises(gexc.NotFound):
        client.get_dataset(f"{P}.scratch")


def test_emulator_host_variable(server: Any, sink: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", server.url)
    c = bigquery.Client(project=P, credentials=AnonymousCredentials())
    try:
        assert next(iter(c.query_and_wait(f"SELECT COUNT(*) AS n FROM `{sink}`"))).n == 4
        assert c.get_table(sink).num_rows == 4
    finally:
        c.close()


def test_unchanged_client_with_emulated_metadata(server: Any, sink: str, tmp_path: Path) -> None:
    """Workshop code as is: `bigquery.Client()` with no project or credentials, redirected by env only."""
    script = tmp_path / "workshop.py"
    script.write_text(
        "from google.cloud import bigquery\n"
        "client = bigquery.Client()\n"
        f"rows = client.query_and_wait('SELECT COUNT(*) AS n FROM `{sink}`')\n"
        "print(client.project, next(iter(rows)).n)\n"
    )
    host = server.url.removeprefix("http://")
    env = {k: v for k, v in os.environ.items() if k not in ("NO_GCE_CHECK", "GOOGLE_APPLICATION_CREDENTIALS")}
    env.update({"BIGQUERY_EMULATOR_HOST": server.url, "GCE_METADATA_HOST": host, "GCE_METADATA_IP": host})
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["local", "4"]


def test_running_jobs_are_polled(server_factory: Any) -> None:
    """jobs.insert answering RUNNING: the client polls jobs.get and the getQueryResults long poll."""
    srv = server_factory(env={"LOOPML_BIGQUERY_INSERT_WAIT_S": "0"})
    c = bigquery.Client(
        project=P, credentials=AnonymousCredentials(), client_options={"api_endpoint": srv.url}
    )
    try:
        job = c.query("SELECT SUM(x) AS s FROM UNNEST(GENERATE_ARRAY(1, 100)) AS x")
        assert [r.s for r in job.result()] == [5050]
        assert job.state == "DONE" and job.statement_type == "SELECT"
        with pytest.raises(gexc.BadRequest, match="Unrecognized name: nope"):
            c.query("SELECT nope FROM UNNEST([1]) AS x").result()
        listed = [j.job_id for j in c.list_jobs(max_results=5)]
        assert len(listed) == 2 and listed[1] == job.job_id
    finally:
        c.close()


def test_export_data_through_the_client(client: bigquery.Client, server: Any, sink: str) -> None:
    client.query(
        "EXPORT DATA OPTIONS(uri='gs://hyp-bucket/export/train/*.csv', format='CSV', overwrite=true, header=true) "
        f"AS SELECT event, user_id FROM `{sink}` WHERE event != 'purchase' ORDER BY event"
    ).result()
    shard = server.home / "buckets" / "hyp-bucket" / "export" / "train" / "000000000000.csv"
    assert shard.read_text().splitlines() == ["event,user_id", "add_to_cart,UID00003", "view_item,UID00003"]


def test_destination_table_and_selected_fields(client: bigquery.Client, sink: str) -> None:
    dest = f"{P}.ecommerce_sink.purchases"
    cfg = bigquery.QueryJobConfig(destination=dest, write_disposition="WRITE_TRUNCATE")
    client.query(
        f"SELECT user_id, ecommerce.purchase.value AS value FROM `{sink}` WHERE event = 'purchase'",
        job_config=cfg,
    ).result()
    table = client.get_table(dest)
    assert table.num_rows == 2
    rows = list(client.list_rows(table, selected_fields=[table.schema[1]]))
    assert sorted(r.value for r in rows) == [35.43, 1000000.1] and list(rows[0].keys()) == ["value"]


def test_extract_table(client: bigquery.Client, server: Any, sink: str) -> None:
    client.query(
        "CREATE OR REPLACE TABLE ecommerce_sink.to_extract AS SELECT event, ecommerce.purchase.value AS value "
        f"FROM `{sink}` WHERE event = 'purchase' ORDER BY value"
    ).result()
    job = client.extract_table(f"{P}.ecommerce_sink.to_extract", "gs://hyp-bucket/extract/purchases-*.csv")
    job.result()
    assert job.destination_uri_file_counts == [1]
    shard = server.home / "buckets" / "hyp-bucket" / "extract" / "purchases-000000000000.csv"
    assert shard.read_text().splitlines() == ["event,value", "purchase,35.43", "purchase,1000000.1"]
    cfg = bigquery.ExtractJobConfig(destination_format="NEWLINE_DELIMITED_JSON")
    client.extract_table(sink, "gs://hyp-bucket/extract/events.json", job_config=cfg).result()
    events = (server.home / "buckets" / "hyp-bucket" / "extract" / "events.json").read_text().splitlines()
    assert len(events) == 4 and json.loads(events[0])["ecommerce"] is not None


def test_dry_run(client: bigquery.Client, sink: str) -> None:
    cfg = bigquery.QueryJobConfig(dry_run=True, use_query_cache=False)
    job = client.query(f"SELECT event, COUNT(*) AS n FROM `{sink}` GROUP BY event", job_config=cfg)
    assert job.state == "DONE" and job.total_bytes_processed == 0
    assert [f.name for f in job.schema] == ["event", "n"]
    with pytest.raises(gexc.BadRequest, match="Unrecognized name: nope"):
        client.query(f"SELECT nope FROM `{sink}`", job_config=cfg)


def test_view_through_tables_insert(client: bigquery.Client, sink: str) -> None:
    view = bigquery.Table(f"{P}.ecommerce_sink.purchases_view")
    view.view_query = (
        f"SELECT user_id, ecommerce.purchase.value AS value FROM `{sink}` WHERE event = 'purchase'"
    )
    created = client.create_table(view)
    assert created.table_type == "VIEW"
    rows = list(client.query_and_wait("SELECT COUNT(*) AS n FROM ecommerce_sink.purchases_view"))
    assert rows[0].n == 2
    bad = bigquery.Table(f"{P}.ecommerce_sink.bad_view")
    bad.view_query = "SELECT FROM WHERE"
    with pytest.raises(gexc.BadRequest, match="Syntax error"):
        client.create_table(bad)
