"""Load jobs: CSV, newline-delimited JSON or Parquet bytes into a table (`bq load`, media uploads).

With a schema (given or the existing table's), CSV and JSON values go through the same
coercions as streaming inserts; any bad row fails the load and nothing is written. Without a
schema on a new table, Arrow infers one (`autodetect`); CSV then reads its first row as header.
"""

from __future__ import annotations

import io
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from loopml.errors import InvalidArgument, NotFound
from loopml.warehouse.coerce import RowConverter
from loopml.warehouse.schema import Field, normalize_schema
from loopml.warehouse.warehouse import Warehouse

FORMATS = ("CSV", "NEWLINE_DELIMITED_JSON", "PARQUET")


def _csv_rows(data: bytes, names: list[str], skip: int, delimiter: str) -> list[dict[str, Any]]:
    opts = pacsv.ReadOptions(column_names=names, skip_rows=skip, autogenerate_column_names=False)
    convert = pacsv.ConvertOptions(column_types={n: pa.string() for n in names}, strings_can_be_null=True)
    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            read_options=opts,
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=convert,
        )
    except pa.ArrowInvalid as exc:
        raise InvalidArgument(f"Error while reading CSV data: {exc}") from exc
    return table.to_pylist()


def _json_rows(data: bytes) -> list[Any]:
    rows = []
    for n, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            raise InvalidArgument(f"Error while reading JSON data at line {n}: {exc}") from exc
    return rows


def load_data(
    wh: Warehouse, project: str, dataset: str, table: str, data: bytes, config: dict[str, Any]
) -> int:
    """Run one load; returns the number of rows written."""
    fmt = str(config.get("sourceFormat") or "CSV").upper()
    if fmt not in FORMATS:
        raise InvalidArgument(f"Unsupported sourceFormat {fmt!r}: use one of {', '.join(FORMATS)}.")
    write = str(config.get("writeDisposition") or "WRITE_APPEND").upper()
    create = str(config.get("createDisposition") or "CREATE_IF_NEEDED").upper()
    given = (config.get("schema") or {}).get("fields")
    schema: list[Field] | None = normalize_schema(given) if given else None
    exists = wh.table_exists(project, dataset, table)
    if not exists and create == "CREATE_NEVER":
        raise NotFound(f"Not found: Table {project}:{dataset}.{table}")
    if exists and schema is None:
        schema = wh.get_table_schema(project, dataset, table)
    if exists and write == "WRITE_EMPTY" and wh.get_table(project, dataset, table)["num_rows"]:
        raise InvalidArgument(
            f"Table {project}:{dataset}.{table} is not empty (writeDisposition WRITE_EMPTY)."
        )

    if fmt == "PARQUET" or schema is None:
        if fmt == "PARQUET":
            arrow = pq.read_table(io.BytesIO(data))
        elif fmt == "CSV":
            skip = max(0, int(config.get("skipLeadingRows") or 1) - 1)
            delim = str(config.get("fieldDelimiter") or ",")
            arrow = pacsv.read_csv(
                io.BytesIO(data),
                read_options=pacsv.ReadOptions(skip_rows=skip),
                parse_options=pacsv.ParseOptions(delimiter=delim),
            )
        else:
            arrow = pa.Table.from_pylist(_json_rows(data))
        mode = "truncate" if write == "WRITE_TRUNCATE" or not exists else "append"
        wh.write_table_arrow(project, dataset, table, arrow, mode=mode)
        return int(arrow.num_rows)

    if fmt == "CSV":
        rows: list[Any] = _csv_rows(
            data,
            [f["name"] for f in schema],
            int(config.get("skipLeadingRows") or 0),
            str(config.get("fieldDelimiter") or ","),
        )
    else:
        rows = _json_rows(data)
    conv = RowConverter(schema, ignore_unknown=bool(config.get("ignoreUnknownValues")))
    good, _kept, errors = conv.convert(rows)
    if errors:
        first = errors[0]
        err = first["errors"][0]
        raise InvalidArgument(
            f"Error while reading data, error message: row {first['index'] + 1}: {err['message']} "
            f"({len(errors)} bad row(s); nothing was loaded)"
        )
    arrow = conv.to_arrow(good)
    with wh.write_lock:
        if not exists:
            wh.create_table(project, dataset, table, schema)
            wh.write_table_arrow(project, dataset, table, arrow, mode="append")
        else:
            if write == "WRITE_TRUNCATE":
                wh.query(f"DELETE FROM `{project}.{dataset}.{table}` WHERE TRUE", project=project)
            wh.write_table_arrow(project, dataset, table, arrow, mode="append")
    return len(good)
