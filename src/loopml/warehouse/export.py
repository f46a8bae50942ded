"""`EXPORT DATA OPTIONS(uri='gs://b/p/*.csv', format=..., overwrite=..., header=...) AS SELECT ...`.

The single `*` of the URI expands to 12-digit zero-padded shard numbers (`000000000000.csv`, ...),
one shard per `SHARD_ROWS` rows (always at least one, possibly with only a header), written into
the artifact store. With `overwrite=false` an export into a non-empty prefix fails, as in BigQuery.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
from typing import TYPE_CHECKING, Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from sqlglot import exp

from loopml.errors import FailedPrecondition, InvalidQuery
from loopml.warehouse.coerce import _EPOCH
from loopml.warehouse.types import QueryResult

if TYPE_CHECKING:
    from loopml.warehouse.warehouse import Warehouse

SHARD_ROWS = 1_000_000
FORMATS = ("CSV", "JSON", "PARQUET", "AVRO")


def export_options(tree: exp.Export) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    props = tree.args.get("options")
    for prop in props.expressions if props is not None else []:
        if isinstance(prop, exp.FileFormatProperty):
            opts["format"] = prop.this.name if prop.this is not None else ""
            continue
        key = str(prop.this.name if isinstance(prop.this, exp.Expression) else prop.this).lower()
        value = prop.args.get("value")
        if isinstance(value, exp.Boolean):
            opts[key] = bool(value.this)
        elif isinstance(value, exp.Literal):
            opts[key] = value.this
        elif value is not None:
            opts[key] = value.sql("bigquery")
    return opts


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if hasattr(value, "isoformat"):
        if getattr(value, "tzinfo", None) is not None:
            return value.astimezone(_EPOCH.tzinfo).strftime("%Y-%m-%d %H:%M:%S.%f UTC")
        return value.isoformat()
    if hasattr(value, "is_finite"):  # Decimal
        return str(value)
    return value


def _csv_cell(value: Any) -> Any:
    """BigQuery's CSV rendering: true/false, `YYYY-MM-DD HH:MM:SS[.ffffff] UTC`, empty for NULL."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        text = value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        return text + (f".{value.microsecond:06d}" if value.microsecond else "") + " UTC"
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def _write_shard(path: Any, table: pa.Table, fmt: str, header: bool, delimiter: str) -> None:
    if fmt == "CSV":
        for field in table.schema:
            if pa.types.is_struct(field.type) or pa.types.is_list(field.type):
                raise InvalidQuery(
                    f"Cannot export column {field.name!r} ({field.type}) to CSV: nested and repeated "
                    "fields need format='JSON' or 'PARQUET'."
                )
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
            if header:
                writer.writerow(table.column_names)
            for batch in table.to_batches(max_chunksize=10_000):
                for row in batch.to_pylist():
                    writer.writerow([_csv_cell(v) for v in row.values()])
    elif fmt == "JSON":
        with open(path, "wb") as fh:
            for row in table.to_pylist():
                fh.write(orjson.dumps(_jsonable(row)) + b"\n")
    else:
        pq.write_table(table, str(path))


def export_data(wh: Warehouse, tree: exp.Export, result: QueryResult) -> QueryResult:
    opts = export_options(tree)
    uri = opts.get("uri")
    if not isinstance(uri, str) or not uri:
        raise InvalidQuery("EXPORT DATA needs OPTIONS(uri='gs://bucket/path/*.csv', format=...).")
    if uri.count("*") != 1:
        raise InvalidQuery(f"EXPORT DATA uri {uri!r} must contain exactly one '*' wildcard.")
    fmt = str(opts.get("format") or "CSV").upper()
    if fmt == "NEWLINE_DELIMITED_JSON":
        fmt = "JSON"
    if fmt not in FORMATS or fmt == "AVRO":
        raise InvalidQuery(f"EXPORT DATA format {fmt!r} is not supported: use CSV, JSON or PARQUET.")
    if wh.artifacts is None:
        raise FailedPrecondition("EXPORT DATA needs an artifact store; this warehouse has none.")
    header = bool(opts.get("header", False))
    delimiter = str(opts.get("field_delimiter") or ",")
    if len(delimiter) != 1:
        raise InvalidQuery("EXPORT DATA field_delimiter must be one character.")
    prefix, suffix = uri.split("*")
    target_dir = wh.artifacts.resolve(prefix.rsplit("/", 1)[0] + "/") if "/" in prefix else None
    if target_dir is None:
        raise InvalidQuery(f"EXPORT DATA uri {uri!r} is not a bucket path.")
    name_prefix = prefix.rsplit("/", 1)[1]
    target_dir.mkdir(parents=True, exist_ok=True)
    existing = [p for p in target_dir.iterdir() if p.is_file() and p.name.startswith(name_prefix)]
    if existing and not opts.get("overwrite", False):
        raise InvalidQuery(
            f"EXPORT DATA destination {uri} is not empty ({len(existing)} file(s)); use overwrite=true."
        )
    for p in existing:
        if p.name.endswith(suffix):
            p.unlink()
    table = result.table
    shards = max(1, -(-table.num_rows // SHARD_ROWS))
    for i in range(shards):
        part = table.slice(i * SHARD_ROWS, SHARD_ROWS)
        path = target_dir / f"{name_prefix}{i:012d}{suffix}"
        _write_shard(path, part, fmt, header, delimiter)
    return QueryResult.empty("EXPORT_DATA", num_dml_affected_rows=None)
