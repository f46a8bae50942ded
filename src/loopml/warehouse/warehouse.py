"""The warehouse: one DuckDB file holding BigQuery-style datasets and tables for every project.

Names: dataset `ds` of project `p` is the DuckDB schema `"p.ds"`; table `t` is `"p.ds"."t"`.
The BigQuery schema of each table (types as written, modes, descriptions, partitioning) is kept
in the catalog schema `_loopml`, next to streaming-insert ids. DuckDB matches names without
regard to case, so `DS` and `ds` are the same dataset.

Threads: each thread gets its own DuckDB cursor (a connection to the same database); writes
(inserts, DDL, DML) are serialised by one re-entrant lock, reads run concurrently.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from loopml.artifacts import ArtifactStore
from loopml.errors import AlreadyExists, InvalidArgument, InvalidQuery, NotFound
from loopml.warehouse import query as query_mod
from loopml.warehouse.coerce import RowConverter, stopped_error
from loopml.warehouse.schema import (
    Field,
    add_columns,
    column_ddl,
    legacy_type,
    normalize_schema,
    quote_ident,
    schema_from_arrow,
)
from loopml.warehouse.types import QueryResult, StatementHandler, TableFunction

log = logging.getLogger(__name__)

PROJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:._-]{0,127}$")
DATASET_RE = re.compile(r"^[A-Za-z0-9_]{1,1024}$")
TABLE_RE = re.compile(r"^[A-Za-z0-9_-]{1,1024}$")
PARTITION_TYPES = ("DAY", "HOUR", "MONTH", "YEAR")

_CATALOG_DDL = [
    "CREATE SCHEMA IF NOT EXISTS _loopml",
    "CREATE TABLE IF NOT EXISTS _loopml.datasets (project VARCHAR, dataset VARCHAR, location VARCHAR, "
    "description VARCHAR, labels VARCHAR, created_ms BIGINT, modified_ms BIGINT)",
    "CREATE TABLE IF NOT EXISTS _loopml.tables (project VARCHAR, dataset VARCHAR, table_id VARCHAR, "
    "schema VARCHAR, partitioning VARCHAR, description VARCHAR, labels VARCHAR, created_ms BIGINT, "
    "modified_ms BIGINT)",
    "CREATE TABLE IF NOT EXISTS _loopml.insert_id_hashes (table_hash BIGINT, id_hash BIGINT, ts DOUBLE)",
]


def now_ms() -> int:
    return int(time.time() * 1000)


def check_name(kind: str, value: Any) -> str:
    pattern = {"project": PROJECT_RE, "dataset": DATASET_RE}.get(kind, TABLE_RE)
    if not isinstance(value, str) or not pattern.match(value):
        raise InvalidArgument(
            f"Invalid {kind} ID {value!r}: "
            + {
                "project": "use letters, digits, hyphens, dots or colons.",
                "dataset": "use letters, digits and underscores (max 1024).",
            }.get(kind, "use letters, digits, underscores and hyphens (max 1024).")
        )
    return value


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector around allocation-heavy, cycle-free work.

    Collections triggered by the thousands of small dicts of a row batch cost as much as the
    conversion itself; reference counting still frees everything. Re-enabled only if it was on.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def stable_hash(text: str) -> int:
    """A 64-bit hash that is the same in every process (insertIds are stored as these)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little", signed=True)


def table_ref(project: str, dataset: str, table: str) -> str:
    return f"{quote_ident(f'{project}.{dataset}')}.{quote_ident(table)}"


class _TableEntry:
    def __init__(self, schema: list[Field]) -> None:
        self.schema = schema
        self.converters: dict[bool, RowConverter] = {}

    def converter(self, ignore_unknown: bool) -> RowConverter:
        conv = self.converters.get(ignore_unknown)
        if conv is None:
            conv = self.converters[ignore_unknown] = RowConverter(self.schema, ignore_unknown=ignore_unknown)
        return conv


