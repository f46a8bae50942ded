"""The message log: one SQLite file (WAL, synchronous=FULL) with topics, subscriptions, messages,
cursors, leases and dead letters.

Messages are stored in segments: one row per published batch holds its messages' data
concatenated (with their sizes), so a request of 1,000 events costs one B-tree insert. Every
message still has its own sequence number (`first_seq + i`), which is also its message id.

Every write goes through one writer thread. Jobs queued while a commit is running are run
together in the next transaction (group commit): a publish is acknowledged only after the
transaction holding its messages has been committed and fsync'd, and concurrent publishes share
that fsync. Readers use their own connections (WAL lets them run beside the writer).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson

from loopml.errors import Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (
    topic_id INTEGER PRIMARY KEY AUTOINCREMENT,
    project TEXT NOT NULL, name TEXT NOT NULL, labels TEXT NOT NULL DEFAULT '{}',
    create_us INTEGER NOT NULL, UNIQUE (project, name));
CREATE TABLE IF NOT EXISTS subscriptions (
    sub_id INTEGER PRIMARY KEY AUTOINCREMENT,
    project TEXT NOT NULL, name TEXT NOT NULL, topic_id INTEGER, topic TEXT NOT NULL,
    config TEXT NOT NULL, cursor INTEGER NOT NULL, create_us INTEGER NOT NULL,
    UNIQUE (project, name));
CREATE TABLE IF NOT EXISTS segments (
    first_seq INTEGER PRIMARY KEY, topic_id INTEGER NOT NULL, n INTEGER NOT NULL,
    publish_us INTEGER NOT NULL, data BLOB NOT NULL, sizes BLOB NOT NULL, attrs TEXT, okeys TEXT);
CREATE INDEX IF NOT EXISTS segments_topic ON segments (topic_id, first_seq);
CREATE TABLE IF NOT EXISTS leases (
    sub_id INTEGER NOT NULL, seq INTEGER NOT NULL, attempts INTEGER NOT NULL, due_us INTEGER NOT NULL,
    PRIMARY KEY (sub_id, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT, sub_id INTEGER NOT NULL, seq INTEGER NOT NULL,
    error TEXT NOT NULL, time_us INTEGER NOT NULL,
    publish_us INTEGER NOT NULL, data BLOB NOT NULL, attrs TEXT, okey TEXT);
CREATE INDEX IF NOT EXISTS dead_letters_sub ON dead_letters (sub_id, id);
"""


def now_us() -> int:
    return int(time.time() * 1_000_000)


@dataclass(frozen=True)
class Message:
    seq: int
    topic_id: int
    publish_us: int
    data: bytes
    attrs: str | None
    okey: str | None

    @property
    def message_id(self) -> str:
        return str(self.seq)


@dataclass
class _Job:
    fn: Callable[[sqlite3.Connection], Any]
    future: Future[Any]
    size: int = 1


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=30, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=30000")
    if not readonly:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    return conn


