"""Warehouse foundations: the DuckDB file, per-thread connections, locks, caches, names, hooks.

Names: dataset `ds` of project `p` is the DuckDB schema `"p.ds"`; table `t` is `"p.ds"."t"`.
The BigQuery schema of each table (types as written, modes, descriptions, partitioning) is kept
in the catalog schema `_loopml`, next to streaming-insert ids. DuckDB matches names without
regard to case, so `DS` and `ds` are the same dataset.

Threads: each thread gets its own DuckDB cursor (a connection to the same database); writes
(inserts, DDL, DML) are serialised by one re-entrant lock, reads run concurrently. Caches (table
existence and schemas) have their own small lock and are dropped after every DDL.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from loopml.artifacts import ArtifactStore
from loopml.errors import FailedPrecondition, InvalidArgument, InvalidQuery
from loopml.refs import PROJECT_RE  # one project-id rule for Vertex and BigQuery names
from loopml.warehouse.coerce import RowConverter
from loopml.warehouse.schema import (
    Field,
    quote_ident,
)
from loopml.warehouse.types import StatementHandler, TableFunction

log = logging.getLogger(__name__)


DATASET_RE = re.compile(r"^[A-Za-z0-9_]{1,1024}\Z")
TABLE_RE = re.compile(r"^[A-Za-z0-9_-]{1,1024}\Z")
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


class WarehouseBase:
    """The DuckDB connection, locks, caches and extension hooks shared by the warehouse parts."""

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
        try:
            self._db = duckdb.connect(str(path))
        except duckdb.IOException as exc:  # another process (a second server on this home) holds the file
            if "lock" not in str(exc).lower():
                raise
            pid = re.search(r"\(PID (\d+)\)", str(exc))
            holder = f" (PID {pid.group(1)})" if pid else ""
            raise FailedPrecondition(
                f"The warehouse file {path} is in use by another process{holder}: is another loopml server "
                "running with this home? Stop it, or give this server its own --home (LOOPML_HOME)."
            ) from None
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

    def invalidate(self) -> None:
        """Forget cached table schemas and existence (call after DDL has committed)."""
        with self._cache_lock:
            self._generation += 1
            self._entries.clear()
            self._exists.clear()
