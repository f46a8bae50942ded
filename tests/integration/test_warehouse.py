"""Warehouse on a real DuckDB file: catalog, types and modes, streaming-insert semantics, dedup."""

from __future__ import annotations

import datetime as dt
import json
import threading
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest

from loopml.artifacts import ArtifactStore
from loopml.errors import AlreadyExists, InvalidArgument, NotFound
from loopml.warehouse import Warehouse

DATA = Path(__file__).resolve().parent.parent / "data" / "bigquery"
P = "my-proj-1"

ALL_TYPES = [
    {"name": "i", "type": "INT64", "mode": "REQUIRED", "description": "an int"},
    {"name": "i2", "type": "INTEGER"},
    {"name": "f", "type": "FLOAT64"},
    {"name": "f2", "type": "FLOAT"},
    {"name": "b", "type": "BOOL"},
    {"name": "b2", "type": "BOOLEAN"},
    {"name": "s", "type": "STRING"},
    {"name": "by", "type": "BYTES"},
    {"name": "n", "type": "NUMERIC"},
    {"name": "bn", "type": "BIGNUMERIC"},
    {"name": "ts", "type": "TIMESTAMP"},
    {"name": "d", "type": "DATE"},
    {"name": "t", "type": "TIME"},
    {"name": "dtm", "type": "DATETIME"},
    {"name": "g", "type": "GEOGRAPHY"},
    {"name": "j", "type": "JSON"},
    {"name": "tags", "type": "STRING", "mode": "REPEATED"},
    {
        "name": "rec",
        "type": "STRUCT",
        "fields": [
            {"name": "x", "type": "INT64"},
            {"name": "ys", "type": "RECORD", "mode": "REPEATED", "fields": [{"name": "y", "type": "FLOAT"}]},
        ],
    },
]


@pytest.fixture()
def wh(tmp_path: Path) -> Warehouse:
    w = Warehouse(tmp_path / "wh.duckdb", ArtifactStore(tmp_path / "store"))
    w.create_dataset(P, "ds")
    yield w
    w.close()


def cloud_run_schema() -> list[dict]:
    return json.loads((DATA / "cloud_run_schema.json").read_text())


def events() -> dict[str, dict]:
    return json.loads((DATA / "ecommerce_events.json").read_text())


def test_datasets_and_tables_catalog(wh: Warehouse) -> None:
    with pytest.raises(AlreadyExists):
        wh.create_dataset(P, "ds")
    assert wh.create_dataset(P, "ds", exists_ok=True)["dataset"] == "ds"
    wh.create_dataset("other-project", "ds")
    assert [d["dataset"] for d in wh.list_datasets(P)] == ["ds"]
    info = wh.create_table(P, "ds", "all_types", ALL_TYPES)
    assert info["schema"][0] == {"name": "i", "type": "INT64", "mode": "REQUIRED", "description": "an int"}
    assert info["num_rows"] == 0
    with pytest.raises(AlreadyExists):
        wh.create_table(P, "ds", "all_types", ALL_TYPES)
    with pytest.raises(NotFound, match="Dataset my-proj-1:nope"):
        wh.create_table(P, "nope", "t", ALL_TYPES)
    with pytest.raises(NotFound, match=r"Table my-proj-1:ds\.missing"):
        wh.get_table(P, "ds", "missing")
    with pytest.raises(InvalidArgument, match="Invalid type"):
        wh.create_table(P, "ds", "bad", [{"name": "x", "type": "INT65"}])
    with pytest.raises(InvalidArgument, match="still in use"):
        wh.delete_dataset(P, "ds")
    assert [t["table"] for t in wh.list_tables(P, "ds")] == ["all_types"]
    wh.delete_dataset(P, "ds", delete_contents=True)
    with pytest.raises(NotFound):
        wh.get_dataset(P, "ds")
    assert wh.list_datasets("other-project")[0]["dataset"] == "ds"