class MessageLog:
    """The durable store behind topics and subscriptions."""

    def __init__(self, path: Path, *, max_batch: int = 20_000) -> None:
        self.path = path
        self.max_batch = max_batch
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = connect(path)
        self._conn.executescript(_SCHEMA)
        self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        row = self._conn.execute(
            "SELECT MAX(COALESCE((SELECT MAX(first_seq + n) FROM segments), 1),"
            " COALESCE((SELECT value FROM meta WHERE key = 'next_seq'), 1))"
        ).fetchone()
        self._next_seq = int(row[0])
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._local = threading.local()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.commits = 0
        self.listeners: list[Callable[[set[int]], None]] = []
        self._touched: set[int] = set()

    @property
    def next_seq(self) -> int:
        """The sequence number the next appended message gets (writer thread's view)."""
        return self._next_seq

    def keep_next_seq(self, conn: sqlite3.Connection) -> None:
        """Record the next sequence number before deleting segments, so ids are never reused."""
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('next_seq', ?)", (self._next_seq,))

    # -- writer ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ingest-log-writer", daemon=True)
            self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None
        self._closed = True
        self._conn.close()

    def submit(self, fn: Callable[[sqlite3.Connection], T], size: int = 1) -> Future[T]:
        """Run `fn(conn)` inside the next write transaction; the future resolves after commit."""
        if self._closed:
            raise Unavailable("The message log is closed (server shutting down).")
        future: Future[T] = Future()
        self._queue.put(_Job(fn, future, size))
        if self._thread is None:
            self.start()
        return future

    async def run(self, fn: Callable[[sqlite3.Connection], T], size: int = 1) -> T:
        return await asyncio.wrap_future(self.submit(fn, size))

    def run_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return self.submit(fn).result()

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            jobs = [first]
            total = first.size
            while total < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                jobs.append(nxt)
                total += nxt.size
            self._commit(jobs)

    def _commit(self, jobs: list[_Job]) -> None:
        conn = self._conn
        results: list[tuple[_Job, Any, BaseException | None]] = []
        start_seq = self._next_seq
        self._touched = set()
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in jobs:
                conn.execute("SAVEPOINT job")
                try:
                    value = job.fn(conn)
                except Exception as exc:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    results.append((job, None, exc))
                else:
                    conn.execute("RELEASE job")
                    results.append((job, value, None))
            conn.execute("COMMIT")
            self.commits += 1
        except Exception as exc:  # the commit itself failed: nothing of this batch is durable
            log.exception("message log commit failed")
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self._next_seq = start_seq
            err = Unavailable(f"The message log could not commit: {exc}. Retry the request.")
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(err)
            return
        for job, value, error in results:
            if job.future.done():
                continue
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(value)
        if self._touched:
            for listener in self.listeners:
                try:
                    listener(self._touched)
                except Exception:
                    log.exception("message log listener failed")

    # -- operations run inside the writer ---------------------------------------------------------
    def append(
        self, conn: sqlite3.Connection, topic_id: int, messages: list[tuple[bytes, str | None, str | None]]
    ) -> list[int]:
        """Append messages to a topic as one segment (writer thread only); returns their sequence numbers."""
        first, n = self._next_seq, len(messages)
        datas = [m[0] for m in messages]
        attrs = [m[1] for m in messages]
        okeys = [m[2] for m in messages]
        conn.execute(
            "INSERT INTO segments VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                first,
                topic_id,
                n,
                now_us(),
                b"".join(datas),
                struct.pack(f"<{n}I", *map(len, datas)),
                orjson.dumps(attrs).decode() if any(attrs) else None,
                orjson.dumps(okeys).decode() if any(okeys) else None,
            ),
        )
        self._next_seq = first + n
        self._touched.add(topic_id)
        return list(range(first, first + n))

    # -- readers (any connection) -----------------------------------------------------------------
    def reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, readonly=True)
            self._local.conn = conn
        return conn

    def read(
        self, topic_id: int, after_seq: int, limit: int, conn: sqlite3.Connection | None = None
    ) -> list[Message]:
        """Up to `limit` messages of a topic with a sequence above `after_seq`, in order."""
        conn = conn or self.reader()
        out: list[Message] = []
        head = conn.execute(
            f"SELECT {_SEG} FROM segments WHERE topic_id = ? AND first_seq <= ? ORDER BY first_seq DESC LIMIT 1",
            (topic_id, after_seq),
        ).fetchone()
        if head is not None:
            out.extend(_decode(head, after_seq, limit))
        if len(out) < limit:
            cur = conn.execute(
                f"SELECT {_SEG} FROM segments WHERE topic_id = ? AND first_seq > ? ORDER BY first_seq",
                (topic_id, after_seq),
            )
            for row in cur:
                out.extend(_decode(row, after_seq, limit - len(out)))
                if len(out) >= limit:
                    break
            cur.close()
        return out

    def get_messages(self, seqs: list[int], conn: sqlite3.Connection | None = None) -> dict[int, Message]:
        """Messages by sequence number (those that still exist)."""
        conn = conn or self.reader()
        found: dict[int, Message] = {}
        for seq in sorted(set(seqs)):
            if seq in found:
                continue
            row = conn.execute(
                f"SELECT {_SEG} FROM segments WHERE first_seq <= ? ORDER BY first_seq DESC LIMIT 1", (seq,)
            ).fetchone()
            if row is None or seq >= row[0] + row[2]:
                continue
            for msg in _decode(row, seq - 1, 1_000_000):
                found[msg.seq] = msg
        return {s: found[s] for s in seqs if s in found}

    def backlog(self, topic_id: int, after_seq: int) -> int:
        """How many messages of a topic have a sequence above `after_seq`."""
        conn = self.reader()
        row = conn.execute(
            "SELECT first_seq, n FROM segments WHERE topic_id = ? AND first_seq <= ?"
            " ORDER BY first_seq DESC LIMIT 1",
            (topic_id, after_seq),
        ).fetchone()
        partial = max(0, row[0] + row[1] - 1 - after_seq) if row else 0
        rest = conn.execute(
            "SELECT COALESCE(SUM(n), 0) FROM segments WHERE topic_id = ? AND first_seq > ?",
            (topic_id, after_seq),
        ).fetchone()[0]
        return int(partial + rest)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """A read on a reader connection (sql is a constant of this package, never user text)."""
        return self.reader().execute(sql, params).fetchall()


_SEG = "first_seq, topic_id, n, publish_us, data, sizes, attrs, okeys"


def _decode(row: tuple[Any, ...], after_seq: int, limit: int) -> list[Message]:
    """The messages of one segment row with a sequence above `after_seq` (at most `limit`)."""
    first, topic_id, n, publish_us, data, sizes_blob, attrs_json, okeys_json = row
    start = max(0, after_seq + 1 - first)
    stop = min(n, start + limit)
    if start >= stop:
        return []
    sizes = struct.unpack(f"<{n}I", sizes_blob)
    attrs = orjson.loads(attrs_json) if attrs_json else None
    okeys = orjson.loads(okeys_json) if okeys_json else None
    offset = sum(sizes[:start])
    out = []
    for i in range(start, stop):
        size = sizes[i]
        out.append(
            Message(
                first + i,
                topic_id,
                publish_us,
                bytes(data[offset : offset + size]),
                attrs[i] if attrs else None,
                okeys[i] if okeys else None,
            )
        )
        offset += size
    return out
