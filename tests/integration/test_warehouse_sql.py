"""GoogleSQL on the warehouse: translation, DDL/DML, EXPORT DATA, parameters, errors, extension hooks."""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loopml.artifacts import ArtifactStore
from loopml.errors import AlreadyExists, InvalidQuery, NotFound
from loopml.warehouse import QueryContext, QueryResult, TableFunctionArgs, Warehouse

P = "proj-a"


@pytest.fixture()
def wh(tmp_path: Path) -> Warehouse:
    w = Warehouse(tmp_path / "wh.duckdb", ArtifactStore(tmp_path / "store"))
    w.create_dataset(P, "ds")
    w.create_table(
        P,
        "ds",
        "trips",
        [
            {"name": "id", "type": "INT64"},
            {"name": "start", "type": "TIMESTAMP"},
            {"name": "stop", "type": "TIMESTAMP"},
            {"name": "fare", "type": "FLOAT64"},
            {"name": "tip", "type": "FLOAT64"},
            {"name": "zone", "type": "STRING"},
            {
                "name": "rec",
                "type": "RECORD",
                "fields": [{"name": "inner", "type": "RECORD", "fields": [{"name": "tax", "type": "FLOAT"}]}],
            },
            {"name": "tags", "type": "STRING", "mode": "REPEATED"},
        ],
    )
    rows = [
        # 2020-11-15 is a Sunday, 2020-11-16 a Monday
        {
            "id": 1,
            "start": "2020-11-15 10:00:00",
            "stop": "2020-11-15 10:05:30",
            "fare": 10.0,
            "tip": 2.0,
            "zone": "a",
            "rec": {"inner": {"tax": 1.5}},
            "tags": ["x", "y"],
        },
        {
            "id": 2,
            "start": "2020-11-16 23:00:00",
            "stop": "2020-11-16 23:00:10",
            "fare": 0.0,
            "tip": 1.0,
            "zone": "b",
            "rec": {"inner": {"tax": 2.5}},
            "tags": [],
        },
        {
            "id": 3,
            "start": "2020-07-04 08:00:00",
            "stop": "2020-07-04 09:00:00",
            "fare": 20.0,
            "tip": 5.0,
            "zone": "a",
            "rec": None,
            "tags": ["z"],
        },
    ]
    assert w.insert_rows(P, "ds", "trips", rows) == []
    yield w
    w.close()


def q(wh: Warehouse, sql: str, **kw: Any) -> list[dict[str, Any]]:
    return wh.query(sql, project=P, **kw).table.to_pylist()


def test_names_backticks_default_dataset_and_dashes(wh: Warehouse) -> None:
    assert q(wh, "SELECT count(*) AS n FROM `proj-a.ds.trips`") == [{"n": 3}]
    assert q(wh, "SELECT count(*) AS n FROM `proj-a`.ds.trips") == [{"n": 3}]
    assert q(wh, "SELECT count(*) AS n FROM ds.trips") == [{"n": 3}]
    assert q(wh, "SELECT count(*) AS n FROM trips", default_dataset="ds") == [{"n": 3}]
    with pytest.raises(InvalidQuery, match="missing dataset"):
        q(wh, "SELECT * FROM trips")
    with pytest.raises(NotFound, match=r"Table proj-a:ds\.nope"):
        q(wh, "SELECT * FROM ds.nope")
    assert q(wh, "WITH trips AS (SELECT 1 AS one) SELECT one FROM trips") == [{"one": 1}]


