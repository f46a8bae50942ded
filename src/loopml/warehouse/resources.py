"""BigQuery v2 JSON resources (dataset, table, job, query results) built from warehouse state."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import pyarrow as pa

from loopml.errors import FailedPrecondition, InvalidArgument
from loopml.warehouse.jobs import Job
from loopml.warehouse.rows import encode_rows
from loopml.warehouse.schema import legacy_schema

BASE = "/bigquery/v2"
T = TypeVar("T")


def dataset_resource(ds: dict[str, Any]) -> dict[str, Any]:
    p, d = ds["project"], ds["dataset"]
    out: dict[str, Any] = {
        "kind": "bigquery#dataset",
        "id": f"{p}:{d}",
        "selfLink": f"{BASE}/projects/{p}/datasets/{d}",
        "datasetReference": {"projectId": p, "datasetId": d},
        "location": ds["location"],
        "labels": ds["labels"],
        "creationTime": str(ds["created_ms"]),
        "lastModifiedTime": str(ds["modified_ms"]),
        "etag": f"{ds['modified_ms']:x}",
        "type": "DEFAULT",
    }
    if ds.get("description"):
        out["description"] = ds["description"]
    return out


def dataset_list_item(ds: dict[str, Any]) -> dict[str, Any]:
    p, d = ds["project"], ds["dataset"]
    return {
        "kind": "bigquery#dataset",
        "id": f"{p}:{d}",
        "datasetReference": {"projectId": p, "datasetId": d},
        "labels": ds["labels"],
        "location": ds["location"],
    }


def table_resource(info: dict[str, Any]) -> dict[str, Any]:
    p, d, t = info["project"], info["dataset"], info["table"]
    out: dict[str, Any] = {
        "kind": "bigquery#table",
        "id": f"{p}:{d}.{t}",
        "selfLink": f"{BASE}/projects/{p}/datasets/{d}/tables/{t}",
        "tableReference": {"projectId": p, "datasetId": d, "tableId": t},
        "schema": {"fields": legacy_schema(info["schema"])},
        "type": info["type"],
        "location": info["location"],
        "labels": info["labels"],
        "creationTime": str(info["created_ms"]),
        "lastModifiedTime": str(info["modified_ms"]),
        "etag": f"{info['modified_ms']:x}",
    }
    if "num_rows" in info:
        out["numRows"] = str(info["num_rows"])
        out["numBytes"] = "0"
    if info.get("time_partitioning"):
        out["timePartitioning"] = info["time_partitioning"]
    if info.get("description"):
        out["description"] = info["description"]
    return out


def table_list_item(info: dict[str, Any]) -> dict[str, Any]:
    p, d, t = info["project"], info["dataset"], info["table"]
    item: dict[str, Any] = {
        "kind": "bigquery#table",
        "id": f"{p}:{d}.{t}",
        "tableReference": {"projectId": p, "datasetId": d, "tableId": t},
        "type": info["type"],
        "creationTime": str(info["created_ms"]),
        "labels": info["labels"],
    }
    if info.get("time_partitioning"):
        item["timePartitioning"] = info["time_partitioning"]
    return item


def job_reference(job: Job) -> dict[str, Any]:
    return {"projectId": job.project, "jobId": job.job_id, "location": job.location}


def job_status(job: Job) -> dict[str, Any]:
    status: dict[str, Any] = {"state": job.state}
    if job.error is not None:
        err = {"reason": job.error.reason, "message": job.error.message}
        if job.error.location:
            err |= {"location": job.error.location, "locationType": "parameter"}
        status["errorResult"] = err
        status["errors"] = [err]
    return status


def job_resource(job: Job) -> dict[str, Any]:
    config = dict(job.configuration)
    job_type = "LOAD" if "load" in config else "EXTRACT" if "extract" in config else "QUERY"
    config["jobType"] = job_type
    stats: dict[str, Any] = {"creationTime": str(job.created_ms), "totalBytesProcessed": "0"}
    if job.started_ms:
        stats["startTime"] = str(job.started_ms)
    if job.ended_ms:
        stats["endTime"] = str(job.ended_ms)
    result = job.result
    if job_type == "QUERY":
        q: dict[str, Any] = {"totalBytesProcessed": "0", "totalBytesBilled": "0", "cacheHit": False}
        if result is not None:
            q["statementType"] = result.statement_type
            if result.num_dml_affected_rows is not None:
                q["numDmlAffectedRows"] = str(result.num_dml_affected_rows)
            if result.ddl_operation:
                q["ddlOperationPerformed"] = result.ddl_operation
            if result.destination and result.statement_type.startswith(("CREATE", "DROP")):
                p, d, t = result.destination
                q["ddlTargetTable"] = {"projectId": p, "datasetId": d, "tableId": t}
            if result.statement_type == "SELECT":
                q["totalRows"] = str(result.total_rows)
            if config.get("dryRun") and result.schema:
                q["schema"] = {"fields": legacy_schema(result.schema)}
        stats["query"] = q
    elif result is not None and job_type == "EXTRACT":
        stats["extract"] = {"destinationUriFileCounts": [str(result.num_dml_affected_rows or 0)]}
    elif result is not None:
        stats["load"] = {"outputRows": str(result.num_dml_affected_rows or 0), "inputFiles": "1"}
    return {
        "kind": "bigquery#job",
        "id": f"{job.project}:{job.location}.{job.job_id}",
        "selfLink": f"{BASE}/projects/{job.project}/jobs/{job.job_id}?location={job.location}",
        "jobReference": job_reference(job),
        "configuration": config,
        "status": job_status(job),
        "statistics": stats,
        "user_email": "loopml@localhost",
    }


def _int_arg(value: Any, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"Invalid {name} {value!r}: expected a non-negative integer.") from None
    if n < 0:
        raise InvalidArgument(f"Invalid {name} {value!r}: expected a non-negative integer.")
    return n


def page_bounds(
    total: int, *, max_results: Any, page_token: Any, start_index: Any, default_page: int
) -> tuple[int, int, str | None]:
    """(start, stop, next page token) for row paging; tokens are the next row offset."""
    start = _int_arg(page_token, "pageToken") if page_token else _int_arg(start_index, "startIndex")
    start = start or 0
    size = _int_arg(max_results, "maxResults")
    size = default_page if size is None else size
    stop = min(total, start + size)
    token = str(stop) if stop < total and size > 0 else None
    return start, stop, token


def list_page(
    items: Sequence[T], params: Mapping[str, str], default_page: int = 1000
) -> tuple[Sequence[T], str | None]:
    """One page of a resource list (datasets, tables, jobs, models) and its next page token,
    from the request's `maxResults` / `pageToken`."""
    start, stop, token = page_bounds(
        len(items),
        max_results=params.get("maxResults"),
        page_token=params.get("pageToken"),
        start_index=None,
        default_page=default_page,
    )
    return items[start:stop], token