def test_all_types_round_trip(wh: Warehouse) -> None:
    wh.create_table(P, "ds", "all_types", ALL_TYPES)
    row = {
        "i": "42",
        "i2": 7.0,
        "f": "0.5",
        "f2": 3,
        "b": "true",
        "b2": False,
        "s": 12,
        "by": "AAEC",
        "n": "1.25",
        "bn": 2,
        "ts": "2020-11-16 12:00:00.250000+01:00",
        "d": "2024-01-02",
        "t": "10:11:12",
        "dtm": "2024-01-02 03:04:05",
        "g": "POINT(1 2)",
        "j": {"a": [1, 2]},
        "tags": ["x", "y"],
        "rec": {"x": "5", "ys": [{"y": "1.5"}, {"y": 2}]},
    }
    assert wh.insert_rows(P, "ds", "all_types", [row]) == []
    got = wh.read_table_arrow(P, "ds", "all_types").to_pylist()[0]
    assert got["i"] == 42 and got["i2"] == 7 and got["f"] == 0.5 and got["f2"] == 3.0
    assert got["b"] is True and got["b2"] is False and got["s"] == "12" and got["by"] == b"\x00\x01\x02"
    assert got["n"] == Decimal("1.25") and got["bn"] == Decimal(2)
    assert got["ts"] == dt.datetime(2020, 11, 16, 11, 0, 0, 250000, tzinfo=dt.UTC)
    assert got["d"] == dt.date(2024, 1, 2) and got["t"] == dt.time(10, 11, 12)
    assert got["dtm"] == dt.datetime(2024, 1, 2, 3, 4, 5)
    assert json.loads(got["j"]) == {"a": [1, 2]} and got["tags"] == ["x", "y"]
    assert got["rec"] == {"x": 5, "ys": [{"y": 1.5}, {"y": 2.0}]}
    # the catalog keeps the types as written
    assert [f["type"] for f in wh.get_table_schema(P, "ds", "all_types")][:4] == [
        "INT64",
        "INTEGER",
        "FLOAT64",
        "FLOAT",
    ]


def test_timestamp_forms(wh: Warehouse) -> None:
    wh.create_table(P, "ds", "ts", [{"name": "ts", "type": "TIMESTAMP"}])
    forms = [
        "2020-11-16 12:00:00",
        "2020-11-16T12:00:00",
        "2020-11-16T12:00:00Z",
        "2020-11-16 13:00:00+01:00",
        "2020-11-16 12:00:00 UTC",
        1605528000,
        1605528000.0,
    ]
    assert wh.insert_rows(P, "ds", "ts", [{"ts": f} for f in forms]) == []
    values = wh.read_table_arrow(P, "ds", "ts").column("ts").to_pylist()
    assert set(values) == {dt.datetime(2020, 11, 16, 12, tzinfo=dt.UTC)}


def test_workshop_events_into_cloud_run(wh: Warehouse) -> None:
    wh.create_table(
        P, "ds", "cloud_run", cloud_run_schema(), time_partitioning={"type": "DAY", "field": "event_datetime"}
    )
    ev = events()
    rows = [dict(e, weekday="Monday") for e in ev.values()]
    assert wh.insert_rows(P, "ds", "cloud_run", rows) == []
    info = wh.get_table(P, "ds", "cloud_run")
    assert info["num_rows"] == 4 and info["time_partitioning"] == {"type": "DAY", "field": "event_datetime"}
    r = wh.query(
        "SELECT ecommerce.purchase.value AS value, ecommerce.purchase.items[OFFSET(1)].item_id AS second "
        "FROM ds.cloud_run WHERE event = 'purchase' ORDER BY value",
        project=P,
    )
    assert r.table.to_pylist() == [{"value": 35.43, "second": 12345}, {"value": 1000000.1, "second": 12345}]


def test_insert_errors_skip_invalid_keeps_good_rows(wh: Warehouse) -> None:
    wh.create_table(P, "ds", "cloud_run", cloud_run_schema())
    good = events()["purchase"]
    bad_type = dict(good, ecommerce={"items": [{"item_id": "not-a-number"}]})
    missing = {k: v for k, v in good.items() if k != "user_id"}
    unknown = dict(good, surprise=1)
    rows = [good, bad_type, missing, unknown, good]
    errors = wh.insert_rows(P, "ds", "cloud_run", rows, skip_invalid=True)
    by_index = {e["index"]: e["errors"][0] for e in errors}
    assert sorted(by_index) == [1, 2, 3]
    assert by_index[1]["location"] == "ecommerce.items[0].item_id" and by_index[1]["reason"] == "invalid"
    assert by_index[2]["location"] == "user_id" and "required" in by_index[2]["message"].lower()
    assert by_index[3]["location"] == "surprise"
    assert wh.get_table(P, "ds", "cloud_run")["num_rows"] == 2


def test_one_bad_row_fails_whole_request(wh: Warehouse) -> None:
    wh.create_table(P, "ds", "t", [{"name": "x", "type": "INTEGER"}])
    errors = wh.insert_rows(P, "ds", "t", [{"x": 1}, {"x": "abc"}, {"x": 3}])
    assert {e["index"]: e["errors"][0]["reason"] for e in errors} == {
        0: "stopped",
        1: "invalid",
        2: "stopped",
    }
    assert wh.get_table(P, "ds", "t")["num_rows"] == 0
    assert wh.insert_rows(P, "ds", "t", [{"x": 1, "y": 2}], ignore_unknown=True) == []
    assert wh.get_table(P, "ds", "t")["num_rows"] == 1