def test_functions(wh: Warehouse) -> None:
    rows = q(
        wh,
        "SELECT id, EXTRACT(MONTH FROM start) AS m, EXTRACT(DAY FROM start) AS d, "
        "EXTRACT(DAYOFWEEK FROM start) AS dow, EXTRACT(HOUR FROM start) AS h, "
        "TIMESTAMP_DIFF(stop, start, SECOND) AS secs, SAFE_DIVIDE(tip, fare) AS ratio, "
        "IF(tip / NULLIF(fare, 0) >= 0.2, 1, 0) AS tip_bin, SAFE_CAST(zone AS INT64) AS bad_cast, "
        "rec.inner.tax AS tax, DATE(start) AS day, fare BETWEEN 5 AND 15 AS mid "
        "FROM ds.trips ORDER BY id",
    )
    assert [(r["m"], r["d"], r["dow"], r["h"]) for r in rows] == [
        (11, 15, 1, 10),
        (11, 16, 2, 23),
        (7, 4, 7, 8),
    ]
    assert [r["secs"] for r in rows] == [330, 10, 3600]
    assert [r["ratio"] for r in rows] == [0.2, None, 0.25]
    assert [r["tip_bin"] for r in rows] == [1, 0, 1]
    assert [r["bad_cast"] for r in rows] == [None, None, None]
    assert [r["tax"] for r in rows] == [1.5, 2.5, None]
    assert rows[0]["day"] == dt.date(2020, 11, 15) and [r["mid"] for r in rows] == [True, False, False]


def test_more_bigquery_functions(wh: Warehouse) -> None:
    rows = q(
        wh,
        "SELECT EXTRACT(DATE FROM start) AS d, MOD(ABS(FARM_FINGERPRINT(zone)), 10) AS bucket, "
        "PARSE_TIMESTAMP('%Y-%m-%d %H:%M:%S', '2020-01-01 10:00:00') AS parsed, COUNTIF(fare > 5) OVER () AS n, "
        "FORMAT_TIMESTAMP('%Y-%m', start) AS ym FROM ds.trips ORDER BY id",
    )
    assert rows[0]["d"] == dt.date(2020, 11, 15) and rows[0]["ym"] == "2020-11" and rows[0]["n"] == 2
    assert rows[0]["parsed"] == dt.datetime(2020, 1, 1, 10, tzinfo=dt.UTC)
    assert rows[0]["bucket"] == rows[2]["bucket"] and 0 <= rows[1]["bucket"] < 10  # same zone, same bucket
    schema = wh.query("SELECT PARSE_TIMESTAMP('%Y', '2020') AS t", project=P).schema
    assert schema == [{"name": "t", "type": "TIMESTAMP", "mode": "NULLABLE"}]


def test_unnest_and_sampling(wh: Warehouse) -> None:
    assert q(wh, "SELECT id, tag FROM ds.trips, UNNEST(tags) AS tag ORDER BY id, tag") == [
        {"id": 1, "tag": "x"},
        {"id": 1, "tag": "y"},
        {"id": 3, "tag": "z"},
    ]
    assert q(wh, "SELECT SUM(x) AS s FROM UNNEST([1, 2, 3]) AS x") == [{"s": 6}]
    assert q(wh, "SELECT count(*) AS n FROM ds.trips TABLESAMPLE SYSTEM (100 PERCENT)") == [{"n": 3}]
    assert q(wh, "SELECT count(*) AS n FROM ds.trips TABLESAMPLE SYSTEM (0 PERCENT)") == [{"n": 0}]


