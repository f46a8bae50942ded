"""BigQuery v2 REST subset at /bigquery/v2/projects/{project}/... (reference: bigquery.md §2-6).

Datasets, tables (with schema patch), insertAll, tabledata.list, query jobs (jobs.insert/get/
list/cancel, getQueryResults long poll, jobs.query) and load jobs by multipart media upload at
/upload/bigquery/v2/projects/{project}/jobs. Warehouse work runs in worker threads so the event
loop stays responsive. `prettyPrint`, `fields` and `$alt` are ignored.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from loopml.api.app import json_response, read_json
from loopml.errors import InvalidArgument
from loopml.platform import Platform
from loopml.warehouse import Warehouse
from loopml.warehouse import resources as res
from loopml.warehouse.export import extract_table
from loopml.warehouse.jobs import Job, JobManager
from loopml.warehouse.load import load_data
from loopml.warehouse.types import QueryResult
from loopml.warehouse.uploads import UploadSessions, job_json, load_target, split_multipart

PREFIX = "/bigquery/v2/projects/{project}"
DEFAULT_PAGE = 100_000
LONG_POLL_S = 10.0
INSERT_WAIT_S = 2.0
"""jobs.insert answers DONE when the job finishes within this time, else RUNNING (clients then poll)."""


def _flag(value: str | None) -> bool:
    return str(value).lower() in ("true", "1")


def _body_dict(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidArgument("The request body must be a JSON object.")
    return body


def _timeout(value: Any, default: float = LONG_POLL_S) -> float:
    if value is None or value == "":
        return default
    try:
        return max(0.0, min(float(value) / 1000.0, 60.0))
    except (TypeError, ValueError):
        raise InvalidArgument(f"Invalid timeoutMs {value!r}.") from None


async def wait_job(job: Job, timeout: float) -> bool:
    """Wait for a job without cancelling it when the wait times out."""
    if job.future is not None and not job.done:
        await asyncio.wait({asyncio.wrap_future(job.future)}, timeout=timeout)
    return job.done


def install(app: FastAPI, platform: Platform) -> None:
    wh: Warehouse | None = platform.services.get("warehouse")
    if wh is None:
        return
    jobs = JobManager(wh)
    insert_wait = float(getattr(platform.settings, "bigquery_insert_wait_s", INSERT_WAIT_S))
    platform.services["bigquery_jobs"] = jobs
    platform.on_stop("bigquery-jobs", jobs.close)

    # -- datasets --------------------------------------------------------------------------
    @app.get(PREFIX + "/datasets")
    async def list_datasets(project: str, request: Request) -> Response:
        items = await run_in_threadpool(wh.list_datasets, project)
        page, token = res.list_page(items, request.query_params)
        body: dict[str, Any] = {
            "kind": "bigquery#datasetList",
            "datasets": [res.dataset_list_item(d) for d in page],
        }
        if token:
            body["nextPageToken"] = token
        return json_response(body)

    @app.post(PREFIX + "/datasets")
    async def create_dataset(project: str, request: Request) -> Response:
        body = _body_dict(await read_json(request))
        ref = body.get("datasetReference") or {}
        if ref.get("projectId") and ref["projectId"] != project:
            raise InvalidArgument(
                f"datasetReference.projectId {ref['projectId']!r} does not match {project!r}."
            )
        ds = await run_in_threadpool(
            lambda: wh.create_dataset(
                project,
                str(ref.get("datasetId") or ""),
                location=body.get("location"),
                description=body.get("description"),
                labels=body.get("labels") or {},
            )
        )
        return json_response(res.dataset_resource(ds))

    @app.get(PREFIX + "/datasets/{dataset}")
    async def get_dataset(project: str, dataset: str) -> Response:
        return json_response(res.dataset_resource(await run_in_threadpool(wh.get_dataset, project, dataset)))

    async def _patch_dataset(project: str, dataset: str, request: Request) -> Response:
        body = _body_dict(await read_json(request))
        labels = body.get("labels")
        if labels is not None and not isinstance(labels, dict):
            raise InvalidArgument("labels must be an object.")
        ds = await run_in_threadpool(
            lambda: wh.patch_dataset(
                project,
                dataset,
                description=body.get("description"),
                labels={k: v for k, v in labels.items() if v is not None} if labels is not None else None,
            )
        )
        return json_response(res.dataset_resource(ds))

    app.patch(PREFIX + "/datasets/{dataset}")(_patch_dataset)
    app.put(PREFIX + "/datasets/{dataset}")(_patch_dataset)

    @app.delete(PREFIX + "/datasets/{dataset}")
    async def delete_dataset(project: str, dataset: str, request: Request) -> Response:
        contents = _flag(request.query_params.get("deleteContents"))
        await run_in_threadpool(lambda: wh.delete_dataset(project, dataset, delete_contents=contents))
        return Response(status_code=204)

    # -- tables ----------------------------------------------------------------------------
    @app.get(PREFIX + "/datasets/{dataset}/tables")
    async def list_tables(project: str, dataset: str, request: Request) -> Response:
        items = await run_in_threadpool(wh.list_tables, project, dataset)
        page, token = res.list_page(items, request.query_params)
        body: dict[str, Any] = {
            "kind": "bigquery#tableList",
            "tables": [res.table_list_item(t) for t in page],
            "totalItems": len(items),
        }
        if token:
            body["nextPageToken"] = token
        return json_response(body)

    @app.post(PREFIX + "/datasets/{dataset}/tables")
    async def create_table(project: str, dataset: str, request: Request) -> Response:
        body = _body_dict(await read_json(request))
        ref = body.get("tableReference") or {}
        if ref.get("datasetId") and ref["datasetId"] != dataset:
            raise InvalidArgument(
                f"tableReference.datasetId {ref['datasetId']!r} does not match {dataset!r}."
            )
        view = body.get("view") or {}
        if isinstance(view, dict) and view.get("query"):
            if view.get("useLegacySql") is True:
                raise InvalidArgument("Legacy SQL views are not supported: set view.useLegacySql=false.")
            created = await run_in_threadpool(
                wh.create_view, project, dataset, str(ref.get("tableId") or ""), str(view["query"])
            )
            return json_response(res.table_resource(created))
        info = await run_in_threadpool(
            lambda: wh.create_table(
                project,
                dataset,
                str(ref.get("tableId") or ""),
                (body.get("schema") or {}).get("fields"),
                time_partitioning=body.get("timePartitioning"),
                description=body.get("description"),
                labels=body.get("labels") or {},
            )
        )
        return json_response(res.table_resource(info))

    @app.get(PREFIX + "/datasets/{dataset}/tables/{table}")
    async def get_table(project: str, dataset: str, table: str) -> Response:
        return json_response(
            res.table_resource(await run_in_threadpool(wh.get_table, project, dataset, table))
        )

    async def _patch(project: str, dataset: str, table: str, request: Request) -> Response:
        body = _body_dict(await read_json(request))
        schema = (body.get("schema") or {}).get("fields") if "schema" in body else None
        info = await run_in_threadpool(
            lambda: wh.patch_table(
                project,
                dataset,
                table,
                schema=schema,
                description=body.get("description"),
                labels=body.get("labels"),
            )
        )
        return json_response(res.table_resource(info))

    app.patch(PREFIX + "/datasets/{dataset}/tables/{table}")(_patch)
    app.put(PREFIX + "/datasets/{dataset}/tables/{table}")(_patch)

    @app.delete(PREFIX + "/datasets/{dataset}/tables/{table}")
    async def delete_table(project: str, dataset: str, table: str) -> Response:
        await run_in_threadpool(wh.delete_table, project, dataset, table)
        return Response(status_code=204)

    @app.post(PREFIX + "/datasets/{dataset}/tables/{table}/insertAll")
    async def insert_all(project: str, dataset: str, table: str, request: Request) -> Response:
        body = _body_dict(await read_json(request))
        raw = body.get("rows") or []
        if not isinstance(raw, list):
            raise InvalidArgument("insertAll: rows must be a list.")
        if not raw:
            raise InvalidArgument("No rows present in the request.")
        rows: list[Any] = [r.get("json") if isinstance(r, dict) else None for r in raw]
        ids = [r.get("insertId") if isinstance(r, dict) else None for r in raw]
        errors = await run_in_threadpool(
            lambda: wh.insert_rows(
                project,
                dataset,
                table,
                rows,
                ids,
                skip_invalid=bool(body.get("skipInvalidRows")),
                ignore_unknown=bool(body.get("ignoreUnknownValues")),
            )
        )
        out: dict[str, Any] = {"kind": "bigquery#tableDataInsertAllResponse"}
        if errors:
            out["insertErrors"] = errors
        return json_response(out)

    @app.get(PREFIX + "/datasets/{dataset}/tables/{table}/data")
    async def list_rows(project: str, dataset: str, table: str, request: Request) -> Response:
        q = request.query_params
        selected = [c.strip() for c in (q.get("selectedFields") or "").split(",") if c.strip()]

        def work() -> dict[str, Any]:
            info = wh.get_table(project, dataset, table)
            fields = info["schema"]
            if selected:
                by_name = {f["name"].lower(): f for f in fields}
                fields = [by_name[c.lower()] for c in selected if c.lower() in by_name]
            start, stop, token = res.page_bounds(
                info["num_rows"],
                max_results=q.get("maxResults"),
                page_token=q.get("pageToken"),
                start_index=q.get("startIndex"),
                default_page=DEFAULT_PAGE,
            )
            arrow = wh.read_table_arrow(
                project,
                dataset,
                table,
                columns=[f["name"] for f in fields] if selected else None,
                start_index=start,
                max_rows=stop - start,
            )
            int64 = _flag(q.get("formatOptions.useInt64Timestamp"))
            return res.table_data(info, arrow, fields, info["num_rows"], token, int64)

        return json_response(await run_in_threadpool(work))

    # -- jobs ------------------------------------------------------------------------------
    async def _start_query(project: str, body: dict[str, Any]) -> Job:
        ref = body.get("jobReference") or {}
        config = body.get("configuration") or {}
        if not isinstance(config, dict) or "query" not in config:
            raise InvalidArgument(
                "Only query and extract jobs can be inserted here; load data through "
                "/upload/bigquery/v2/projects/{project}/jobs (copy jobs are not supported)."
            )
        job = jobs.new_job(project, ref.get("jobId"), ref.get("location"), config)
        return jobs.submit_query(job)

    async def _start_job(project: str, body: dict[str, Any]) -> Job:
        config = body.get("configuration") or {}
        if isinstance(config, dict) and isinstance(config.get("extract"), dict):
            ref = body.get("jobReference") or {}
            job = jobs.new_job(project, ref.get("jobId"), ref.get("location"), config)
            return jobs.submit(job, lambda j: extract_table(wh, project, config["extract"]))
        return await _start_query(project, body)

    @app.post(PREFIX + "/jobs")
    async def insert_job(project: str, request: Request) -> Response:
        body = _body_dict(await read_json(request))
        job = await _start_job(project, body)
        await wait_job(job, insert_wait)
        if job.configuration.get("dryRun") and job.error is not None:
            raise job.error  # BigQuery answers a failed dry run with the error itself
        return json_response(res.job_resource(job))

    @app.get(PREFIX + "/jobs")
    async def list_jobs(project: str, request: Request) -> Response:
        items = jobs.list(project)
        page, token = res.list_page(items, request.query_params)
        listed = []
        for job in page:
            r = res.job_resource(job)
            listed.append(
                {k: r[k] for k in ("kind", "id", "jobReference", "configuration", "status", "statistics")}
                | {"state": job.state}
            )
        body: dict[str, Any] = {"kind": "bigquery#jobList", "jobs": listed}
        if token:
            body["nextPageToken"] = token
        return json_response(body)

    @app.get(PREFIX + "/jobs/{job_id}")
    async def get_job(project: str, job_id: str) -> Response:
        return json_response(res.job_resource(jobs.get(project, job_id)))

    @app.post(PREFIX + "/jobs/{job_id}/cancel")
    async def cancel_job(project: str, job_id: str) -> Response:
        job = jobs.cancel(project, job_id)
        return json_response({"kind": "bigquery#jobCancelResponse", "job": res.job_resource(job)})

    def _results(job: Job, q: Any) -> dict[str, Any]:
        if job.error is not None:
            raise job.error
        return res.query_results(
            job,
            max_results=q.get("maxResults"),
            page_token=q.get("pageToken"),
            start_index=q.get("startIndex"),
            int64_ts=_flag(q.get("formatOptions.useInt64Timestamp")),
            default_page=DEFAULT_PAGE,
        )

    @app.get(PREFIX + "/queries/{job_id}")
    async def get_query_results(project: str, job_id: str, request: Request) -> Response:
        job = jobs.get(project, job_id)
        if not await wait_job(job, _timeout(request.query_params.get("timeoutMs"))):
            return json_response(
                {
                    "kind": "bigquery#getQueryResultsResponse",
                    "jobReference": res.job_reference(job),
                    "jobComplete": False,
                }
            )
        return json_response(await run_in_threadpool(_results, job, request.query_params))

    @app.post(PREFIX + "/queries")
    async def query(project: str, request: Request) -> Response:
        body = _body_dict(await read_json(request))
        qcfg = {
            k: body[k]
            for k in ("query", "useLegacySql", "defaultDataset", "parameterMode", "queryParameters")
            if k in body
        }
        config: dict[str, Any] = {"query": qcfg}
        if body.get("dryRun"):
            config["dryRun"] = True
        job = await _start_query(
            project, {"jobReference": {"location": body.get("location")}, "configuration": config}
        )
        if not await wait_job(job, _timeout(body.get("timeoutMs"))):
            return json_response(
                {
                    "kind": "bigquery#queryResponse",
                    "jobReference": res.job_reference(job),
                    "jobComplete": False,
                }
            )
        fmt = body.get("formatOptions") or {}
        params = {
            "maxResults": body.get("maxResults"),
            "formatOptions.useInt64Timestamp": fmt.get("useInt64Timestamp"),
        }
        out = await run_in_threadpool(_results, job, params)
        out["kind"] = "bigquery#queryResponse"
        return json_response(out)

    # -- load jobs (media upload: multipart or resumable) ------------------------------------
    uploads = UploadSessions()

    async def _start_load(project: str, meta: dict[str, Any], data: bytes) -> Response:
        load, (p, d, t) = load_target(meta, project)
        ref = meta.get("jobReference") or {}
        job = jobs.new_job(project, ref.get("jobId"), ref.get("location"), meta.get("configuration") or {})

        def work(_job: Job) -> QueryResult:
            n = load_data(wh, p, d, t, data, load)
            return QueryResult.empty("LOAD", num_dml_affected_rows=n, destination=(p, d, t))

        jobs.submit(job, work)
        await wait_job(job, insert_wait)
        return json_response(res.job_resource(job))

    @app.post("/upload/bigquery/v2/projects/{project}/jobs")
    async def upload_job(project: str, request: Request) -> Response:
        kind = request.query_params.get("uploadType", "multipart")
        if kind == "resumable":
            upload_id = uploads.start(project, job_json(await request.body()))
            location = str(request.url.include_query_params(upload_id=upload_id))
            return Response(status_code=200, headers={"location": location})
        if kind != "multipart":
            raise InvalidArgument(f"Unsupported uploadType {kind!r}: use multipart or resumable.")
        meta, data = split_multipart(request.headers.get("content-type", ""), await request.body())
        return await _start_load(project, meta, data)

    @app.put("/upload/bigquery/v2/projects/{project}/jobs")
    async def upload_chunk(project: str, request: Request) -> Response:
        upload_id = request.query_params.get("upload_id")
        if not upload_id:
            raise InvalidArgument("A resumable upload chunk needs ?upload_id=.")
        done = uploads.put(upload_id, request.headers.get("content-range"), await request.body())
        if isinstance(done, int):
            headers = {"range": f"bytes=0-{done - 1}"} if done else {}
            return Response(status_code=308, headers=headers)
        return await _start_load(done.project, done.meta, bytes(done.data))