def test_insert_id_dedup_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "wh.duckdb"
    w = Warehouse(path)
    w.create_dataset(P, "ds")
    w.create_table(P, "ds", "t", [{"name": "x", "type": "INTEGER"}])
    assert w.insert_rows(P, "ds", "t", [{"x": 1}, {"x": 2}, {"x": 2}], ["a", "b", "b"]) == []
    assert w.insert_rows(P, "ds", "t", [{"x": 1}], ["a"]) == []
    assert w.get_table(P, "ds", "t")["num_rows"] == 2
    w.close()
    w = Warehouse(path)
    assert w.insert_rows(P, "ds", "t", [{"x": 1}, {"x": 3}, {"x": 4}], ["a", "c", None]) == []
    assert sorted(w.read_table_arrow(P, "ds", "t").column("x").to_pylist()) == [1, 2, 3, 4]
    w.close()
    # outside the window ids are forgotten
    w = Warehouse(path, dedup_window_s=0.0)
    assert w.insert_rows(P, "ds", "t", [{"x": 1}], ["a"]) == []
    assert w.get_table(P, "ds", "t")["num_rows"] == 5
    w.close()


def test_patch_adds_columns_and_write_arrow(wh: Warehouse) -> None:
    wh.create_table(P, "ds", "t", [{"name": "x", "type": "INTEGER", "mode": "REQUIRED"}])
    with pytest.raises(InvalidArgument, match="missing field"):
        wh.patch_table(P, "ds", "t", schema=[{"name": "y", "type": "STRING"}])
    info = wh.patch_table(
        P,
        "ds",
        "t",
        schema=[{"name": "x", "type": "INTEGER", "mode": "REQUIRED"}, {"name": "y", "type": "STRING"}],
    )
    assert [f["name"] for f in info["schema"]] == ["x", "y"]
    assert wh.insert_rows(P, "ds", "t", [{"x": 1, "y": "a"}]) == []
    wh.write_table_arrow(P, "ds", "t", pa.table({"x": [2], "y": ["b"]}), mode="append")
    wh.write_table_arrow(P, "ds", "made", pa.table({"a": [1.5, 2.5]}), mode="create")
    with pytest.raises(AlreadyExists):
        wh.write_table_arrow(P, "ds", "made", pa.table({"a": [1.5]}), mode="create")
    wh.write_table_arrow(P, "ds", "made", pa.table({"a": [9.0]}), mode="truncate")
    assert wh.read_table_arrow(P, "ds", "made").column("a").to_pylist() == [9.0]
    assert wh.get_table_schema(P, "ds", "made") == [{"name": "a", "type": "FLOAT", "mode": "NULLABLE"}]
    assert wh.read_table_arrow(P, "ds", "t", columns=["y"], start_index=1, max_rows=1).to_pylist() == [
        {"y": "b"}
    ]


def test_concurrent_inserts_and_reads(wh: Warehouse) -> None:
    wh.create_table(P, "ds", "t", [{"name": "x", "type": "INTEGER"}])
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(20):
                assert wh.insert_rows(P, "ds", "t", [{"x": k * 100 + i}]) == []
                wh.query("SELECT count(*) AS n FROM ds.t", project=P)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert wh.get_table(P, "ds", "t")["num_rows"] == 80


def test_integer_strings_and_repeated_timestamps(wh: Warehouse) -> None:
    wh.create_table(P, "ds", "t", [{"name": "n", "type": "INTEGER"}, {"name": "ts", "type": "TIMESTAMP"}])
    rows = [
        {"n": "007", "ts": "2020-11-16 12:00:00"},
        {"n": "-5", "ts": "2020-11-16 12:00:00"},
        {"n": "99999999999999999999", "ts": "2020-11-16 12:00:01+01:00"},
        {"n": "1.0", "ts": "bad"},
    ]
    errors = wh.insert_rows(P, "ds", "t", rows, skip_invalid=True)
    assert [(e["index"], e["errors"][0]["location"]) for e in errors] == [(2, "n"), (3, "ts")]
    got = wh.read_table_arrow(P, "ds", "t").to_pylist()
    assert [r["n"] for r in got] == [7, -5]
    assert {r["ts"] for r in got} == {dt.datetime(2020, 11, 16, 12, tzinfo=dt.UTC)}
