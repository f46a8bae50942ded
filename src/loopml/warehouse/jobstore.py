"""Finished jobs recorded in the warehouse catalog (`_loopml.jobs`), so `jobs.get`/`jobs.list`
survive a restart. Result rows are not kept: a SELECT job read back from here reports its rows as
expired. Records older than `retention_days` are dropped when the server starts.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import duckdb
import orjson

from loopml import errors
from loopml.warehouse.types import QueryResult

if TYPE_CHECKING:
    from loopml.warehouse.jobs import Job
    from loopml.warehouse.warehouse import Warehouse

log = logging.getLogger(__name__)

_DDL = (
    "CREATE TABLE IF NOT EXISTS _loopml.jobs (project VARCHAR, job_id VARCHAR, location VARCHAR, "
    "configuration VARCHAR, error_reason VARCHAR, error_message VARCHAR, statement_type VARCHAR, "
    "dml_rows BIGINT, total_rows BIGINT, destination VARCHAR, created_ms BIGINT, started_ms BIGINT, "
    "ended_ms BIGINT)"
)
_COLUMNS = (
    "project, job_id, location, configuration, error_reason, error_message, statement_type, dml_rows, "
    "total_rows, destination, created_ms, started_ms, ended_ms"
)
_BY_REASON: dict[str, type[errors.LoopmlError]] = {
    "notFound": errors.NotFound,
    "duplicate": errors.AlreadyExists,
    "invalidQuery": errors.InvalidQuery,
    "invalid": errors.InvalidArgument,
}


class JobStore:
    def __init__(self, warehouse: Warehouse, *, retention_days: float = 30.0) -> None:
        self.warehouse = warehouse
        with warehouse.write_lock:
            cur = warehouse.cursor()
            cur.execute(_DDL)
            cutoff = int((time.time() - retention_days * 86400) * 1000)
            cur.execute("DELETE FROM _loopml.jobs WHERE created_ms < ?", [cutoff])

    def save(self, job: Job) -> None:
        """Record a finished job (best effort: a failure here never fails the job)."""
        result = job.result
        values = [
            job.project,
            job.job_id,
            job.location,
            orjson.dumps(job.configuration).decode(),
            job.error.reason if job.error else None,
            job.error.message if job.error else None,
            result.statement_type if result else None,
            result.num_dml_affected_rows if result else None,
            result.total_rows if result else None,
            orjson.dumps(result.destination).decode() if result and result.destination else None,
            job.created_ms,
            job.started_ms,
            job.ended_ms,
        ]
        try:
            with self.warehouse.write_lock:
                self.warehouse.cursor().execute(
                    f"INSERT INTO _loopml.jobs ({_COLUMNS}) VALUES ({', '.join('?' * len(values))})", values
                )
        except duckdb.Error:
            log.exception("could not record job %s", job.job_id)

    def exists(self, project: str, job_id: str) -> bool:
        rows = (
            self.warehouse.cursor()
            .execute("SELECT 1 FROM _loopml.jobs WHERE project = ? AND job_id = ? LIMIT 1", [project, job_id])
            .fetchall()
        )
        return bool(rows)

    def get(self, project: str, job_id: str) -> Job | None:
        rows = (
            self.warehouse.cursor()
            .execute(
                f"SELECT {_COLUMNS} FROM _loopml.jobs WHERE project = ? AND job_id = ?", [project, job_id]
            )
            .fetchall()
        )
        return _job(rows[0]) if rows else None

    def list(self, project: str, limit: int = 1000) -> list[Job]:
        rows = (
            self.warehouse.cursor()
            .execute(
                f"SELECT {_COLUMNS} FROM _loopml.jobs WHERE project = ? ORDER BY created_ms DESC LIMIT ?",
                [project, limit],
            )
            .fetchall()
        )
        return [_job(r) for r in rows]


def _job(row: tuple[Any, ...]) -> Job:
    from loopml.warehouse.jobs import Job

    (project, job_id, location, config, reason, message, stype, dml, total, dest, created, started, ended) = (
        row
    )
    job = Job(project, job_id, location, orjson.loads(config), created_ms=created, state="DONE")
    job.started_ms, job.ended_ms = started, ended
    if reason is not None:
        job.error = _BY_REASON.get(reason, errors.LoopmlError)(message or "")
    if stype is not None:
        destination = tuple(orjson.loads(dest)) if dest else None
        job.result = QueryResult.empty(stype, num_dml_affected_rows=dml, destination=destination)  # type: ignore[arg-type]
        job.results_expired = stype == "SELECT" and bool(total)
    return job
