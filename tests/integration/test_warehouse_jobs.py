"""Query jobs (destination tables, cancel), REST parameter decoding and f/v row encoding."""

from __future__ import annotations

import datetime as dt
import time
from decimal import Decimal
from pathlib import Path

import pytest

from loopml.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from loopml.warehouse import Warehouse
from loopml.warehouse.jobs import JobManager
from loopml.warehouse.load import load_data
from loopml.warehouse.resources import query_results
from loopml.warehouse.rows import decode_parameters, decode_rows, encode_rows

P = "jobs-proj"


@pytest.fixture()
def wh(tmp_path: Path) -> Warehouse:
    w = Warehouse(tmp_path / "wh.duckdb")
    w.create_dataset(P, "ds")
    yield w
    w.close()


def run(jobs: JobManager, config: dict) -> object:
    job = jobs.submit_query(jobs.new_job(P, None, None, {"query": config}))
    assert jobs.wait(job, 30)
    return job


def test_destination_table_dispositions(wh: Warehouse) -> None:
    jobs = JobManager(wh)
    dest = {"projectId": P, "datasetId": "ds", "tableId": "out"}
    job = run(jobs, {"query": "SELECT 1 AS x", "destinationTable": dest})
    assert job.error is None and wh.read_table_arrow(P, "ds", "out").to_pylist() == [{"x": 1}]
    job = run(jobs, {"query": "SELECT 2 AS x", "destinationTable": dest})
    assert isinstance(job.error, AlreadyExists)  # WRITE_EMPTY by default
    run(jobs, {"query": "SELECT 3 AS x", "destinationTable": dest, "writeDisposition": "WRITE_APPEND"})
    assert sorted(wh.read_table_arrow(P, "ds", "out").column("x").to_pylist()) == [1, 3]
    run(jobs, {"query": "SELECT 4 AS x", "destinationTable": dest, "writeDisposition": "WRITE_TRUNCATE"})
    assert wh.read_table_arrow(P, "ds", "out").to_pylist() == [{"x": 4}]
    job = run(
        jobs,
        {
            "query": "SELECT 1 AS x",
            "createDisposition": "CREATE_NEVER",
            "destinationTable": dict(dest, tableId="never"),
        },
    )
    assert job.error is not None and "Not found" in job.error.message
    job = run(
        jobs, {"query": "SELECT x FROM t", "defaultDataset": {"datasetId": "ds"}, "destinationTable": None}
    )
    assert job.error is not None and "Not found: Table jobs-proj:ds.t" in job.error.message
    job = run(jobs, {"query": "SELECT 1", "useLegacySql": True})
    assert job.error is not None and "Legacy SQL" in job.error.message
    jobs.close()


def test_only_newest_jobs_keep_rows(wh: Warehouse) -> None:
    jobs = JobManager(wh, keep_results=2)
    first = run(jobs, {"query": "SELECT 1 AS x"})
    for _ in range(2):
        run(jobs, {"query": "SELECT 2 AS x"})
    newest = run(jobs, {"query": "SELECT 3 AS x"})
    with pytest.raises(FailedPrecondition, match="no longer kept"):
        query_results(
            first, max_results=None, page_token=None, start_index=None, int64_ts=True, default_page=10
        )
    body = query_results(
        newest, max_results=None, page_token=None, start_index=None, int64_ts=True, default_page=10
    )
    assert body["rows"] == [{"f": [{"v": "3"}]}] and body["totalRows"] == "1"
    jobs.close()


def test_cancel_interrupts_a_running_query(wh: Warehouse) -> None:
    jobs = JobManager(wh)
    job = jobs.submit_query(
        jobs.new_job(
            P,
            "slow",
            None,
            {"query": {"query": "SELECT sum(range % 7) AS s FROM range(5000000000)"}},
        )
    )
    deadline = time.monotonic() + 30
    while job.state != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.01)
    jobs.cancel(P, "slow")
    assert jobs.wait(job, 60)
    assert job.error is not None and "cancelled" in job.error.message
    assert [j.job_id for j in jobs.list(P)] == ["slow"]
    jobs.close()


