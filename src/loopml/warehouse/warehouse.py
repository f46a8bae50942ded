"""The warehouse: one DuckDB file holding BigQuery-style datasets and tables for every project.

`Warehouse` = foundations (`base.py`: connections, locks, caches, names, hooks) + datasets and
tables (`catalog.py`) + rows (`rows_io.py`: streaming inserts, Arrow reads/writes) + GoogleSQL
queries (`query.py`).
"""

from __future__ import annotations

from typing import Any

from loopml.warehouse import query as query_mod
from loopml.warehouse.base import (
    DATASET_RE,
    PARTITION_TYPES,
    PROJECT_RE,
    TABLE_RE,
    WarehouseBase,
    check_name,
    now_ms,
    paused_gc,
    stable_hash,
    table_ref,
)
from loopml.warehouse.rows_io import RowsMixin
from loopml.warehouse.types import QueryResult

__all__ = [
    "DATASET_RE",
    "PARTITION_TYPES",
    "PROJECT_RE",
    "TABLE_RE",
    "Warehouse",
    "WarehouseBase",
    "check_name",
    "now_ms",
    "paused_gc",
    "stable_hash",
    "table_ref",
]


class Warehouse(RowsMixin):
    """BigQuery-style datasets, tables, streaming inserts and GoogleSQL queries over DuckDB."""

    # -- queries ---------------------------------------------------------------------------
    def query(
        self,
        sql: str,
        *,
        project: str,
        default_dataset: str | None = None,
        params: dict[str, Any] | list[Any] | None = None,
    ) -> QueryResult:
        """Run GoogleSQL (one statement or a script); the result of the last statement."""
        return query_mod.run(self, sql, project=project, default_dataset=default_dataset, params=params)

    def dry_run(
        self,
        sql: str,
        *,
        project: str,
        default_dataset: str | None = None,
        params: dict[str, Any] | list[Any] | None = None,
    ) -> QueryResult:
        """Check GoogleSQL without running it; a query's result has its schema and no rows."""
        return query_mod.dry_run(self, sql, project=project, default_dataset=default_dataset, params=params)
