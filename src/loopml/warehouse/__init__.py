"""The warehouse: BigQuery-style datasets and tables in one DuckDB file, GoogleSQL via sqlglot."""

from loopml.warehouse.types import QueryContext, QueryResult, TableFunctionArgs
from loopml.warehouse.warehouse import Warehouse

__all__ = ["QueryContext", "QueryResult", "TableFunctionArgs", "Warehouse"]