def test_decode_parameters() -> None:
    named = decode_parameters(
        "NAMED",
        [
            {"name": "n", "parameterType": {"type": "INT64"}, "parameterValue": {"value": "5"}},
            {
                "name": "ts",
                "parameterType": {"type": "TIMESTAMP"},
                "parameterValue": {"value": "2020-11-16 12:00:00+00:00"},
            },
            {
                "name": "arr",
                "parameterType": {"type": "ARRAY", "arrayType": {"type": "FLOAT64"}},
                "parameterValue": {"arrayValues": [{"value": "1.5"}, {"value": "2"}]},
            },
            {
                "name": "st",
                "parameterType": {"type": "STRUCT", "structTypes": [{"name": "a", "type": {"type": "BOOL"}}]},
                "parameterValue": {"structValues": {"a": {"value": "true"}}},
            },
            {"name": "num", "parameterType": {"type": "NUMERIC"}, "parameterValue": {"value": "1.25"}},
            {"name": "none", "parameterType": {"type": "STRING"}, "parameterValue": {}},
        ],
    )
    assert named == {
        "n": 5,
        "ts": dt.datetime(2020, 11, 16, 12, tzinfo=dt.UTC),
        "arr": [1.5, 2.0],
        "st": {"a": True},
        "num": Decimal("1.25"),
        "none": None,
    }
    assert decode_parameters(
        "POSITIONAL", [{"parameterType": {"type": "DATE"}, "parameterValue": {"value": "2024-01-02"}}]
    ) == [dt.date(2024, 1, 2)]
    with pytest.raises(InvalidArgument, match="INT64"):
        decode_parameters(
            "NAMED", [{"name": "x", "parameterType": {"type": "INT64"}, "parameterValue": {"value": "abc"}}]
        )


def test_encode_rows_wire_format(wh: Warehouse) -> None:
    schema = [
        {"name": "i", "type": "INT64"},
        {"name": "f", "type": "FLOAT"},
        {"name": "b", "type": "BOOL"},
        {"name": "ts", "type": "TIMESTAMP"},
        {"name": "by", "type": "BYTES"},
        {"name": "n", "type": "NUMERIC"},
        {"name": "d", "type": "DATE"},
        {"name": "dtm", "type": "DATETIME"},
        {
            "name": "r",
            "type": "RECORD",
            "fields": [
                {"name": "x", "type": "INTEGER"},
                {"name": "tags", "type": "STRING", "mode": "REPEATED"},
            ],
        },
        {"name": "rr", "type": "RECORD", "mode": "REPEATED", "fields": [{"name": "y", "type": "FLOAT"}]},
    ]
    wh.create_table(P, "ds", "enc", schema)
    assert (
        wh.insert_rows(
            P,
            "ds",
            "enc",
            [
                {
                    "i": 1,
                    "f": 0.5,
                    "b": True,
                    "ts": "2024-01-01 00:00:00",
                    "by": "AAE=",
                    "n": "1.250",
                    "d": "2024-01-01",
                    "dtm": "2024-01-01 10:00:00",
                    "r": {"x": 2, "tags": ["a"]},
                    "rr": [{"y": 1.0}],
                },
                {"i": None, "r": None},
            ],
        )
        == []
    )
    rows = encode_rows(wh.read_table_arrow(P, "ds", "enc"), schema)
    assert rows[0] == {
        "f": [
            {"v": "1"},
            {"v": "0.5"},
            {"v": "true"},
            {"v": "1704067200000000"},
            {"v": "AAE="},
            {"v": "1.25"},
            {"v": "2024-01-01"},
            {"v": "2024-01-01T10:00:00"},
            {"v": {"f": [{"v": "2"}, {"v": [{"v": "a"}]}]}},
            {"v": [{"v": {"f": [{"v": "1.0"}]}}]},
        ]
    }
    assert rows[1]["f"][0] == {"v": None} and rows[1]["f"][8] == {"v": None} and rows[1]["f"][9] == {"v": []}
    wh.create_table(P, "ds", "big", [{"name": "n", "type": "BIGNUMERIC"}])
    assert wh.insert_rows(P, "ds", "big", [{"n": "12345678901234567890.123456789"}, {"n": 100}]) == []
    cells = [
        r["f"][0]["v"]
        for r in encode_rows(wh.read_table_arrow(P, "ds", "big"), [{"name": "n", "type": "NUMERIC"}])
    ]
    assert cells == ["12345678901234567890.123456789", "100"]
    float_ts = encode_rows(wh.read_table_arrow(P, "ds", "enc", columns=["ts"]), [schema[3]], int64_ts=False)
    assert float(float_ts[0]["f"][0]["v"]) == 1704067200.0
    decoded = decode_rows(rows, schema)
    assert decoded[0]["ts"] == "2024-01-01T00:00:00Z" and decoded[0]["r"] == {"x": 2, "tags": ["a"]}


