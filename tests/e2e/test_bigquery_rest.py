"""The BigQuery REST surface over raw HTTP: shapes the Google client relies on, errors, paging."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

P = "rest-proj"
BASE = f"/bigquery/v2/projects/{P}"


@pytest.fixture(scope="module")
def http(server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        assert (
            c.post(
                f"{BASE}/datasets", json={"datasetReference": {"projectId": P, "datasetId": "ds"}}
            ).status_code
            == 200
        )
        body = {
            "tableReference": {"projectId": P, "datasetId": "ds", "tableId": "t"},
            "schema": {
                "fields": [
                    {"name": "n", "type": "INT64", "mode": "REQUIRED"},
                    {"name": "ts", "type": "TIMESTAMP"},
                    {
                        "name": "r",
                        "type": "STRUCT",
                        "fields": [{"name": "tags", "type": "STRING", "mode": "REPEATED"}],
                    },
                ]
            },
        }
        assert c.post(f"{BASE}/datasets/ds/tables", json=body).status_code == 200
        rows = [
            {"json": {"n": i, "ts": "2024-01-01 00:00:00", "r": {"tags": ["a", str(i)]}}, "insertId": f"i{i}"}
            for i in range(5)
        ]
        assert c.post(f"{BASE}/datasets/ds/tables/t/insertAll", json={"rows": rows}).json() == {
            "kind": "bigquery#tableDataInsertAllResponse"
        }
        yield c


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()["error"]
    return {"code": body["code"], "reason": body["errors"][0]["reason"], "message": body["message"]}


def test_table_resource_uses_legacy_names(http: httpx.Client) -> None:
    table = http.get(f"{BASE}/datasets/ds/tables/t", params={"prettyPrint": "false"}).json()
    assert table["id"] == f"{P}:ds.t" and table["numRows"] == "5" and table["type"] == "TABLE"
    assert [f["type"] for f in table["schema"]["fields"]] == ["INTEGER", "TIMESTAMP", "RECORD"]
    assert table["schema"]["fields"][0]["mode"] == "REQUIRED"
    assert table["tableReference"] == {"projectId": P, "datasetId": "ds", "tableId": "t"}


def test_tabledata_list_paging_and_encoding(http: httpx.Client) -> None:
    page = http.get(
        f"{BASE}/datasets/ds/tables/t/data",
        params={"maxResults": 2, "formatOptions.useInt64Timestamp": "True"},
    ).json()
    assert page["totalRows"] == "5" and page["pageToken"] == "2"
    assert page["rows"][0] == {
        "f": [{"v": "0"}, {"v": "1704067200000000"}, {"v": {"f": [{"v": [{"v": "a"}, {"v": "0"}]}]}}]
    }
    rest = http.get(f"{BASE}/datasets/ds/tables/t/data", params={"pageToken": page["pageToken"]}).json()
    assert [r["f"][0]["v"] for r in rest["rows"]] == ["2", "3", "4"] and "pageToken" not in rest
    assert rest["rows"][0]["f"][1]["v"] == "1704067200.0"  # float seconds without useInt64Timestamp
    picked = http.get(
        f"{BASE}/datasets/ds/tables/t/data", params={"startIndex": 4, "selectedFields": "n"}
    ).json()
    assert picked["rows"] == [{"f": [{"v": "4"}]}]


def test_query_job_reply_shapes(http: httpx.Client) -> None:
    job = http.post(
        f"{BASE}/jobs",
        json={
            "jobReference": {"jobId": "j1", "projectId": P},
            "configuration": {"query": {"query": "SELECT n FROM ds.t ORDER BY n", "useLegacySql": False}},
        },
    ).json()
    assert job["jobReference"] == {"projectId": P, "jobId": "j1", "location": "US"}
    assert job["status"] == {"state": "DONE"} and job["statistics"]["query"]["statementType"] == "SELECT"
    first = http.get(f"{BASE}/queries/j1", params={"maxResults": 0, "location": "US"}).json()
    assert first["jobComplete"] is True and first["totalRows"] == "5" and "rows" not in first
    assert first["schema"]["fields"] == [{"name": "n", "type": "INTEGER", "mode": "NULLABLE"}]
    rows = http.get(f"{BASE}/queries/j1", params={"maxResults": 3, "startIndex": 1}).json()
    assert [r["f"][0]["v"] for r in rows["rows"]] == ["1", "2", "3"] and rows["pageToken"] == "4"
    full = http.get(f"{BASE}/jobs/j1", params={"projection": "full", "location": "US"}).json()
    assert full["status"]["state"] == "DONE" and int(full["statistics"]["endTime"]) >= int(
        full["statistics"]["creationTime"]
    )
    listed = http.get(f"{BASE}/jobs").json()["jobs"]
    assert "j1" in [j["jobReference"]["jobId"] for j in listed]
    dup = http.post(
        f"{BASE}/jobs",
        json={"jobReference": {"jobId": "j1"}, "configuration": {"query": {"query": "SELECT 1"}}},
    )
    assert error_of(dup)["code"] == 409 and error_of(dup)["reason"] == "duplicate"


def test_jobs_query_errors_name_line_and_column_of_the_googlesql(http: httpx.Client) -> None:
    """A 400 invalidQuery with errors[].reason/location/message, positions in the text sent."""
    cases = {
        "SELECT n,\n  ts\nFROM ds.t\nWHERE n = = 3": "near '=' at [4:11]",  # sqlglot cannot parse
        "SELECT n\nFROM ds.t\n  FOR SYSTEM_TIME AS OF CURRENT_TIMESTAMP()": '"FOR") at [3:3]',  # DuckDB parser
        "SELECT n,\n  ts,\n      nosuch + 1 AS x\nFROM ds.t": "Unrecognized name: nosuch at [3:7]",  # binder
        "SELECT n,\n   NOSUCHFN(n) AS y\nFROM ds.t": "Function not found: NOSUCHFN at [2:4]",
    }
    for sql, where in cases.items():
        got = http.post(f"{BASE}/queries", json={"query": sql, "useLegacySql": False})
        assert got.status_code == 400, got.text
        error = got.json()["error"]
        assert error["status"] == "INVALID_ARGUMENT" and where in error["message"], error
        first = error["errors"][0]
        assert (first["reason"], first["location"], first["locationType"]) == (
            "invalidQuery",
            "q",
            "parameter",
        )
        assert first["message"] == error["message"]
    # an inserted job keeps the same error in status.errorResult
    job = http.post(
        f"{BASE}/jobs",
        json={"configuration": {"query": {"query": "SELECT n,\n  nosuch\nFROM ds.t", "useLegacySql": False}}},
    ).json()
    result = job["status"]["errorResult"]
    assert result["reason"] == "invalidQuery" and result["location"] == "q"
    assert result["message"] == "Unrecognized name: nosuch at [2:3]"


def test_failed_job_is_done_with_error_result(http: httpx.Client) -> None:
    job = http.post(
        f"{BASE}/jobs",
        json={"jobReference": {"jobId": "bad1"}, "configuration": {"query": {"query": "SELECT FROM WHERE"}}},
    ).json()
    assert job["status"]["state"] == "DONE"
    assert (
        job["status"]["errorResult"]["reason"] == "invalidQuery"
        and "[1:13]" in job["status"]["errorResult"]["message"]
    )
    got = http.get(f"{BASE}/queries/bad1")
    assert error_of(got)["code"] == 400 and error_of(got)["reason"] == "invalidQuery"
    dml = http.post(
        f"{BASE}/queries", json={"query": "DELETE FROM ds.t WHERE n = 4", "useLegacySql": False}
    ).json()
    assert dml["jobComplete"] is True and dml["numDmlAffectedRows"] == "1" and dml["totalRows"] == "0"


def test_errors_carry_reasons(http: httpx.Client) -> None:
    missing = http.get(f"{BASE}/datasets/ds/tables/nope")
    assert error_of(missing) == {
        "code": 404,
        "reason": "notFound",
        "message": "Not found: Table rest-proj:ds.nope",
    }
    assert error_of(http.get(f"{BASE}/datasets/nods"))["reason"] == "notFound"
    dup = http.post(f"{BASE}/datasets", json={"datasetReference": {"projectId": P, "datasetId": "ds"}})
    assert error_of(dup)["code"] == 409 and error_of(dup)["reason"] == "duplicate"
    empty = http.post(f"{BASE}/datasets/ds/tables/t/insertAll", json={"rows": []})
    assert error_of(empty) == {"code": 400, "reason": "invalid", "message": "No rows present in the request."}
    bad_schema = http.post(
        f"{BASE}/datasets/ds/tables",
        json={"tableReference": {"tableId": "x"}, "schema": {"fields": [{"name": "a", "type": "WHATEVER"}]}},
    )
    assert error_of(bad_schema)["code"] == 400 and "WHATEVER" in error_of(bad_schema)["message"]
    assert error_of(http.get(f"{BASE}/jobs/unknown-job"))["code"] == 404
    malformed = http.post(f"{BASE}/datasets/ds/tables/t/insertAll", content=b"{nope")
    assert error_of(malformed)["code"] == 400
