"""The message log: one SQLite file (WAL, synchronous=FULL) with topics, subscriptions, messages,
cursors, leases and dead letters.

Messages are stored in segments: one row holds the data of many messages concatenated (with
their sizes), so a request of 1,000 events costs one B-tree insert. Every message still has its
own sequence number (`first_seq + i`), which is also its message id.

Every write goes through one writer thread. Jobs queued while a commit is running are run
together in the next transaction (group commit): a publish is acknowledged only after the
transaction holding its messages has been committed and fsync'd, and concurrent publishes share
that fsync. Appends to the same topic that are next to each other in a group commit become one
segment row (a few statements per commit however many requests it carries, which also keeps the
writer's GIL hand-offs few). Results go back to asyncio callers in one loop callback per commit.
Readers use their own connections (WAL lets them run beside the writer).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from loopml.errors import Unavailable
from loopml.ingest.segments import (
    MAX_PARAMS,
    SEG,
    SEGMENT_BYTES,
    SEGMENT_MESSAGES,
    Message,
    decode,
    encode,
    insert_sql,
    now_us,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
SCHEMA_VERSION = 1
PAGE_SIZE = 16384
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


Batch = list[tuple[bytes, str | None, str | None]]
"""Messages to append: (data, attributes JSON or None, ordering key or None)."""
Result = tuple["_Job", Any, BaseException | None]


@dataclass
class _Job:
    fn: Callable[[sqlite3.Connection], Any] | None
    future: Future[Any] | asyncio.Future[Any]
    size: int = 1
    loop: asyncio.AbstractEventLoop | None = None  # set: `future` is an asyncio future of this loop
    topic_id: int = 0
    datas: list[bytes] | None = None  # an append (fn is None): merged with neighbouring appends
    attrs: list[str | None] | None = None
    okeys: list[str | None] | None = None


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=30, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=30000")
    if not readonly:
        # 16 KiB pages (a new file only): segments are large blobs stored in overflow pages, and
        # a commit of 1,000 events costs ~40 % less than with SQLite's default 4 KiB pages.
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
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

    def _put(self, job: _Job) -> None:
        if self._closed:
            raise Unavailable("The message log is closed (server shutting down).")
        self._queue.put(job)
        if self._thread is None:
            self.start()

    def submit(self, fn: Callable[[sqlite3.Connection], T], size: int = 1) -> Future[T]:
        """Run `fn(conn)` inside the next write transaction; the future resolves after commit."""
        future: Future[T] = Future()
        self._put(_Job(fn, future, size))
        return future

    async def run(self, fn: Callable[[sqlite3.Connection], T], size: int = 1) -> T:
        """`fn(conn)` inside the next write transaction; returns its value once committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._put(_Job(fn, future, size, loop))
        return await future

    async def publish(
        self,
        topic_id: int,
        datas: list[bytes],
        attrs: list[str | None] | None = None,
        okeys: list[str | None] | None = None,
    ) -> int:
        """Append messages to a topic; returns the first one's sequence number once durable.

        `datas` are the messages' data, `attrs` their attributes as JSON and `okeys` their
        ordering keys (None: none at all). The messages get consecutive sequence numbers.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        self._put(_Job(None, future, len(datas), loop, topic_id, datas, attrs, okeys))
        return await future

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
        if all(job.datas is not None for job in jobs):
            self._commit_appends(jobs)
            return
        conn = self._conn
        results: list[Result] = []
        start_seq = self._next_seq
        self._touched = set()
        try:
            conn.execute("BEGIN IMMEDIATE")
            i = 0
            while i < len(jobs):
                if jobs[i].datas is not None:
                    i = self._append_run(conn, jobs, i, results)
                    continue
                job = jobs[i]
                i += 1
                conn.execute("SAVEPOINT job")
                try:
                    assert job.fn is not None
                    value = job.fn(conn)
                except Exception as exc:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    results.append((job, None, exc))
                else:
                    conn.execute("RELEASE job")
                    results.append((job, value, None))
            conn.execute("COMMIT")
        except Exception as exc:  # the commit itself failed: nothing of this batch is durable
            log.exception("message log commit failed")
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self._next_seq = start_seq
            self._fail(jobs, exc)
            return
        self._done(results)

    def _commit_appends(self, jobs: list[_Job]) -> None:
        """A group commit of appends only: one multi-row INSERT, committed by itself.

        One statement instead of BEGIN, savepoints and COMMIT: each statement releases the GIL
        and must win it back from the busy event loop thread, which is what bounds the commit
        rate under load.
        """
        results: list[Result] = []
        rows: list[tuple[Any, ...]] = []
        seq = self._next_seq
        self._touched = set()
        i = 0
        while i < len(jobs):
            i, seq = self._merge(jobs, i, seq, rows, results)
        try:
            if len(rows) * 8 <= MAX_PARAMS:
                params = [v for row in rows for v in row]
                self._conn.execute(insert_sql(len(rows)), params)  # autocommit: atomic and durable
            else:
                with self._conn:  # a very large group commit: one transaction of several statements
                    self._conn.execute("BEGIN IMMEDIATE")
                    self._conn.executemany(insert_sql(1), rows)
        except Exception as exc:
            log.exception("message log commit failed")
            self._fail(jobs, exc)
            return
        self._next_seq = seq
        self._done(results)

    def _merge(
        self, jobs: list[_Job], i: int, seq: int, rows: list[tuple[Any, ...]], results: list[Result]
    ) -> tuple[int, int]:
        """Segment rows for the appends to one topic that start at jobs[i]: (next index, next seq)."""
        topic_id = jobs[i].topic_id
        j = i
        while j < len(jobs) and jobs[j].datas is not None and jobs[j].topic_id == topic_id:
            j += 1
        run = jobs[i:j]
        if len(run) == 1:
            datas: list[bytes] = run[0].datas or []
            attrs, okeys = run[0].attrs, run[0].okeys
        else:
            datas = [d for job in run for d in job.datas or ()]
            attrs = _column(run, "attrs")
            okeys = _column(run, "okeys")
        rows.extend(encode(seq, topic_id, datas, attrs, okeys))
        for job in run:
            results.append((job, seq, None))
            seq += len(job.datas or ())
        self._touched.add(topic_id)
        return j, seq

    def _append_run(self, conn: sqlite3.Connection, jobs: list[_Job], i: int, results: list[Result]) -> int:
        """Inside a transaction: the appends to one topic that start at jobs[i]; returns the next index."""
        rows: list[tuple[Any, ...]] = []
        done: list[Result] = []
        touched = set(self._touched)
        j, seq = self._merge(jobs, i, self._next_seq, rows, done)
        conn.execute("SAVEPOINT job")
        try:
            conn.executemany(insert_sql(1), rows)
        except Exception as exc:  # nothing of these appends stays; the rest of the batch goes on
            conn.execute("ROLLBACK TO job")
            conn.execute("RELEASE job")
            self._touched = touched
            results.extend((job, None, exc) for job in jobs[i:j])
            return j
        conn.execute("RELEASE job")
        self._next_seq = seq
        results.extend(done)
        return j

    def _fail(self, jobs: list[_Job], exc: BaseException) -> None:
        err = Unavailable(f"The message log could not commit: {exc}. Retry the request.")
        self._settle([(job, None, err) for job in jobs])

    def _done(self, results: list[Result]) -> None:
        self.commits += 1
        self._settle(results)
        if self._touched:
            for listener in self.listeners:
                try:
                    listener(self._touched)
                except Exception:
                    log.exception("message log listener failed")

    def _settle(self, results: list[Result]) -> None:
        """Hand results to their futures: one callback per event loop, others directly."""
        by_loop: dict[asyncio.AbstractEventLoop, list[Result]] = {}
        for item in results:
            job = item[0]
            if job.loop is not None:
                by_loop.setdefault(job.loop, []).append(item)
            elif not job.future.done():
                if item[2] is not None:
                    job.future.set_exception(item[2])
                else:
                    job.future.set_result(item[1])
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, items)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

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
            f"SELECT {SEG} FROM segments WHERE topic_id = ? AND first_seq <= ? ORDER BY first_seq DESC LIMIT 1",
            (topic_id, after_seq),
        ).fetchone()
        if head is not None:
            out.extend(decode(head, after_seq, limit))
        if len(out) < limit:
            cur = conn.execute(
                f"SELECT {SEG} FROM segments WHERE topic_id = ? AND first_seq > ? ORDER BY first_seq",
                (topic_id, after_seq),
            )
            for row in cur:
                out.extend(decode(row, after_seq, limit - len(out)))
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
                f"SELECT {SEG} FROM segments WHERE first_seq <= ? ORDER BY first_seq DESC LIMIT 1", (seq,)
            ).fetchone()
            if row is None or seq >= row[0] + row[2]:
                continue
            for msg in decode(row, seq - 1, 1_000_000):
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


def _resolve(items: list[Result]) -> None:
    """On the event loop: complete the futures of one commit (skipping cancelled waiters)."""
    for job, value, error in items:
        future = job.future
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)


def _column(run: list[_Job], name: str) -> list[str | None] | None:
    """The attributes (or ordering keys) of merged appends, one per message; None if none has any."""
    if not any(getattr(job, name) for job in run):
        return None
    out: list[str | None] = []
    for job in run:
        values = getattr(job, name)
        out.extend(values if values else [None] * len(job.datas or ()))
    return out


__all__ = ["SEGMENT_BYTES", "SEGMENT_MESSAGES", "Message", "MessageLog", "connect", "now_us"]