class Warehouse:
    """BigQuery-style datasets, tables, streaming inserts and GoogleSQL queries over DuckDB."""

    def __init__(
        self,
        path: Path,
        artifacts: ArtifactStore | None = None,
        *,
        dedup_window_s: float = 600.0,
        dedup_max_ids: int = 100_000,
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.artifacts = artifacts
        self.dedup_window_s = dedup_window_s
        self.dedup_max_ids = dedup_max_ids
        self._db = duckdb.connect(str(path))
        self._lock = threading.RLock()
        self._local = threading.local()
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._entries: dict[tuple[str, str, str], _TableEntry] = {}
        self._exists: dict[tuple[str, str, str], tuple[str, str] | None] = {}
        self._generation = 0
        self._cache_lock = threading.Lock()
        self._dedup: dict[str, OrderedDict[int, float]] = {}
        self._inserts_since_prune = 0
        self.statement_handlers: list[StatementHandler] = []
        self.table_functions: dict[str, TableFunction] = {}
        self._closed = False
        cur = self.cursor()
        for ddl in _CATALOG_DDL:
            cur.execute(ddl)
        cur.execute("DELETE FROM _loopml.insert_id_hashes WHERE ts < ?", [time.time() - dedup_window_s])

    # -- connections -----------------------------------------------------------------------
    def cursor(self) -> duckdb.DuckDBPyConnection:
        """This thread's DuckDB connection (time zone UTC)."""
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            if self._closed:
                raise RuntimeError("the warehouse is closed")
            cur = self._db.cursor()
            cur.execute("SET TimeZone = 'UTC'")
            cur.execute("SET enable_progress_bar = false")
            self._local.cursor = cur
            with self._cache_lock:
                self._cursors.append(cur)
        return cur

    @property
    def write_lock(self) -> threading.RLock:
        return self._lock

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for cur in self._cursors:
                try:
                    cur.close()
                except duckdb.Error:
                    pass
            self._cursors.clear()
            self._db.close()

    # -- extension hooks (BigQuery ML) -----------------------------------------------------
    def register_statement_handler(self, fn: StatementHandler) -> None:
        """fn(sql_text, parsed_or_None, ctx) -> QueryResult | None, tried before normal execution."""
        self.statement_handlers.append(fn)

    def register_table_function(self, name: str, fn: TableFunction) -> None:
        """fn(args, ctx) -> pyarrow.Table for `name(...)` in FROM clauses (e.g. "ML.PREDICT")."""
        self.table_functions[name.upper()] = fn

    # -- names -----------------------------------------------------------------------------
    def resolve_name(
        self, parts: list[str], kind: str, project: str, default_dataset: str | None
    ) -> tuple[str, str, str]:
        parts = [p for p in parts if p]
        if len(parts) == 3:
            p, d, t = parts
        elif len(parts) == 2:
            p, (d, t) = project, parts
        elif len(parts) == 1 and default_dataset:
            p, d, t = project, default_dataset, parts[0]
        elif len(parts) == 1:
            raise InvalidQuery(
                f'{kind.capitalize()} name "{parts[0]}" missing dataset while no default dataset is set '
                "in the request."
            )
        else:
            raise InvalidQuery(f"Invalid {kind} name {'.'.join(parts)!r}.")
        return check_name("project", p), check_name("dataset", d), t

    # -- datasets --------------------------------------------------------------------------
    def _dataset_row(self, project: str, dataset: str) -> dict[str, Any] | None:
        rows = (
            self.cursor()
            .execute(
                "SELECT project, dataset, location, description, labels, created_ms, modified_ms "
                "FROM _loopml.datasets WHERE lower(project) = lower(?) AND lower(dataset) = lower(?)",
                [project, dataset],
            )
            .fetchall()
        )
        if not rows:
            return None
        p, d, loc, desc, labels, created, modified = rows[0]
        return {
            "project": p,
            "dataset": d,
            "location": loc,
            "description": desc,
            "labels": orjson.loads(labels or "{}"),
            "created_ms": created,
            "modified_ms": modified,
        }

    def create_dataset(
        self,
        project: str,
        dataset: str,
        *,
        location: str | None = None,
        description: str | None = None,
        labels: dict[str, str] | None = None,
        exists_ok: bool = False,
    ) -> dict[str, Any]:
        check_name("project", project)
        check_name("dataset", dataset)
        with self._lock:
            existing = self._dataset_row(project, dataset)
            if existing is not None:
                if exists_ok:
                    return existing
                raise AlreadyExists(f"Already Exists: Dataset {project}:{dataset}")
            cur = self.cursor()
            ts = now_ms()
            cur.execute("BEGIN")
            try:
                cur.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(f'{project}.{dataset}')}")
                cur.execute(
                    "INSERT INTO _loopml.datasets VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        project,
                        dataset,
                        location or "US",
                        description,
                        orjson.dumps(labels or {}).decode(),
                        ts,
                        ts,
                    ],
                )
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return self.get_dataset(project, dataset)

    def get_dataset(self, project: str, dataset: str) -> dict[str, Any]:
        row = self._dataset_row(project, dataset)
        if row is None:
            raise NotFound(f"Not found: Dataset {project}:{dataset}")
        return row

    def list_datasets(self, project: str) -> list[dict[str, Any]]:
        rows = (
            self.cursor()
            .execute(
                "SELECT dataset FROM _loopml.datasets WHERE lower(project) = lower(?) ORDER BY dataset",
                [project],
            )
            .fetchall()
        )
        return [self.get_dataset(project, r[0]) for r in rows]

    def patch_dataset(
        self,
        project: str,
        dataset: str,
        *,
        description: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Update a dataset's description and/or labels (None leaves a field unchanged)."""
        with self._lock:
            ds = self.get_dataset(project, dataset)
            self.cursor().execute(
                "UPDATE _loopml.datasets SET description = ?, labels = ?, modified_ms = ? "
                "WHERE lower(project) = lower(?) AND lower(dataset) = lower(?)",
                [
                    description if description is not None else ds["description"],
                    orjson.dumps(labels if labels is not None else ds["labels"]).decode(),
                    now_ms(),
                    project,
                    dataset,
                ],
            )
        return self.get_dataset(project, dataset)

    def delete_dataset(self, project: str, dataset: str, *, delete_contents: bool = False) -> None:
        with self._lock:
            ds = self.get_dataset(project, dataset)
            tables = self.list_tables(project, dataset)
            if tables and not delete_contents:
                raise InvalidArgument(
                    f"Dataset {project}:{dataset} is still in use: it holds {len(tables)} table(s). "
                    "Delete them first or pass deleteContents=true."
                )
            cur = self.cursor()
            cur.execute("BEGIN")
            try:
                schema_name = quote_ident(ds["project"] + "." + ds["dataset"])
                cur.execute(f"DROP SCHEMA IF EXISTS {schema_name} CASCADE")
                args = [project, dataset]
                where = "WHERE lower(project) = lower(?) AND lower(dataset) = lower(?)"
                cur.execute(f"DELETE FROM _loopml.datasets {where}", args)
                cur.execute(f"DELETE FROM _loopml.tables {where}", args)
                if tables:
                    cur.execute(
                        "DELETE FROM _loopml.insert_id_hashes WHERE list_contains(?, table_hash)",
                        [[stable_hash(f"{project}.{dataset}.{t['table']}".lower()) for t in tables]],
                    )
                for t in tables:
                    self._dedup.pop(f"{project}.{dataset}.{t['table']}".lower(), None)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            self.invalidate()

    # -- tables ----------------------------------------------------------------------------
    def invalidate(self) -> None:
        """Forget cached table schemas and existence (call after DDL has committed)."""
        with self._cache_lock:
            self._generation += 1
            self._entries.clear()
            self._exists.clear()

    def _duckdb_table(self, project: str, dataset: str, table: str) -> tuple[str, str] | None:
        """(name, "TABLE" | "VIEW") of an existing table, cached until the next DDL."""
        key = (project.lower(), dataset.lower(), table.lower())
        if key in self._exists:
            return self._exists[key]
        generation = self._generation
        found = self._lookup_table(project, dataset, table)
        with self._cache_lock:
            if generation == self._generation:
                if len(self._exists) > 10_000:
                    self._exists.clear()
                self._exists[key] = found
        return found

    def _lookup_table(self, project: str, dataset: str, table: str) -> tuple[str, str] | None:
        rows = (
            self.cursor()
            .execute(
                "SELECT table_name, 'TABLE' FROM duckdb_tables() WHERE database_name = current_database() "
                "AND lower(schema_name) = lower(?) AND lower(table_name) = lower(?) "
                "UNION ALL SELECT view_name, 'VIEW' FROM duckdb_views() WHERE database_name = current_database() "
                "AND lower(schema_name) = lower(?) AND lower(view_name) = lower(?)",
                [f"{project}.{dataset}", table, f"{project}.{dataset}", table],
            )
            .fetchall()
        )
        return (rows[0][0], rows[0][1]) if rows else None

    def _catalog_row(self, project: str, dataset: str, table: str) -> tuple[Any, ...] | None:
        rows = (
            self.cursor()
            .execute(
                "SELECT schema, partitioning, description, labels, created_ms, modified_ms FROM _loopml.tables "
                "WHERE lower(project) = lower(?) AND lower(dataset) = lower(?) AND lower(table_id) = lower(?)",
                [project, dataset, table],
            )
            .fetchall()
        )
        return rows[0] if rows else None

    def table_exists(self, project: str, dataset: str, table: str) -> bool:
        return self._duckdb_table(project, dataset, table) is not None

    def get_table(self, project: str, dataset: str, table: str, *, with_rows: bool = True) -> dict[str, Any]:
        """Table metadata: schema (types as written), partitioning, row count, times."""
        found = self._duckdb_table(project, dataset, table)
        if found is None:
            self.get_dataset(project, dataset)
            raise NotFound(f"Not found: Table {project}:{dataset}.{table}")
        name, kind = found
        ds = self.get_dataset(project, dataset)
        cat = self._catalog_row(project, dataset, name)
        info: dict[str, Any] = {
            "project": ds["project"],
            "dataset": ds["dataset"],
            "table": name,
            "type": kind,
            "location": ds["location"],
            "schema": None,
            "time_partitioning": None,
            "description": None,
            "labels": {},
            "created_ms": ds["created_ms"],
            "modified_ms": ds["created_ms"],
        }
        if cat is not None:
            schema, part, desc, labels, created, modified = cat
            info.update(
                schema=orjson.loads(schema) if schema else None,
                time_partitioning=orjson.loads(part) if part else None,
                description=desc,
                labels=orjson.loads(labels or "{}"),
                created_ms=created,
                modified_ms=modified,
            )
        ref = table_ref(ds["project"], ds["dataset"], name)
        if info["schema"] is None:
            arrow = self.cursor().sql(f"SELECT * FROM {ref} LIMIT 0").to_arrow_table()
            info["schema"] = schema_from_arrow(arrow.schema)
        if with_rows:
            info["num_rows"] = int(self.cursor().execute(f"SELECT count(*) FROM {ref}").fetchall()[0][0])
        return info

    def _entry(self, project: str, dataset: str, table: str) -> _TableEntry:
        key = (project.lower(), dataset.lower(), table.lower())
        entry = self._entries.get(key)
        if entry is None:
            generation = self._generation
            entry = _TableEntry(self.get_table(project, dataset, table, with_rows=False)["schema"])
            with self._cache_lock:
                if generation == self._generation:
                    self._entries[key] = entry
        return entry

    def get_table_schema(self, project: str, dataset: str, table: str) -> list[Field]:
        """The table's BigQuery schema (types as written); cached until the next DDL."""
        return self._entry(project, dataset, table).schema

    def list_tables(self, project: str, dataset: str) -> list[dict[str, Any]]:
        ds = self.get_dataset(project, dataset)
        rows = (
            self.cursor()
            .execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
                "AND lower(schema_name) = lower(?) UNION ALL SELECT view_name FROM duckdb_views() "
                "WHERE database_name = current_database() AND lower(schema_name) = lower(?) ORDER BY 1",
                [f"{project}.{dataset}", f"{project}.{dataset}"],
            )
            .fetchall()
        )
        return [self.get_table(ds["project"], ds["dataset"], r[0], with_rows=False) for r in rows]

    def create_table(
        self,
        project: str,
        dataset: str,
        table: str,
        schema: list[Field] | None,
        *,
        time_partitioning: dict[str, Any] | None = None,
        description: str | None = None,
        labels: dict[str, str] | None = None,
        exists_ok: bool = False,
    ) -> dict[str, Any]:
        check_name("table", table)
        fields = normalize_schema(schema)
        part = self._check_partitioning(time_partitioning, fields)
        with self._lock:
            ds = self.get_dataset(project, dataset)
            if self.table_exists(project, dataset, table):
                if exists_ok:
                    return self.get_table(project, dataset, table)
                raise AlreadyExists(f"Already Exists: Table {project}:{dataset}.{table}")
            ref = table_ref(ds["project"], ds["dataset"], table)
            cur = self.cursor()
            cur.execute("BEGIN")
            try:
                cur.execute(f"CREATE TABLE {ref} ({', '.join(column_ddl(f) for f in fields)})")
                self._write_catalog(
                    cur, ds["project"], ds["dataset"], table, fields, part, description, labels
                )
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            self.invalidate()
        return self.get_table(project, dataset, table)

    def _check_partitioning(self, part: dict[str, Any] | None, fields: list[Field]) -> dict[str, Any] | None:
        if not part:
            return None
        kind = str(part.get("type") or "DAY").upper()
        if kind not in PARTITION_TYPES:
            raise InvalidArgument(
                f"Invalid timePartitioning type {part.get('type')!r}: expected {PARTITION_TYPES}."
            )
        out: dict[str, Any] = {"type": kind}
        column = part.get("field")
        if column:
            match = [f for f in fields if f["name"].lower() == str(column).lower()]
            if not match or legacy_type(match[0]["type"]) not in ("TIMESTAMP", "DATE", "DATETIME"):
                raise InvalidArgument(
                    f"timePartitioning field {column!r} must be a top-level TIMESTAMP, DATE or DATETIME column."
                )
            out["field"] = match[0]["name"]
        if part.get("expirationMs"):
            out["expirationMs"] = str(part["expirationMs"])
        return out

    def _write_catalog(
        self,
        cur: duckdb.DuckDBPyConnection,
        project: str,
        dataset: str,
        table: str,
        fields: list[Field],
        part: dict[str, Any] | None,
        description: str | None,
        labels: dict[str, str] | None,
        created_ms: int | None = None,
    ) -> None:
        ts = now_ms()
        cur.execute(
            "DELETE FROM _loopml.tables WHERE lower(project) = lower(?) AND lower(dataset) = lower(?) "
            "AND lower(table_id) = lower(?)",
            [project, dataset, table],
        )
        cur.execute(
            "INSERT INTO _loopml.tables VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                project,
                dataset,
                table,
                orjson.dumps(fields).decode(),
                orjson.dumps(part).decode() if part else None,
                description,
                orjson.dumps(labels or {}).decode(),
                created_ms or ts,
                ts,
            ],
        )

    def record_table(self, project: str, dataset: str, table: str) -> None:
        """Record the schema of a table made by SQL (CTAS) in the catalog, from its DuckDB types."""
        ref = table_ref(project, dataset, table)
        cur = self.cursor()
        arrow = cur.sql(f"SELECT * FROM {ref} LIMIT 0").to_arrow_table()
        self._write_catalog(cur, project, dataset, table, schema_from_arrow(arrow.schema), None, None, None)
        self.invalidate()

    def forget_table(self, project: str, dataset: str, table: str) -> None:
        cur = self.cursor()
        cur.execute(
            "DELETE FROM _loopml.tables WHERE lower(project) = lower(?) AND lower(dataset) = lower(?) "
            "AND lower(table_id) = lower(?)",
            [project, dataset, table],
        )
        key = f"{project}.{dataset}.{table}".lower()
        cur.execute("DELETE FROM _loopml.insert_id_hashes WHERE table_hash = ?", [stable_hash(key)])
        self._dedup.pop(key, None)
        self.invalidate()

    def patch_table(
        self,
        project: str,
        dataset: str,
        table: str,
        *,
        schema: list[Field] | None = None,
        description: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Update description/labels and add NULLABLE columns (`schema` must keep all old fields)."""
        with self._lock:
            info = self.get_table(project, dataset, table, with_rows=False)
            fields = info["schema"]
            added: list[Field] = []
            if schema is not None:
                new = normalize_schema(schema)
                added = add_columns(fields, new)
                fields = fields + added
            ref = table_ref(info["project"], info["dataset"], info["table"])
            cur = self.cursor()
            cur.execute("BEGIN")
            try:
                for f in added:
                    cur.execute(f"ALTER TABLE {ref} ADD COLUMN {column_ddl(f)}")
                self._write_catalog(
                    cur,
                    info["project"],
                    info["dataset"],
                    info["table"],
                    fields,
                    info["time_partitioning"],
                    description if description is not None else info["description"],
                    labels if labels is not None else info["labels"],
                    created_ms=info["created_ms"],
                )
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            self.invalidate()
        return self.get_table(project, dataset, table)

    def delete_table(self, project: str, dataset: str, table: str) -> None:
        with self._lock:
            info = self.get_table(project, dataset, table, with_rows=False)
            cur = self.cursor()
            cur.execute("BEGIN")
            try:
                kind = "VIEW" if info["type"] == "VIEW" else "TABLE"
                cur.execute(f"DROP {kind} {table_ref(info['project'], info['dataset'], info['table'])}")
                self.forget_table(info["project"], info["dataset"], info["table"])
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            finally:
                self.invalidate()

    # -- rows ------------------------------------------------------------------------------
    def insert_rows(
        self,
        project: str,
        dataset: str,
        table: str,
        rows: list[dict[str, Any]],
        insert_ids: list[str | None] | None = None,
        *,
        skip_invalid: bool = False,
        ignore_unknown: bool = False,
    ) -> list[dict[str, Any]]:
        """BigQuery streaming insert; returns insertErrors (empty = all rows stored, durably)."""
        if not isinstance(rows, list):
            raise InvalidArgument("rows must be a list of JSON objects.")
        if insert_ids is not None and len(insert_ids) != len(rows):
            raise InvalidArgument("insert_ids must have one entry per row.")
        conv = self._entry(project, dataset, table).converter(ignore_unknown)
        with paused_gc():  # conversion allocates many short-lived, acyclic objects
            good, kept, errors = conv.convert(rows)
        if errors and not skip_invalid:
            stopped = [stopped_error(i) for i in kept]
            return sorted(errors + stopped, key=lambda e: int(e["index"]))
        if not good:
            return errors
        key = f"{project}.{dataset}.{table}".lower()
        with self._lock:
            ids: list[int] = []
            if insert_ids is not None:
                seen = self._seen_ids(key)
                fresh_rows: list[dict[str, Any]] = []
                batch: set[int] = set()
                for row, index in zip(good, kept, strict=True):
                    rid = insert_ids[index]
                    if rid:
                        h = stable_hash(str(rid))
                        if h in seen or h in batch:
                            continue
                        batch.add(h)
                        ids.append(h)
                    fresh_rows.append(row)
                good = fresh_rows
                if not good:
                    return errors
            try:
                with paused_gc():
                    arrow = conv.to_arrow(good)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
                raise InvalidArgument(
                    f"Rows do not fit the schema of {project}:{dataset}.{table}: {exc}"
                ) from exc
            self._append(project, dataset, table, arrow, key, ids)
        return errors

    def _seen_ids(self, key: str) -> OrderedDict[int, float]:
        """Hashes of the insertIds seen recently for a table (loaded once from the catalog)."""
        seen = self._dedup.get(key)
        if seen is None:
            rows = (
                self.cursor()
                .execute(
                    "SELECT id_hash, ts FROM _loopml.insert_id_hashes WHERE table_hash = ? AND ts >= ? "
                    "ORDER BY ts",
                    [stable_hash(key), time.time() - self.dedup_window_s],
                )
                .fetchall()
            )
            seen = self._dedup[key] = OrderedDict((r[0], r[1]) for r in rows)
        cutoff = time.time() - self.dedup_window_s
        while seen and (len(seen) > self.dedup_max_ids or next(iter(seen.values())) < cutoff):
            seen.popitem(last=False)
        return seen

    def _append(
        self, project: str, dataset: str, table: str, arrow: pa.Table, key: str, ids: list[int]
    ) -> None:
        cur = self.cursor()
        name = f"__rows_{uuid.uuid4().hex}"
        cols = ", ".join(quote_ident(c) for c in arrow.column_names)
        ts = time.time()
        cur.register(name, arrow)
        try:
            cur.execute("BEGIN")
            try:
                cur.execute(
                    f"INSERT INTO {table_ref(project, dataset, table)} ({cols}) SELECT {cols} FROM {name}"
                )
                if ids:
                    n = len(ids)
                    id_table = pa.table(
                        {
                            "k": pa.repeat(pa.scalar(stable_hash(key), pa.int64()), n),
                            "i": pa.array(ids, pa.int64()),
                            "t": pa.repeat(pa.scalar(ts, pa.float64()), n),
                        }
                    )
                    cur.register(name + "_ids", id_table)
                    cur.execute(f"INSERT INTO _loopml.insert_id_hashes SELECT k, i, t FROM {name}_ids")
                    cur.unregister(name + "_ids")
                cur.execute("COMMIT")
            except duckdb.ConstraintException as exc:
                cur.execute("ROLLBACK")
                raise InvalidArgument(
                    f"Rows violate a constraint of {project}:{dataset}.{table}: {exc}"
                ) from exc
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        finally:
            cur.unregister(name)
        if ids:
            seen = self._seen_ids(key)
            for rid in ids:
                seen[rid] = ts
        self._inserts_since_prune += 1
        if self._inserts_since_prune >= 1000:
            self._inserts_since_prune = 0
            cur.execute("DELETE FROM _loopml.insert_id_hashes WHERE ts < ?", [ts - self.dedup_window_s])

    def read_table_arrow(
        self,
        project: str,
        dataset: str,
        table: str,
        *,
        columns: list[str] | None = None,
        start_index: int = 0,
        max_rows: int | None = None,
    ) -> pa.Table:
        info = self.get_table(project, dataset, table, with_rows=False)
        names = {f["name"].lower(): f["name"] for f in info["schema"]}
        if columns:
            missing = [c for c in columns if c.lower() not in names]
            if missing:
                raise InvalidArgument(f"Unknown field(s) {missing} in table {project}:{dataset}.{table}.")
            select = ", ".join(quote_ident(names[c.lower()]) for c in columns)
        else:
            select = "*"
        sql = f"SELECT {select} FROM {table_ref(info['project'], info['dataset'], info['table'])}"
        params: list[int] = []
        if max_rows is not None:
            sql += " LIMIT ?"
            params.append(int(max_rows))
        if start_index:
            sql += " OFFSET ?"
            params.append(int(start_index))
        return self.cursor().sql(sql, params=params or None).to_arrow_table()

    def write_table_arrow(
        self, project: str, dataset: str, table: str, arrow_table: pa.Table, mode: str = "append"
    ) -> None:
        """Write an Arrow table: "append" (creating the table if needed), "truncate" or "create"."""
        if mode not in ("append", "truncate", "create"):
            raise InvalidArgument(f"Invalid write mode {mode!r}: expected append, truncate or create.")
        check_name("table", table)
        with self._lock:
            ds = self.get_dataset(project, dataset)
            exists = self.table_exists(project, dataset, table)
            if exists and mode == "create":
                raise AlreadyExists(f"Already Exists: Table {project}:{dataset}.{table}")
            ref = table_ref(ds["project"], ds["dataset"], table)
            cur = self.cursor()
            name = f"__write_{uuid.uuid4().hex}"
            cur.register(name, arrow_table)
            try:
                cur.execute("BEGIN")
                try:
                    if exists and mode == "append":
                        cur.execute(f"INSERT INTO {ref} BY NAME SELECT * FROM {name}")
                    else:
                        cur.execute(f"CREATE OR REPLACE TABLE {ref} AS SELECT * FROM {name}")
                        self._write_catalog(
                            cur,
                            ds["project"],
                            ds["dataset"],
                            table,
                            schema_from_arrow(arrow_table.schema),
                            None,
                            None,
                            None,
                        )
                    cur.execute("COMMIT")
                except duckdb.Error as exc:
                    cur.execute("ROLLBACK")
                    raise InvalidArgument(f"Cannot write to {project}:{dataset}.{table}: {exc}") from exc
            finally:
                cur.unregister(name)
            self.invalidate()

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
