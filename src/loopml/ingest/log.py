"""The message log: one SQLite file (WAL, synchronous=FULL) with topics, subscriptions, messages,
cursors, leases and dead letters.

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
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

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
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY, topic_id INTEGER NOT NULL, publish_us INTEGER NOT NULL,
    data BLOB NOT NULL, attrs TEXT, okey TEXT);
CREATE INDEX IF NOT EXISTS messages_topic_seq ON messages (topic_id, seq);
CREATE TABLE IF NOT EXISTS leases (
    sub_id INTEGER NOT NULL, seq INTEGER NOT NULL, attempts INTEGER NOT NULL, due_us INTEGER NOT NULL,
    PRIMARY KEY (sub_id, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT, sub_id INTEGER NOT NULL, seq INTEGER NOT NULL,
    error TEXT NOT NULL, time_us INTEGER NOT NULL);
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
        row = self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM messages").fetchone()
        self._next_seq = int(row[0]) + 1
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._local = threading.local()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.commits = 0
        self.listeners: list[Callable[[set[int]], None]] = []
        self._touched: set[int] = set()

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
        self,
        conn: sqlite3.Connection,
        topic_id: int,
        messages: Iterable[tuple[bytes, str | None, str | None]],
    ) -> list[int]:
        """Append messages to a topic (writer thread only); returns their sequence numbers."""
        publish = now_us()
        first = self._next_seq
        rows = [(first + i, topic_id, publish, d, a, k) for i, (d, a, k) in enumerate(messages)]
        conn.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?)", rows)
        self._next_seq = first + len(rows)
        self._touched.add(topic_id)
        return list(range(first, first + len(rows)))

    # -- readers ----------------------------------------------------------------------------------
    def reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, readonly=True)
            self._local.conn = conn
        return conn

    def read(self, topic_id: int, after_seq: int, limit: int) -> list[Message]:
        rows = (
            self.reader()
            .execute(
                "SELECT seq, topic_id, publish_us, data, attrs, okey FROM messages"
                " WHERE topic_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (topic_id, after_seq, limit),
            )
            .fetchall()
        )
        return [Message(*row) for row in rows]

    def head(self, topic_id: int) -> int:
        row = (
            self.reader().execute("SELECT MAX(seq) FROM messages WHERE topic_id = ?", (topic_id,)).fetchone()
        )
        return int(row[0] or 0)

    def get_messages(self, seqs: list[int]) -> dict[int, Message]:
        out: dict[int, Message] = {}
        conn = self.reader()
        for i in range(0, len(seqs), 500):
            chunk = seqs[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for row in conn.execute(
                f"SELECT seq, topic_id, publish_us, data, attrs, okey FROM messages WHERE seq IN ({marks})",
                chunk,
            ):
                out[row[0]] = Message(*row)
        return out

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """A read on a reader connection (sql is a constant of this package, never user text)."""
        return self.reader().execute(sql, params).fetchall()
