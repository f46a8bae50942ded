"""Query and load jobs: run off the caller's thread, kept in memory for result paging.

Jobs run on a small thread pool so the server's event loop stays responsive; the REST layer waits
for them (long poll) without cancelling them. The newest `keep` jobs are held in memory (the newest
`keep_results` with their rows); every finished job is also recorded in the catalog (`JobStore`),
so `jobs.get` and `jobs.list` still know it after a restart, without its rows.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from loopml.errors import AlreadyExists, InvalidArgument, InvalidQuery, LoopmlError, NotFound
from loopml.warehouse.jobstore import JobStore
from loopml.warehouse.rows import decode_parameters
from loopml.warehouse.types import QueryResult
from loopml.warehouse.warehouse import Warehouse, now_ms

log = logging.getLogger(__name__)

JOB_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


@dataclasses.dataclass
class Job:
    project: str
    job_id: str
    location: str
    configuration: dict[str, Any]
    created_ms: int
    state: str = "PENDING"
    started_ms: int | None = None
    ended_ms: int | None = None
    result: QueryResult | None = None
    error: LoopmlError | None = None
    future: concurrent.futures.Future[None] | None = None
    cancelled: bool = False
    connection: Any = None
    results_expired: bool = False

    @property
    def done(self) -> bool:
        return self.state == "DONE"


class JobManager:
    def __init__(
        self, warehouse: Warehouse, *, workers: int = 4, keep: int = 1000, keep_results: int = 100
    ) -> None:
        self.warehouse = warehouse
        self.keep = keep
        self.keep_results = keep_results
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bq-job")
        self._jobs: OrderedDict[tuple[str, str], Job] = OrderedDict()
        self._lock = threading.Lock()
        self.store = JobStore(warehouse)

    def close(self, timeout: float = 10.0) -> None:
        """Cancel queued jobs, interrupt running ones and wait (bounded) before the warehouse closes."""
        with self._lock:
            running = [j for j in self._jobs.values() if not j.done]
        for job in running:
            job.cancelled = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(j.state == "RUNNING" for j in running):
            for job in running:
                conn = job.connection
                if conn is not None:
                    conn.interrupt()
            time.sleep(0.05)
        futures = [j.future for j in running if j.future is not None and not j.future.cancelled()]
        if futures:
            concurrent.futures.wait(futures, timeout=max(0.0, deadline - time.monotonic()))

    def new_job(
        self, project: str, job_id: str | None, location: str | None, configuration: dict[str, Any]
    ) -> Job:
        job_id = job_id or f"job_{uuid.uuid4().hex}"
        if not isinstance(job_id, str) or not set(job_id) <= JOB_ID_CHARS or len(job_id) > 1024:
            raise InvalidArgument(f"Invalid job ID {job_id!r}: use letters, digits, underscores and dashes.")
        job = Job(project, job_id, location or "US", configuration, created_ms=now_ms())
        recorded = self.store.exists(project, job_id)
        with self._lock:
            if (project, job_id) in self._jobs or recorded:
                raise AlreadyExists(f"Already Exists: Job {project}:{job.location}.{job_id}")
            self._jobs[(project, job_id)] = job
            while len(self._jobs) > self.keep:
                self._jobs.popitem(last=False)
            if len(self._jobs) > self.keep_results:
                # only the newest jobs keep their rows in memory
                for old in list(self._jobs.values())[: len(self._jobs) - self.keep_results]:
                    if (
                        old.done
                        and old.result is not None
                        and old.result.total_rows
                        and not old.results_expired
                    ):
                        old.result.table = old.result.table.slice(0, 0)
                        old.results_expired = True
        return job

    def submit(self, job: Job, work: Callable[[Job], QueryResult]) -> Job:
        def run() -> None:
            if job.cancelled:
                job.error = InvalidQuery("Job execution was cancelled: User requested cancellation")
                job.state, job.ended_ms = "DONE", now_ms()
                return
            job.connection = self.warehouse.cursor()
            job.state, job.started_ms = "RUNNING", now_ms()
            try:
                job.result = work(job)
            except LoopmlError as exc:
                job.error = exc
                if job.cancelled:
                    job.error = InvalidQuery("Job execution was cancelled: User requested cancellation")
            except Exception as exc:  # an engine failure we did not map: report it on the job
                log.exception("job %s failed", job.job_id)
                job.error = LoopmlError(f"Internal error while running the job: {type(exc).__name__}: {exc}")
            finally:
                job.connection = None
                job.ended_ms = now_ms()
                job.state = "DONE"
            self.store.save(job)

        job.future = self._pool.submit(run)
        return job

    def submit_query(self, job: Job) -> Job:
        return self.submit(job, self._run_query)

    def _run_query(self, job: Job) -> QueryResult:
        cfg = job.configuration.get("query") or {}
        sql = cfg.get("query")
        if not isinstance(sql, str) or not sql.strip():
            raise InvalidQuery("configuration.query.query is required.")
        if cfg.get("useLegacySql") is True:
            raise InvalidQuery("Legacy SQL is not supported by loopml: set useLegacySql=false (GoogleSQL).")
        default = cfg.get("defaultDataset") or {}
        params = decode_parameters(cfg.get("parameterMode"), cfg.get("queryParameters"))
        project = default.get("projectId") or job.project
        if job.configuration.get("dryRun"):
            return self.warehouse.dry_run(
                sql, project=project, default_dataset=default.get("datasetId"), params=params
            )
        result = self.warehouse.query(
            sql, project=project, default_dataset=default.get("datasetId"), params=params
        )
        dest = cfg.get("destinationTable")
        if dest and result.statement_type == "SELECT":
            self._write_destination(job, dest, result, cfg)
        return result

    def _write_destination(
        self, job: Job, dest: dict[str, Any], result: QueryResult, cfg: dict[str, Any]
    ) -> None:
        p = dest.get("projectId") or job.project
        d, t = dest.get("datasetId"), dest.get("tableId")
        if not d or not t:
            raise InvalidArgument("destinationTable needs datasetId and tableId.")
        wh = self.warehouse
        exists = wh.table_exists(p, d, t)
        create = str(cfg.get("createDisposition") or "CREATE_IF_NEEDED").upper()
        write = str(cfg.get("writeDisposition") or "WRITE_EMPTY").upper()
        if not exists and create == "CREATE_NEVER":
            raise NotFound(f"Not found: Table {p}:{d}.{t}")
        if exists and write == "WRITE_EMPTY" and wh.get_table(p, d, t)["num_rows"] > 0:
            raise AlreadyExists(f"Already Exists: Table {p}:{d}.{t} (writeDisposition WRITE_EMPTY)")
        mode = "append" if exists and write == "WRITE_APPEND" else "truncate"
        wh.write_table_arrow(p, d, t, result.table, mode=mode)
        result.destination = (p, d, t)

    def get(self, project: str, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get((project, job_id))
        if job is None:
            job = self.store.get(project, job_id)
        if job is None:
            raise NotFound(f"Not found: Job {project}:{job_id}")
        return job

    def list(self, project: str) -> list[Job]:
        """Newest first: the jobs in memory, then those only recorded in the catalog."""
        with self._lock:
            jobs = [j for (p, _), j in self._jobs.items() if p == project]
        jobs.reverse()
        known = {j.job_id for j in jobs}
        jobs.extend(j for j in self.store.list(project, self.keep) if j.job_id not in known)
        return jobs[: self.keep]

    def cancel(self, project: str, job_id: str) -> Job:
        job = self.get(project, job_id)
        if not job.done:
            job.cancelled = True
            if job.future is not None and job.future.cancel():
                job.error = InvalidQuery("Job execution was cancelled: User requested cancellation")
                job.state, job.ended_ms = "DONE", now_ms()
            else:
                threading.Thread(target=self._interrupt, args=(job,), daemon=True).start()
        return job

    @staticmethod
    def _interrupt(job: Job) -> None:
        """Interrupt the job's statement until the job ends (a statement may be about to start)."""
        deadline = time.monotonic() + 60.0
        while not job.done and time.monotonic() < deadline:
            conn = job.connection
            if conn is not None:
                conn.interrupt()
            time.sleep(0.05)

    def wait(self, job: Job, timeout: float | None) -> bool:
        """Wait until the job is done and recorded."""
        if job.future is not None:
            concurrent.futures.wait([job.future], timeout=timeout)
        return job.done
