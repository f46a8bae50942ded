"""BigQuery destinations: each chunk is appended to the destination tables in the same DuckDB
transaction that records the chunk in a cursor table, so a chunk is in the output exactly once.

The cursor table (`_loopml_batch.chunks`, outside every dataset, so invisible to the BigQuery API)
is the truth for which chunks a destination holds; the metadata store's chunk rows follow it and
are reconciled from it when a job resumes after a crash.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pyarrow as pa

from loopml.errors import InvalidArgument

_DDL = (
    "CREATE SCHEMA IF NOT EXISTS _loopml_batch",
    "CREATE TABLE IF NOT EXISTS _loopml_batch.chunks (job_id VARCHAR, chunk_index INTEGER, "
    "successful BIGINT, failed BIGINT, PRIMARY KEY (job_id, chunk_index))",
)


class WarehouseSink:
    def __init__(self, warehouse: Any, job_id: str, output: dict[str, Any]) -> None:
        from loopml.warehouse.warehouse import table_ref

        self.warehouse = warehouse
        self.job_id = job_id
        self.project = output["project"]
        self.dataset = output["dataset"]
        self.tables = (output["predictions_table"], output["errors_table"])
        self._ref = table_ref
        self._created = False
        self._lock = threading.Lock()
        if output.get("create_dataset"):
            warehouse.create_dataset(self.project, self.dataset, exists_ok=True)
        ds = warehouse.get_dataset(self.project, self.dataset)  # NotFound for a missing dataset
        self.project, self.dataset = ds["project"], ds["dataset"]
        with warehouse.write_lock:
            cur = warehouse.cursor()
            for ddl in _DDL:
                cur.execute(ddl)

    def committed(self) -> dict[int, tuple[int, int]]:
        rows = (
            self.warehouse.cursor()
            .execute(
                "SELECT chunk_index, successful, failed FROM _loopml_batch.chunks WHERE job_id = ?",
                [self.job_id],
            )
            .fetchall()
        )
        return {int(i): (int(ok), int(failed)) for i, ok, failed in rows}

    def append(self, index: int, predictions: pa.Table, errors: pa.Table) -> None:
        """Add one chunk's rows and its cursor entry atomically."""
        with self._lock:
            if not self._created and not self.committed():
                # a fresh (or fully rolled back) job: start from empty tables with this chunk's schema
                for name, table in zip(self.tables, (predictions, errors), strict=True):
                    self.warehouse.write_table_arrow(
                        self.project, self.dataset, name, table.slice(0, 0), mode="truncate"
                    )
            self._created = True
        with self.warehouse.write_lock:
            cur = self.warehouse.cursor()
            names = []
            try:
                cur.execute("BEGIN")
                for name, table in zip(self.tables, (predictions, errors), strict=True):
                    if table.num_rows == 0:
                        continue
                    view = f"__batch_{uuid.uuid4().hex}"
                    cur.register(view, table)
                    names.append(view)
                    cur.execute(
                        f"INSERT INTO {self._ref(self.project, self.dataset, name)} BY NAME SELECT * FROM {view}"
                    )
                cur.execute(
                    "INSERT INTO _loopml_batch.chunks VALUES (?, ?, ?, ?)",
                    [self.job_id, index, predictions.num_rows, errors.num_rows],
                )
                cur.execute("COMMIT")
            except Exception as exc:
                cur.execute("ROLLBACK")
                raise InvalidArgument(
                    f"Cannot write chunk {index} to {self.project}:{self.dataset}: {exc}"
                ) from exc
            finally:
                for view in names:
                    cur.unregister(view)

    def forget(self) -> None:
        """Drop the job's cursor entries (once the metadata store has recorded every chunk)."""
        with self.warehouse.write_lock:
            self.warehouse.cursor().execute(
                "DELETE FROM _loopml_batch.chunks WHERE job_id = ?", [self.job_id]
            )


def forget_job(warehouse: Any, job_id: str) -> None:
    try:
        with warehouse.write_lock:
            warehouse.cursor().execute("DELETE FROM _loopml_batch.chunks WHERE job_id = ?", [job_id])
    except Exception:  # no cursor table yet: nothing to forget
        pass
