"""Result and context types shared by the warehouse, its SQL extensions and the REST layer."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from loopml.warehouse.schema import Field

if TYPE_CHECKING:
    from sqlglot import exp

    from loopml.warehouse.warehouse import Warehouse


@dataclasses.dataclass
class QueryResult:
    """The outcome of one query or script: rows (Arrow) with their BigQuery schema."""

    schema: list[Field]
    table: pa.Table
    statement_type: str = "SELECT"
    num_dml_affected_rows: int | None = None
    destination: tuple[str, str, str] | None = None
    """The table a DDL/DML statement created or changed (project, dataset, table)."""
    ddl_operation: str | None = None

    @property
    def total_rows(self) -> int:
        return int(self.table.num_rows)

    @classmethod
    def empty(cls, statement_type: str, **kwargs: Any) -> QueryResult:
        return cls(schema=[], table=pa.table({}), statement_type=statement_type, **kwargs)


@dataclasses.dataclass
class QueryContext:
    """What SQL extensions (BigQuery ML) get: the job's project, default dataset and parameters."""

    warehouse: Warehouse
    project: str
    default_dataset: str | None = None
    params: dict[str, Any] | list[Any] | None = None

    def query(self, sql: str) -> QueryResult:
        """Run SQL (e.g. the inner query of ML.PREDICT) with this context's defaults."""
        return self.warehouse.query(
            sql, project=self.project, default_dataset=self.default_dataset, params=self.params
        )

    def resolve(self, name: str | list[str], kind: str = "table") -> tuple[str, str, str]:
        """`p.ds.t`, `ds.t` or `t` (with a default dataset) → (project, dataset, name)."""
        parts = name.replace("`", "").split(".") if isinstance(name, str) else name
        return self.warehouse.resolve_name(parts, kind, self.project, self.default_dataset)


@dataclasses.dataclass
class TableFunctionArgs:
    """Arguments of a table function call such as `ML.PREDICT(MODEL m, (SELECT ...), STRUCT(...))`.

    `model` is (project, dataset, model) resolved with the job's defaults; `query` is SQL text
    runnable with `ctx.query()` (for `TABLE t` it is `SELECT * FROM t`); `options` holds the STRUCT
    argument as a dict with lower-case keys; `args` the raw text of every argument.
    """

    name: str
    model: tuple[str, str, str] | None
    query: str | None
    table: tuple[str, str, str] | None
    options: dict[str, Any]
    args: list[str]

    @property
    def model_name(self) -> str | None:
        return ".".join(self.model) if self.model else None


StatementHandler = Callable[[str, "exp.Expression | None", QueryContext], "QueryResult | None"]
TableFunction = Callable[[TableFunctionArgs, QueryContext], pa.Table]