def test_load_csv_and_json(wh: Warehouse) -> None:
    schema = {"fields": [{"name": "tax", "type": "FLOAT"}, {"name": "n", "type": "INTEGER"}]}
    n = load_data(
        wh,
        P,
        "ds",
        "loaded",
        b"tax,n\n4.9,1\n5.99,2\n",
        {"sourceFormat": "CSV", "schema": schema, "skipLeadingRows": 1},
    )
    assert n == 2 and wh.get_table(P, "ds", "loaded")["num_rows"] == 2
    load_data(
        wh, P, "ds", "loaded", b'{"tax": "1.5", "n": "3"}\n', {"sourceFormat": "NEWLINE_DELIMITED_JSON"}
    )
    assert sorted(wh.read_table_arrow(P, "ds", "loaded").column("n").to_pylist()) == [1, 2, 3]
    with pytest.raises(InvalidArgument, match="row 2"):
        load_data(wh, P, "ds", "loaded", b"1.0,1\nx,2\n", {"sourceFormat": "CSV"})
    assert wh.get_table(P, "ds", "loaded")["num_rows"] == 3
    load_data(
        wh, P, "ds", "loaded", b"7.0,7\n", {"sourceFormat": "CSV", "writeDisposition": "WRITE_TRUNCATE"}
    )
    assert wh.read_table_arrow(P, "ds", "loaded").to_pylist() == [{"tax": 7.0, "n": 7}]
    auto = load_data(wh, P, "ds", "auto", b"a,b\n1,x\n2,y\n", {"sourceFormat": "CSV", "autodetect": True})
    assert auto == 2 and [f["type"] for f in wh.get_table_schema(P, "ds", "auto")] == ["INTEGER", "STRING"]


def test_close_stops_running_jobs(wh: Warehouse) -> None:
    jobs = JobManager(wh)
    job = jobs.submit_query(
        jobs.new_job(P, None, None, {"query": {"query": "SELECT sum(range % 7) AS s FROM range(5000000000)"}})
    )
    deadline = time.monotonic() + 30
    while job.connection is None and time.monotonic() < deadline:
        time.sleep(0.01)
    jobs.close(timeout=30)
    assert job.done and job.error is not None and "cancelled" in job.error.message


def test_finished_jobs_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "wh.duckdb"
    wh = Warehouse(path)
    wh.create_dataset(P, "ds")
    jobs = JobManager(wh)
    ok = run(jobs, {"query": "SELECT 1 AS x"})
    bad = run(jobs, {"query": "SELECT * FROM ds.missing"})
    ddl = run(jobs, {"query": "CREATE TABLE ds.made AS SELECT 1 AS x"})
    jobs.close()
    wh.close()
    wh = Warehouse(path)
    jobs = JobManager(wh)
    try:
        assert [j.job_id for j in jobs.list(P)] == [ddl.job_id, bad.job_id, ok.job_id]
        again = jobs.get(P, bad.job_id)
        assert again.done and isinstance(again.error, NotFound) and "ds.missing" in again.error.message
        made = jobs.get(P, ddl.job_id)
        assert made.result is not None and made.result.statement_type == "CREATE_TABLE_AS_SELECT"
        assert made.result.destination == (P, "ds", "made")
        with pytest.raises(FailedPrecondition, match="no longer kept"):
            query_results(
                jobs.get(P, ok.job_id),
                max_results=None,
                page_token=None,
                start_index=None,
                int64_ts=True,
                default_page=10,
            )
        with pytest.raises(AlreadyExists):
            jobs.new_job(P, ok.job_id, None, {"query": {"query": "SELECT 1"}})
    finally:
        jobs.close()
        wh.close()
