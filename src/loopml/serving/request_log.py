"""Request/response logging to the warehouse (Vertex `predictRequestResponseLoggingConfig`, §11).

The serving runtime draws the sample (`samplingRate`) and calls `RequestLogger.submit(...)` for the
requests it keeps. `submit` never blocks and never raises: it puts the raw bytes on a bounded
in-memory queue (when the queue is full the entry is dropped and counted). A background thread
drains the queue in batches, turns each entry into one row of Vertex's schema and appends each
destination's rows in one Arrow write. On a clean shutdown (`stop`, registered on
`platform.on_stop`) everything still queued is written before the warehouse closes.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pyarrow as pa

from loopml.errors import InvalidArgument
from loopml.serving.batch.spec import BqRef, parse_bq_uri, sanitize_name

log = logging.getLogger(__name__)

DEFAULT_TABLE = "request_response_logging"
SCHEMA_FIELDS: list[dict[str, Any]] = [
    {"name": "endpoint", "type": "STRING", "mode": "NULLABLE"},
    {"name": "deployed_model_id", "type": "STRING", "mode": "NULLABLE"},
    {"name": "logging_time", "type": "TIMESTAMP", "mode": "NULLABLE"},
    {"name": "request_id", "type": "NUMERIC", "mode": "NULLABLE"},
    {"name": "request_payload", "type": "STRING", "mode": "REPEATED"},
    {"name": "response_payload", "type": "STRING", "mode": "REPEATED"},
]
ARROW_SCHEMA = pa.schema(
    [
        ("endpoint", pa.string()),
        ("deployed_model_id", pa.string()),
        ("logging_time", pa.timestamp("us", tz="UTC")),
        ("request_id", pa.decimal128(38, 9)),
        ("request_payload", pa.list_(pa.string())),
        ("response_payload", pa.list_(pa.string())),
    ]
)


def destination(logging_config: dict[str, Any], endpoint_name: str, display_name: str) -> BqRef:
    """Where an endpoint's log rows go: `bq://p.d.t`, `bq://p.d` (default table) or `bq://p` (default dataset)."""
    endpoint_id = endpoint_name.rsplit("/", 1)[-1]
    uri = ((logging_config or {}).get("bigqueryDestination") or {}).get("outputUri") or ""
    if uri:
        ref = parse_bq_uri(uri, "predictRequestResponseLoggingConfig.bigqueryDestination.outputUri")
    else:
        parts = endpoint_name.split("/")
        if len(parts) < 2 or parts[0] != "projects":
            raise InvalidArgument(f"Cannot derive a logging project from endpoint {endpoint_name!r}.")
        ref = BqRef(parts[1])
    dataset = ref.dataset or f"logging_{sanitize_name(display_name)}_{sanitize_name(endpoint_id)}"
    return BqRef(ref.project, dataset, ref.table or DEFAULT_TABLE)


def validate_logging_config(config: Any) -> None:
    """For the endpoint service: a clear 400 for a bad `predictRequestResponseLoggingConfig`."""
    if config in (None, {}):
        return
    if not isinstance(config, dict):
        raise InvalidArgument("predictRequestResponseLoggingConfig must be an object.")
    rate = config.get("samplingRate", 1.0)
    if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 < float(rate) <= 1:
        raise InvalidArgument("predictRequestResponseLoggingConfig.samplingRate must be in (0, 1].")
    uri = (config.get("bigqueryDestination") or {}).get("outputUri")
    if uri:
        parse_bq_uri(uri, "predictRequestResponseLoggingConfig.bigqueryDestination.outputUri")


@dataclass(frozen=True)
class _Entry:
    dest: BqRef
    endpoint: str
    deployed_model_id: str
    logged_at: datetime
    request: bytes
    response: bytes


