"""`dataset.INFORMATION_SCHEMA.TABLES` and `.COLUMNS`, built from the catalog as Arrow tables."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import pyarrow as pa

from loopml.errors import InvalidQuery
from loopml.warehouse.schema import Field, legacy_type

if TYPE_CHECKING:
    from loopml.warehouse.warehouse import Warehouse

VIEWS = ("TABLES", "COLUMNS")
_STANDARD = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL"}


def standard_type(field: Field) -> str:
    """The GoogleSQL spelling of a field's type: INT64, STRUCT<a INT64>, ARRAY<STRING>, ..."""
    legacy = legacy_type(field["type"])
    if legacy == "RECORD":
        inner = ", ".join(f"{f['name']} {standard_type(f)}" for f in field["fields"])
        base = f"STRUCT<{inner}>"
    else:
        base = _STANDARD.get(legacy, legacy)
    return f"ARRAY<{base}>" if field.get("mode") == "REPEATED" else base


def information_schema(wh: Warehouse, project: str, dataset: str, view: str) -> pa.Table:
    if view not in VIEWS:
        raise InvalidQuery(f"INFORMATION_SCHEMA.{view} is not supported by loopml: use TABLES or COLUMNS.")
    tables = wh.list_tables(project, dataset)
    if view == "TABLES":
        return pa.table(
            {
                "table_catalog": pa.array([t["project"] for t in tables], pa.string()),
                "table_schema": pa.array([t["dataset"] for t in tables], pa.string()),
                "table_name": pa.array([t["table"] for t in tables], pa.string()),
                "table_type": pa.array(
                    ["VIEW" if t["type"] == "VIEW" else "BASE TABLE" for t in tables], pa.string()
                ),
                "creation_time": pa.array(
                    [dt.datetime.fromtimestamp(t["created_ms"] / 1000, dt.UTC) for t in tables],
                    pa.timestamp("us", tz="UTC"),
                ),
            }
        )
    cols: dict[str, list[object]] = {
        k: []
        for k in (
            "table_catalog",
            "table_schema",
            "table_name",
            "column_name",
            "ordinal_position",
            "is_nullable",
            "data_type",
            "is_partitioning_column",
        )
    }
    for t in tables:
        part = (t.get("time_partitioning") or {}).get("field")
        for i, f in enumerate(t["schema"], start=1):
            cols["table_catalog"].append(t["project"])
            cols["table_schema"].append(t["dataset"])
            cols["table_name"].append(t["table"])
            cols["column_name"].append(f["name"])
            cols["ordinal_position"].append(i)
            cols["is_nullable"].append("NO" if f.get("mode") in ("REQUIRED", "REPEATED") else "YES")
            cols["data_type"].append(standard_type(f))
            cols["is_partitioning_column"].append("YES" if part and part == f["name"] else "NO")
    types = {"ordinal_position": pa.int64()}
    return pa.table({k: pa.array(v, types.get(k, pa.string())) for k, v in cols.items()})