def test_ctas_records_schema_and_dml(wh: Warehouse) -> None:
    r = wh.query(
        "CREATE TABLE ds.summary AS SELECT zone, (CASE WHEN zone = 'a' THEN TRUE ELSE FALSE END) AS is_a, "
        "SUM(fare) AS fare FROM ds.trips GROUP BY zone",
        project=P,
    )
    assert r.statement_type == "CREATE_TABLE_AS_SELECT" and r.destination == (P, "ds", "summary")
    assert wh.get_table_schema(P, "ds", "summary") == [
        {"name": "zone", "type": "STRING", "mode": "NULLABLE"},
        {"name": "is_a", "type": "BOOLEAN", "mode": "NULLABLE"},
        {"name": "fare", "type": "FLOAT", "mode": "NULLABLE"},
    ]
    with pytest.raises(AlreadyExists):
        wh.query("CREATE TABLE ds.summary AS SELECT 1 AS x", project=P)
    wh.query("CREATE OR REPLACE TABLE ds.summary AS SELECT zone, fare FROM ds.trips", project=P)
    assert wh.get_table(P, "ds", "summary")["num_rows"] == 3
    r = wh.query("INSERT INTO ds.summary (zone, fare) VALUES ('c', 1.0), ('d', 2.0)", project=P)
    assert (r.statement_type, r.num_dml_affected_rows) == ("INSERT", 2)
    r = wh.query("INSERT INTO ds.summary SELECT zone, fare FROM ds.trips WHERE id = 1", project=P)
    assert r.num_dml_affected_rows == 1
    r = wh.query("UPDATE ds.summary SET fare = fare * 2 WHERE zone = 'a'", project=P)
    assert (r.statement_type, r.num_dml_affected_rows) == ("UPDATE", 3)
    r = wh.query("DELETE FROM ds.summary WHERE zone = 'd'", project=P)
    assert (r.statement_type, r.num_dml_affected_rows) == ("DELETE", 1)
    r = wh.query(
        "MERGE ds.summary T USING (SELECT 'c' AS zone, 9.0 AS fare UNION ALL SELECT 'e', 3.0) S ON T.zone = S.zone "
        "WHEN MATCHED THEN UPDATE SET fare = S.fare WHEN NOT MATCHED THEN INSERT (zone, fare) VALUES (S.zone, S.fare)",
        project=P,
    )
    assert r.statement_type == "MERGE"
    assert q(wh, "SELECT zone, fare FROM ds.summary WHERE zone IN ('c', 'e') ORDER BY zone") == [
        {"zone": "c", "fare": 9.0},
        {"zone": "e", "fare": 3.0},
    ]
    r = wh.query("CREATE TABLE ds.typed (a INT64, b STRING, c ARRAY<FLOAT64>)", project=P)
    assert r.statement_type == "CREATE_TABLE"
    assert [f["type"] for f in wh.get_table_schema(P, "ds", "typed")] == ["INTEGER", "STRING", "FLOAT"]
    wh.query("DROP TABLE ds.typed", project=P)
    wh.query("DROP TABLE IF EXISTS ds.typed", project=P)
    with pytest.raises(NotFound):
        wh.query("DROP TABLE ds.typed", project=P)


def test_sql_created_json_columns_stay_json_and_take_objects(wh: Warehouse) -> None:
    # DuckDB hands JSON columns to Arrow as plain strings; the catalog must still say JSON, or a
    # streaming insert (or a BigQuery subscription) of an object into the column is refused
    wh.query("CREATE TABLE ds.events (event STRING, ecommerce JSON, tags JSON[])", project=P)
    assert wh.get_table_schema(P, "ds", "events") == [
        {"name": "event", "type": "STRING", "mode": "NULLABLE"},
        {"name": "ecommerce", "type": "JSON", "mode": "NULLABLE"},
        {"name": "tags", "type": "JSON", "mode": "REPEATED"},
    ]
    rows = [{"event": "purchase", "ecommerce": {"purchase": {"value": 35.43}}, "tags": [{"a": 1}, "x"]}]
    assert wh.insert_rows(P, "ds", "events", rows) == []
    assert q(wh, "SELECT event, JSON_VALUE(ecommerce, '$.purchase.value') AS v FROM ds.events") == [
        {"event": "purchase", "v": "35.43"}
    ]
    wh.query("CREATE TABLE ds.events2 AS SELECT * FROM ds.events", project=P)
    assert [f["type"] for f in wh.get_table_schema(P, "ds", "events2")] == ["STRING", "JSON", "JSON"]