def _payload(body: bytes, key: str) -> list[str]:
    """One JSON string per instance (request) or prediction (response); the raw body otherwise."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return [body.decode("utf-8", errors="replace")]
    items = parsed.get(key) if isinstance(parsed, dict) else None
    if isinstance(items, list):
        return [orjson.dumps(item).decode() for item in items]
    return [body.decode("utf-8", errors="replace")]


class RequestLogger:
    def __init__(
        self, warehouse: Any, *, max_queue: int = 10_000, flush_s: float = 0.5, batch_rows: int = 2000
    ):
        self._warehouse = warehouse  # the Warehouse, or a callable returning it
        self._queue: queue.Queue[_Entry | None] = queue.Queue(maxsize=max(1, max_queue))
        self.flush_s = flush_s
        self.batch_rows = batch_rows
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._ready: set[BqRef] = set()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending = 0
        self.submitted = 0
        self.written = 0
        self.dropped = 0
        self.failed = 0
        self._last_drop_log = 0.0

    # -- hot path ------------------------------------------------------------------------------
    def submit(
        self, endpoint_spec: Any, deployed_model_id: str, request_bytes: bytes, response_bytes: bytes
    ) -> bool:
        """Queue one logged request; never blocks, never raises. False if it was not queued."""
        try:
            config = getattr(endpoint_spec, "logging_config", None) or {}
            if not config.get("enabled"):
                return False
            dest = destination(config, endpoint_spec.endpoint_name, endpoint_spec.display_name)
            entry = _Entry(
                dest=dest,
                endpoint=endpoint_spec.endpoint_name,
                deployed_model_id=str(deployed_model_id),
                logged_at=datetime.now(UTC),
                request=bytes(request_bytes),
                response=bytes(response_bytes),
            )
        except Exception as exc:
            with self._lock:
                self.failed += 1
            log.warning("request log entry refused: %s", exc)
            return False
        with self._lock:
            try:
                self._queue.put_nowait(entry)
            except queue.Full:
                self.dropped += 1
                if time.monotonic() - self._last_drop_log > 10:
                    self._last_drop_log = time.monotonic()
                    log.warning("request log queue full: %s entries dropped so far", self.dropped)
                return False
            self.submitted += 1
            self._pending += 1
        return True

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "submitted": self.submitted,
                "written": self.written,
                "dropped": self.dropped,
                "failed": self.failed,
                "queued": self._pending,
            }

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="loopml-request-log", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Write everything queued, then stop the writer thread."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
        while not self._queue.empty():  # no thread (never started, or it gave up): write inline
            self._write_batch(self._drain([]))

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued entry has been written (or failed)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    # -- writer --------------------------------------------------------------------------------
    def _drain(self, batch: list[_Entry]) -> list[_Entry]:
        while len(batch) < self.batch_rows:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                batch.append(item)
        return batch

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=self.flush_s)
            except queue.Empty:
                if self._stopping.is_set():
                    return
                continue
            if not self._stopping.is_set():
                time.sleep(min(0.05, self.flush_s))  # let a burst accumulate into one write
            self._write_batch(self._drain([first] if first is not None else []))

    def _write_batch(self, batch: list[_Entry]) -> None:
        if not batch:
            return
        groups: dict[BqRef, list[_Entry]] = {}
        for entry in batch:
            groups.setdefault(entry.dest, []).append(entry)
        for dest, entries in groups.items():
            ok = self._write(dest, entries)
            with self._idle:
                if ok:
                    self.written += len(entries)
                else:
                    self.failed += len(entries)
                self._pending -= len(entries)
                self._idle.notify_all()

    def _write(self, dest: BqRef, entries: list[_Entry]) -> bool:
        warehouse = self._warehouse() if callable(self._warehouse) else self._warehouse
        if warehouse is None:
            log.warning("request log: no warehouse; %s entries lost", len(entries))
            return False
        table = pa.table(
            {
                "endpoint": [e.endpoint for e in entries],
                "deployed_model_id": [e.deployed_model_id for e in entries],
                "logging_time": [e.logged_at for e in entries],
                "request_id": [Decimal(secrets.randbelow(2**63 - 1) + 1) for _ in entries],
                "request_payload": [_payload(e.request, "instances") for e in entries],
                "response_payload": [_payload(e.response, "predictions") for e in entries],
            },
            schema=ARROW_SCHEMA,
        )
        assert dest.dataset is not None and dest.table is not None
        for attempt in range(3):
            try:
                if dest not in self._ready:
                    warehouse.create_dataset(dest.project, dest.dataset, exists_ok=True)
                    warehouse.create_table(
                        dest.project, dest.dataset, dest.table, SCHEMA_FIELDS, exists_ok=True
                    )
                    self._ready.add(dest)
                warehouse.write_table_arrow(dest.project, dest.dataset, dest.table, table, mode="append")
                return True
            except Exception as exc:
                self._ready.discard(dest)
                log.warning("request log write to %s failed (attempt %s): %s", dest.uri(), attempt + 1, exc)
                time.sleep(0.2 * (attempt + 1))
        return False
