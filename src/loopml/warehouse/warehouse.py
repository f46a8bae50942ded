"""The warehouse: one DuckDB file holding BigQuery-style datasets and tables for every project.

`Warehouse` = foundations (`base.py`: connections, locks, caches, names, hooks) + datasets and
tables (`catalog.py`) + rows (`rows_io.py`: streaming inserts, Arrow reads/writes) + GoogleSQL
queries (`query.py`).
"""

from __future__ import annotations

from typing import Any

from sqlglot import exp

from loopml.errors import AlreadyExists, InvalidQuery
from loopml.warehouse import query as query_mod
from loopml.warehouse import translate
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

    def create_view(self, project: str, dataset: str, view: str, sql: str) -> dict[str, Any]:
        """A view from a GoogleSQL query (tables.insert with `view.query`)."""
        check_name("table", view)
        if self.table_exists(project, dataset, view):
            raise AlreadyExists(f"Already Exists: Table {project}:{dataset}.{view}")
        parsed, error = translate.try_parse(sql)
        if parsed is None:
            assert error is not None
            raise translate.parse_error_to_invalid(error, sql, 0)
        if not isinstance(parsed, exp.Query):
            raise InvalidQuery("A view is defined by a query (SELECT ...).")
        target = exp.Table(
            this=exp.to_identifier(view, quoted=True),
            db=exp.to_identifier(dataset, quoted=True),
            catalog=exp.to_identifier(project, quoted=True),
        )
        create = exp.Create(kind="VIEW", this=target, expression=parsed)
        self.query(create.sql("bigquery"), project=project)
        return self.get_table(project, dataset, view)