def test_decimal_point_literals_are_float64(wh: Warehouse) -> None:
    # BigQuery types `1.5` as FLOAT64 (NUMERIC needs NUMERIC '1.5'); DuckDB alone would say DECIMAL
    r = wh.query("SELECT 1.5 AS x, 2 AS i, 4.9 * 2 AS y, 1e3 AS e, NUMERIC '1.5' AS n", project=P)
    assert [(f["name"], f["type"]) for f in r.schema] == [
        ("x", "FLOAT"),
        ("i", "INTEGER"),
        ("y", "FLOAT"),
        ("e", "FLOAT"),
        ("n", "NUMERIC"),
    ]
    row = r.table.to_pylist()[0]
    assert type(row["x"]) is float and row["x"] == 1.5 and row["y"] == 9.8 and row["e"] == 1000.0
    # number literals that are syntax keep working: sample sizes, limits, intervals
    assert len(q(wh, "SELECT id FROM ds.trips TABLESAMPLE SYSTEM (100.0 PERCENT) LIMIT 2")) == 2
    assert q(wh, "SELECT DATE_ADD(DATE '2024-01-01', INTERVAL 2 DAY) AS d")[0]["d"].day == 3


def test_script_returns_last_result(wh: Warehouse) -> None:
    r = wh.query(
        "CREATE TABLE ds.s1 AS SELECT 1 AS x; INSERT INTO ds.s1 VALUES (2); SELECT SUM(x) AS s FROM ds.s1",
        project=P,
    )
    assert r.table.to_pylist() == [{"s": 3}]


def test_parameters_named_and_positional(wh: Warehouse) -> None:
    assert q(
        wh,
        "SELECT id FROM ds.trips WHERE zone = @zone AND fare > @min ORDER BY id",
        params={"zone": "a", "min": 5},
    ) == [{"id": 1}, {"id": 3}]
    assert q(wh, "SELECT id FROM ds.trips WHERE zone = ? AND fare > ? ORDER BY id", params=["a", 15]) == [
        {"id": 3}
    ]
    since = dt.datetime(2020, 11, 16, tzinfo=dt.UTC)
    assert q(wh, "SELECT id FROM ds.trips WHERE start >= @since", params={"since": since}) == [{"id": 2}]
    # a parameter value is data, never SQL
    assert q(wh, "SELECT count(*) AS n FROM ds.trips WHERE zone = @z", params={"z": "a' OR '1'='1"}) == [
        {"n": 0}
    ]
    with pytest.raises(InvalidQuery, match="parameter 'zone' not found"):
        q(wh, "SELECT @zone AS z")


def test_bad_sql_names_line_and_column(wh: Warehouse) -> None:
    with pytest.raises(InvalidQuery, match=r"\[1:13\]"):
        q(wh, "SELECT FROM WHERE")
    with pytest.raises(InvalidQuery, match=r"Unrecognized name: nosuch at \[2:8\]"):
        q(wh, "SELECT id,\n       nosuch FROM ds.trips")
    with pytest.raises(InvalidQuery, match=r"\[2:"):
        q(wh, "SELECT 1;\nSELECT (1 +) FROM x")
    with pytest.raises(InvalidQuery) as err:
        q(wh, "SELECT id + 'x' FROM ds.trips")
    assert "proj-a.ds" not in err.value.message or "trips" in err.value.message


