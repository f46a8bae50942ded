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

from loopml.errors import FailedPrecondition, InvalidArgument, InvalidQuery
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
    write_shards(
        wh,
        uri,
        result.table,
        fmt=str(opts.get("format") or "CSV"),
        header=bool(opts.get("header", False)),
        delimiter=str(opts.get("field_delimiter") or ","),
        overwrite=bool(opts.get("overwrite", False)),
    )
    return QueryResult.empty("EXPORT_DATA", num_dml_affected_rows=None)


def write_shards(
    wh: Warehouse, uri: str, table: pa.Table, *, fmt: str, header: bool, delimiter: str, overwrite: bool
) -> list[str]:
    """Write `table` to `uri` (one `*` → 12-digit shard numbers; none → exactly that file)."""
    fmt = fmt.upper()
    if fmt == "NEWLINE_DELIMITED_JSON":
        fmt = "JSON"
    if fmt not in FORMATS or fmt == "AVRO":
        raise InvalidQuery(f"Export format {fmt!r} is not supported: use CSV, JSON or PARQUET.")
    if wh.artifacts is None:
        raise FailedPrecondition("Exports need an artifact store; this warehouse has none.")
    if len(delimiter) != 1:
        raise InvalidQuery("The field delimiter of an export must be one character.")
    if uri.count("*") > 1:
        raise InvalidQuery(f"Export URI {uri!r} may contain at most one '*' wildcard.")
    if "*" not in uri:
        path = wh.artifacts.resolve(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_shard(path, table, fmt, header, delimiter)
        wh.artifacts.publish(uri)  # to the object store, when there is one
        return [uri]
    prefix, suffix = uri.split("*")
    if "/" not in prefix.split("://", 1)[-1]:
        raise InvalidQuery(f"Export URI {uri!r} needs a bucket: gs://bucket/path/*.csv.")
    base, name_prefix = prefix.rsplit("/", 1)
    target_dir = wh.artifacts.resolve(base + "/")
    target_dir.mkdir(parents=True, exist_ok=True)
    existing = [p for p in target_dir.iterdir() if p.is_file() and p.name.startswith(name_prefix)]
    stored = []  # with an object store, the objects it holds under the prefix count too
    if wh.artifacts.remote is not None:
        stored = [u for u in wh.artifacts.list(prefix) if "/" not in u[len(prefix) :]]
    if (existing or stored) and not overwrite:
        raise InvalidQuery(
            f"Export destination {uri} is not empty ({max(len(existing), len(stored))} file(s)); "
            "use overwrite=true."
        )
    for p in existing:
        if p.name.endswith(suffix):
            p.unlink()
    for u in stored:
        if u.endswith(suffix):
            wh.artifacts.remove(u)
    shards = max(1, -(-table.num_rows // SHARD_ROWS))
    written: list[str] = []
    try:
        for i in range(shards):
            name = f"{name_prefix}{i:012d}{suffix}"
            written.append(f"{prefix}{i:012d}{suffix}")
            _write_shard(target_dir / name, table.slice(i * SHARD_ROWS, SHARD_ROWS), fmt, header, delimiter)
            wh.artifacts.publish(written[-1])
    except BaseException:
        wh.artifacts.discard(written)  # a failed export leaves none of its shards (local or stored)
        raise
    return written


def extract_table(wh: Warehouse, project: str, config: dict[str, Any]) -> QueryResult:
    """An extract job (`client.extract_table`): a whole table to files in the artifact store."""
    src = config.get("sourceTable") or {}
    p, d, t = src.get("projectId") or project, src.get("datasetId"), src.get("tableId")
    if not d or not t:
        raise InvalidArgument("configuration.extract.sourceTable needs datasetId and tableId.")
    uris = config.get("destinationUris") or (
        [config["destinationUri"]] if config.get("destinationUri") else []
    )
    if not uris or not all(isinstance(u, str) for u in uris):
        raise InvalidArgument("configuration.extract.destinationUris must list at least one gs:// URI.")
    if str(config.get("compression") or "NONE").upper() != "NONE":
        raise InvalidArgument("Compressed extracts are not supported: leave compression unset (NONE).")
    table = wh.read_table_arrow(str(p), str(d), str(t))
    written = write_shards(
        wh,
        uris[0],
        table,
        fmt=str(config.get("destinationFormat") or "CSV"),
        header=config.get("printHeader", True) is not False,
        delimiter=str(config.get("fieldDelimiter") or ","),
        overwrite=True,
    )
    return QueryResult.empty(
        "EXTRACT", num_dml_affected_rows=len(written), destination=(str(p), str(d), str(t))
    )
