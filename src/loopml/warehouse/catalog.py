"""Datasets and tables: DuckDB schemas and tables plus their BigQuery metadata in `_loopml`."""

from __future__ import annotations

import logging
from typing import Any

import duckdb
import orjson

from loopml.errors import AlreadyExists, InvalidArgument, NotFound
from loopml.warehouse.base import (
    PARTITION_TYPES,
    WarehouseBase,
    _TableEntry,
    check_name,
    now_ms,
    stable_hash,
    table_ref,
)
from loopml.warehouse.schema import (
    Field,
    add_columns,
    column_ddl,
    legacy_type,
    normalize_schema,
    quote_ident,
    schema_from_arrow,
)

log = logging.getLogger(__name__)


class CatalogMixin(WarehouseBase):
    """create/get/list/patch/delete of datasets and tables."""

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
            info["schema"] = _sql_table_schema(self.cursor(), ref)
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
        self._write_catalog(cur, project, dataset, table, _sql_table_schema(cur, ref), None, None, None)
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


def _sql_table_schema(cur: duckdb.DuckDBPyConnection, ref: str) -> list[Field]:
    """The BigQuery schema of a table made by SQL, from its DuckDB types (JSON columns stay JSON,
    which Arrow would report as plain strings)."""
    rel = cur.sql(f"SELECT * FROM {ref} LIMIT 0")
    schema = schema_from_arrow(rel.to_arrow_table().schema)
    for field, duck_type in zip(schema, rel.dtypes, strict=True):
        if str(duck_type) in ("JSON", "JSON[]"):
            field["type"] = "JSON"
    return schema