def test_error_positions_are_those_of_the_googlesql_text(wh: Warehouse) -> None:
    """(a) sqlglot parse errors, (b) DuckDB parser errors after translation, (c) binder errors."""
    cases = [
        # (a) sqlglot cannot parse: the class name of sqlglot's node is not leaked
        ("SELECT id,\n  zone\nFROM ds.trips\nWHERE id = = 3", r"Syntax error: .* at \[4:12\]$"),
        # (b) sqlglot parses, DuckDB's parser rejects the translation: the token is found again
        (
            "SELECT id\nFROM ds.trips\n  FOR SYSTEM_TIME AS OF CURRENT_TIMESTAMP()",
            r'DuckDB cannot parse \(syntax error at or near "FOR"\) at \[3:3\]$',
        ),
        (
            "SELECT id,\n   CAST(id AS STRING FORMAT '999') AS s\nFROM ds.trips",
            r'near "FORMAT"\) at \[2:22\]$',
        ),
        # (c) binder errors: a name in a comment or a string is not the one at fault
        (
            "-- nosuch here\nSELECT 'nosuch',\n    nosuch\nFROM ds.trips",
            r"^Unrecognized name: nosuch at \[3:5\]$",
        ),
        (
            "SELECT t.id,\n       t.nosuch\nFROM ds.trips AS t",
            r"^Name nosuch not found inside t at \[2:10\]$",
        ),
        ("SELECT id,\n  x.zone\nFROM ds.trips", r"^Unrecognized name: x at \[2:3\]$"),
        ("SELECT id,\n   nosuchfn(id) AS y\nFROM ds.trips", r"^Function not found: nosuchfn at \[2:4\]$"),
        ("SELECT id, zone\nFROM ds.trips\nGROUP BY id", r"neither grouped nor aggregated at \[1:12\]$"),
        ("SELECT 1;\nSELECT id,\n  bogus FROM ds.trips", r"^Unrecognized name: bogus at \[3:3\]$"),
    ]
    for sql, pattern in cases:
        for run in (wh.query, wh.dry_run):
            with pytest.raises(InvalidQuery, match=pattern) as err:
                run(sql, project=P)
            assert "sqlglot" not in err.value.message and "<class" not in err.value.message
    # a misspelt name gets a suggestion, as BigQuery gives one
    with pytest.raises(InvalidQuery, match=r"^Unrecognized name: zonee; Did you mean zone\? at \[2:3\]$"):
        q(wh, "SELECT id,\n  zonee\nFROM ds.trips")
    # an unknown table stays BigQuery's 404 notFound, now with its position
    with pytest.raises(NotFound, match=r"Table proj-a:ds\.missing was not found in location US at \[3:6\]$"):
        q(wh, "SELECT id\nFROM ds.trips\nJOIN ds.missing USING (id)")
    # where DuckDB gives no position, or one that has no match in the text, the message says so
    with pytest.raises(
        InvalidQuery, match=r"No matching signature for \+ .*\[position unknown: DuckDB reports none"
    ):
        q(wh, "SELECT id\nFROM ds.trips\nWHERE zone > 1 + 'x'")
    with pytest.raises(
        InvalidQuery, match=r"near \":\"\) \[position unknown: DuckDB's position in the translated"
    ):
        q(wh, "SELECT id,\n COLLATE(zone, 'und:ci') FROM ds.trips")


