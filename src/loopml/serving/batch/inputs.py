"""Batch inputs: globbing storage URIs, reading JSONL/CSV files and warehouse tables into Arrow.

The job's input is snapshotted once into an Arrow IPC file in the job's work directory, so every
attempt (including one resumed after a crash) cuts exactly the same chunks from exactly the same
rows, whatever happens to the source meanwhile (BigQuery reads a table snapshot too).
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.csv as pacsv

from loopml.artifacts import ArtifactStore
from loopml.errors import InvalidArgument, NotFound
from loopml.serving.batch.chunk import JSON_COLUMN
from loopml.serving.batch.spec import BqRef, JobSpec


def expand_uris(store: ArtifactStore, uris: list[str]) -> list[Path]:
    """Local files behind `gs://bucket/path` URIs, with `*`, `?` and `**` globs, sorted, de-duplicated."""
    files: list[Path] = []
    for uri in uris:
        parsed = urlparse(uri)
        bucket_root = store.bucket_path(parsed.netloc).resolve()
        pattern = parsed.path.lstrip("/")
        if not glob.has_magic(pattern):
            path = store.fetch(uri)
            if not path.is_file():
                raise InvalidArgument(f"inputConfig.gcsSource.uris: no file at {uri}.")
            files.append(path)
            continue
        if ".." in pattern.split("/"):
            raise InvalidArgument(f"inputConfig.gcsSource.uris: {uri!r} escapes its bucket.")
        if store.remote is not None:  # bring the stored objects below the glob's fixed part
            parts = pattern.split("/")
            fixed = "/".join(parts[: next(i for i, p in enumerate(parts) if glob.has_magic(p))])
            store.fetch_files(f"{parsed.scheme}://{parsed.netloc}/{fixed}")
        matches = sorted(
            p.resolve()
            for p in map(Path, glob.glob(str(bucket_root / pattern), recursive=True))
            if p.is_file()
        )
        matches = [m for m in matches if m.is_relative_to(bucket_root)]
        if not matches:
            raise InvalidArgument(f"inputConfig.gcsSource.uris: nothing matches {uri}.")
        files.extend(matches)
    return list(dict.fromkeys(files))


def read_jsonl(files: list[Path]) -> pa.Table:
    lines: list[str] = []
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines.extend(line.rstrip("\r\n") for line in fh if line.strip())
    return pa.table({JSON_COLUMN: pa.array(lines, pa.string())})


def read_csv(files: list[Path]) -> pa.Table:
    tables = []
    for path in files:
        try:
            tables.append(pacsv.read_csv(str(path)))
        except pa.ArrowInvalid as exc:
            raise InvalidArgument(f"Cannot read CSV input {path.name}: {exc}") from exc
    if not tables:
        return pa.table({})
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InvalidArgument(f"CSV input files have different columns or types: {exc}") from exc


def read_source(spec: JobSpec, store: ArtifactStore, warehouse: Any) -> pa.Table:
    """The whole input of a job as one Arrow table."""
    if spec.instances_format == "bigquery":
        ref = spec.bq_source
        assert ref is not None and ref.dataset and ref.table
        if warehouse is None:
            raise NotFound("The warehouse is not available on this server: cannot read bigquerySource.")
        table = warehouse.read_table_arrow(ref.project, ref.dataset, ref.table)
        return table if isinstance(table, pa.Table) else pa.Table.from_batches(list(table))
    files = expand_uris(store, spec.gcs_uris)
    return read_jsonl(files) if spec.instances_format == "jsonl" else read_csv(files)


def _table_sql(warehouse: Any, ref: BqRef) -> str:
    from loopml.warehouse.warehouse import table_ref

    assert ref.dataset and ref.table
    ds = warehouse.get_dataset(ref.project, ref.dataset)
    if not warehouse.table_exists(ds["project"], ds["dataset"], ref.table):
        raise NotFound(f"Not found: Table {ref.project}:{ref.dataset}.{ref.table}")
    return f"SELECT * FROM {table_ref(ds['project'], ds['dataset'], ref.table)}"


def count_rows(warehouse: Any, ref: BqRef) -> int:
    sql = _table_sql(warehouse, ref).replace("SELECT *", "SELECT COUNT(*)", 1)
    row = warehouse.cursor().execute(sql).fetchone()
    return int(row[0]) if row else 0


def stream_chunks(warehouse: Any, ref: BqRef, lengths: list[int]) -> Iterator[pa.Table]:
    """The table in insertion order, cut into tables of the planned `lengths` (the last one takes
    whatever rows remain), read in one DuckDB read transaction (a consistent snapshot for the pass)."""
    batch_rows = max(1, min(max(lengths, default=1), 1 << 20))
    reader = warehouse.cursor().sql(_table_sql(warehouse, ref)).to_arrow_reader(batch_rows)
    pending: list[pa.RecordBatch] = []
    size = 0
    index = 0
    for batch in reader:
        pending.append(batch)
        size += batch.num_rows
        while index < len(lengths) - 1 and size >= lengths[index]:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, lengths[index])
            rest = table.slice(lengths[index])
            pending = rest.to_batches()
            size = rest.num_rows
            index += 1
    # the last chunk (an empty table is one empty chunk: its schema makes the outputs)
    yield pa.Table.from_batches(pending, schema=reader.schema)