def query_results(
    job: Job, *, max_results: Any, page_token: Any, start_index: Any, int64_ts: bool, default_page: int
) -> dict[str, Any]:
    """The body of getQueryResults / jobs.query for a finished job."""
    out: dict[str, Any] = {
        "kind": "bigquery#getQueryResultsResponse",
        "jobReference": job_reference(job),
        "jobComplete": True,
        "totalBytesProcessed": "0",
        "cacheHit": False,
    }
    result = job.result
    if job.results_expired:
        raise FailedPrecondition(
            f"The results of job {job.job_id} are no longer kept (only the newest jobs keep their rows); "
            "run the query again or write it to a destination table."
        )
    if result is None:
        out["totalRows"] = "0"
        return out
    if result.num_dml_affected_rows is not None:
        out["numDmlAffectedRows"] = str(result.num_dml_affected_rows)
    out["totalRows"] = str(result.total_rows)
    if not result.schema and result.statement_type != "SELECT":
        return out
    fields = legacy_schema(result.schema)
    out["schema"] = {"fields": fields}
    start, stop, token = page_bounds(
        result.total_rows,
        max_results=max_results,
        page_token=page_token,
        start_index=start_index,
        default_page=default_page,
    )
    if stop > start:
        out["rows"] = encode_rows(result.table.slice(start, stop - start), fields, int64_ts=int64_ts)
    elif max_results is None or str(max_results) != "0":
        out["rows"] = []
    if token:
        out["pageToken"] = token
    return out


def table_data(
    info: dict[str, Any],
    arrow: pa.Table,
    fields: list[dict[str, Any]],
    total: int,
    token: str | None,
    int64_ts: bool,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": "bigquery#tableDataList",
        "etag": f"{info['modified_ms']:x}",
        "totalRows": str(total),
        "rows": encode_rows(arrow, fields, int64_ts=int64_ts),
    }
    if token:
        out["pageToken"] = token
    return out
