"""Rows: streaming inserts (coercion, insertId de-duplication), Arrow reads and writes."""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from typing import Any

import duckdb
import pyarrow as pa

from loopml.errors import AlreadyExists, InvalidArgument
from loopml.warehouse.base import check_name, paused_gc, stable_hash, table_ref
from loopml.warehouse.catalog import CatalogMixin
from loopml.warehouse.coerce import stopped_error
from loopml.warehouse.schema import (
    quote_ident,
    schema_from_arrow,
)

log = logging.getLogger(__name__)


class RowsMixin(CatalogMixin):
    """insert_rows, read_table_arrow, write_table_arrow."""

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