def test_export_data_shards(wh: Warehouse, tmp_path: Path) -> None:
    r = wh.query(
        "EXPORT DATA OPTIONS(uri='gs://bkt/taxi/train/*.csv', format='CSV', overwrite=true, header=true) AS "
        "SELECT id, fare, zone FROM ds.trips ORDER BY id",
        project=P,
    )
    assert r.statement_type == "EXPORT_DATA"
    out = tmp_path / "store" / "buckets" / "bkt" / "taxi" / "train"
    assert sorted(p.name for p in out.iterdir()) == ["000000000000.csv"]
    with (out / "000000000000.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["id"] for r in rows] == ["1", "2", "3"] and rows[0]["zone"] == "a"
    wh.query(
        "EXPORT DATA OPTIONS(uri='gs://bkt/csv2/*.csv', format='CSV', header=true) AS "
        "SELECT 'a,b' AS s, TRUE AS ok, start, CAST(NULL AS STRING) AS nothing FROM ds.trips WHERE id = 1",
        project=P,
    )
    assert (tmp_path / "store/buckets/bkt/csv2/000000000000.csv").read_text().splitlines() == [
        "s,ok,start,nothing",
        '"a,b",true,2020-11-15 10:00:00 UTC,',
    ]
    with pytest.raises(InvalidQuery, match="not empty"):
        wh.query(
            "EXPORT DATA OPTIONS(uri='gs://bkt/taxi/train/*.csv', format='CSV') AS SELECT 1 AS x", project=P
        )
    wh.query(
        "EXPORT DATA OPTIONS(uri='gs://bkt/j/*.json', format='JSON') AS SELECT id, tags, start FROM ds.trips",
        project=P,
    )
    lines = (tmp_path / "store/buckets/bkt/j/000000000000.json").read_text().splitlines()
    assert json.loads(lines[0])["tags"] == ["x", "y"] and len(lines) == 3
    wh.query(
        "EXPORT DATA OPTIONS(uri='gs://bkt/pq/part-*.parquet', format='PARQUET') AS SELECT * FROM ds.trips",
        project=P,
    )
    assert pq.read_table(tmp_path / "store/buckets/bkt/pq/part-000000000000.parquet").num_rows == 3


def test_table_function_hook_substitutes_a_relation(wh: Warehouse) -> None:
    seen: list[TableFunctionArgs] = []

    def fake_predict(args: TableFunctionArgs, ctx: QueryContext) -> pa.Table:
        seen.append(args)
        assert args.query is not None
        inner = ctx.query(args.query).table
        return inner.append_column(
            "CENTROID_ID", pa.array([1 if v > 15 else 2 for v in inner.column("fare").to_pylist()])
        )

    wh.register_table_function("ML.PREDICT", fake_predict)
    sql = (
        "CREATE TABLE ds.labelled AS SELECT (CASE WHEN CENTROID_ID = 1 THEN TRUE ELSE FALSE END) AS anomaly, fare\n"
        "FROM ML.PREDICT(MODEL `proj-a.ds.m`,\n  (SELECT fare FROM ds.trips), STRUCT(0.02 AS contamination, TRUE AS x))"
    )
    r = wh.query(sql, project=P)
    assert r.statement_type == "CREATE_TABLE_AS_SELECT"
    assert seen[0].model == ("proj-a", "ds", "m") and seen[0].options == {"contamination": 0.02, "x": True}
    assert seen[0].query is not None and seen[0].query.strip() == "SELECT fare FROM ds.trips"
    assert q(wh, "SELECT anomaly, fare FROM ds.labelled ORDER BY fare") == [
        {"anomaly": False, "fare": 0.0},
        {"anomaly": False, "fare": 10.0},
        {"anomaly": True, "fare": 20.0},
    ]
    rows = q(wh, "SELECT p.CENTROID_ID AS c FROM ML.PREDICT(MODEL ds.m, TABLE ds.trips) AS p ORDER BY c")
    assert [r["c"] for r in rows] == [1, 2, 2] and seen[1].table == ("proj-a", "ds", "trips")
    # positions after a substituted call still point into the user's text
    with pytest.raises(InvalidQuery, match=r"\[3:"):
        q(wh, "SELECT *\nFROM ML.PREDICT(MODEL ds.m,\n (SELECT fare FROM ds.trips)) WHERE ORDER")


def test_statement_handler_gets_unparsable_statements(wh: Warehouse) -> None:
    calls: list[tuple[str, bool]] = []

    def handler(text: str, parsed: Any, ctx: QueryContext) -> QueryResult | None:
        calls.append((text.strip(), parsed is not None))
        if text.strip().upper().startswith("CREATE MODEL"):
            return QueryResult.empty("CREATE_MODEL")
        return None

    wh.register_statement_handler(handler)
    sql = "CREATE MODEL ds.m OPTIONS(model_type='kmeans') AS SELECT * FROM ML.CENTROIDS(MODEL ds.x)"
    assert wh.query(sql, project=P).statement_type == "CREATE_MODEL"
    assert calls[-1] == (sql, False)
    assert q(wh, "SELECT 1 AS one") == [{"one": 1}]
    assert calls[-1] == ("SELECT 1 AS one", True)


def test_schema_and_view_ddl(wh: Warehouse) -> None:
    assert wh.query("CREATE SCHEMA ds2", project=P).statement_type == "CREATE_SCHEMA"
    assert [d["dataset"] for d in wh.list_datasets(P)] == ["ds", "ds2"]
    wh.query("CREATE VIEW ds2.v AS SELECT id + 1 AS y FROM ds.trips WHERE id = 1", project=P)
    assert q(wh, "SELECT y FROM ds2.v") == [{"y": 2}] and wh.get_table(P, "ds2", "v")["type"] == "VIEW"
    assert wh.query("DROP SCHEMA ds2 CASCADE", project=P).statement_type == "DROP_SCHEMA"
    assert [d["dataset"] for d in wh.list_datasets(P)] == ["ds"]


def test_unnamed_columns_are_f0_f1(wh: Warehouse) -> None:
    r = wh.query("SELECT zone, COUNT(*), SUM(fare) AS total, MAX(tip) FROM ds.trips GROUP BY zone", project=P)
    assert r.table.column_names == ["zone", "f0_", "total", "f1_"]
    assert [f["name"] for f in r.schema] == ["zone", "f0_", "total", "f1_"]
    assert wh.query(
        "SELECT * FROM (SELECT 1, rec.inner.tax FROM ds.trips)", project=P
    ).table.column_names == ["f0_", "tax"]


def test_information_schema(wh: Warehouse) -> None:
    wh.query("CREATE VIEW ds.v AS SELECT id FROM ds.trips", project=P)
    assert q(wh, "SELECT table_name, table_type FROM ds.INFORMATION_SCHEMA.TABLES ORDER BY table_name") == [
        {"table_name": "trips", "table_type": "BASE TABLE"},
        {"table_name": "v", "table_type": "VIEW"},
    ]
    cols = q(
        wh,
        "SELECT column_name, data_type, is_nullable FROM `proj-a.ds.INFORMATION_SCHEMA.COLUMNS` "
        "WHERE table_name = 'trips' ORDER BY ordinal_position",
    )
    assert cols[0] == {"column_name": "id", "data_type": "INT64", "is_nullable": "YES"}
    assert cols[6]["data_type"] == "STRUCT<inner STRUCT<tax FLOAT64>>"
    assert cols[7] == {"column_name": "tags", "data_type": "ARRAY<STRING>", "is_nullable": "NO"}
    with pytest.raises(InvalidQuery, match=r"INFORMATION_SCHEMA\.JOBS"):
        q(wh, "SELECT * FROM ds.INFORMATION_SCHEMA.JOBS")


def test_dry_run_checks_without_running(wh: Warehouse) -> None:
    r = wh.dry_run(
        "SELECT zone, COUNT(*) FROM ds.trips WHERE fare > @min GROUP BY zone", project=P, params={"min": 1}
    )
    assert r.total_rows == 0 and [f["name"] for f in r.schema] == ["zone", "f0_"]
    assert r.schema[1]["type"] == "INTEGER"
    assert wh.dry_run("DELETE FROM ds.trips WHERE TRUE", project=P).statement_type == "DELETE"
    assert wh.get_table(P, "ds", "trips")["num_rows"] == 3  # nothing ran
    with pytest.raises(NotFound):
        wh.dry_run("SELECT * FROM ds.nope", project=P)
    with pytest.raises(InvalidQuery, match=r"\[1:13\]"):
        wh.dry_run("SELECT FROM WHERE", project=P)
    with pytest.raises(InvalidQuery, match="Unrecognized name: nosuch"):
        wh.dry_run("SELECT nosuch FROM ds.trips", project=P)
    assert (
        wh.dry_run("SELECT table_name FROM ds.INFORMATION_SCHEMA.TABLES", project=P).schema[0]["name"]
        == "table_name"
    )
