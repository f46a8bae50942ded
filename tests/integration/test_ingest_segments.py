"""How the message log writes group commits: merged and split segments, mixed transactions, on real SQLite."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import orjson
import pytest

from loopml.ingest import IngestService
from loopml.ingest.log import SEGMENT_MESSAGES, MessageLog

P = "proj"


def test_concurrent_appends_share_segments_and_keep_every_field(tmp_path: Path) -> None:
    async def body() -> None:
        svc = IngestService(tmp_path / "ingest.db")
        await svc.start()
        await svc.create_topic(P, "tee")
        await svc.create_topic(P, "other")
        tid = svc.topic_id(P, "tee")
        start = svc.log.next_seq - 1

        def message(i: int) -> tuple[bytes, str | None, str | None]:
            attrs = orjson.dumps({"k": str(i)}).decode() if i % 3 == 0 else None
            return orjson.dumps({"i": i}), attrs, (f"key-{i}" if i % 5 == 0 else None)

        big = [message(10_000 + j) for j in range(2 * SEGMENT_MESSAGES + 7)]
        calls = [[message(i)] for i in range(200)] + [big] + [[message(500 + i)] for i in range(20)]
        ids = await asyncio.gather(
            *[svc.publish(P, "tee", batch) for batch in calls], svc.publish(P, "other", [message(-1)])
        )
        for batch, got in zip(calls, ids, strict=False):
            assert [int(x) for x in got] == list(range(int(got[0]), int(got[0]) + len(batch)))
        stored = svc.log.read(tid, start, 100_000)
        by_seq = {m.seq: m for m in stored}
        assert len(stored) == sum(len(b) for b in calls)
        for batch, got in zip(calls, ids, strict=False):
            for (data, attrs, okey), mid in zip(batch, got, strict=True):
                m = by_seq[int(mid)]
                assert (m.data, m.attrs, m.okey) == (data, attrs, okey)
        sizes = [n for (n,) in svc.log.query("SELECT n FROM segments WHERE topic_id = ?", (tid,))]
        assert max(sizes) <= SEGMENT_MESSAGES  # the big publish was split
        assert len(sizes) < len(calls) + 2  # single-message publishes shared segment rows
        assert svc.log.commits < len(calls)
        other = svc.log.read(svc.topic_id(P, "other"), 0, 10)
        assert [m.data for m in other] == [orjson.dumps({"i": -1})]
        await svc.stop()

    asyncio.run(body())


def test_appends_and_other_jobs_in_one_transaction(tmp_path: Path) -> None:
    """A commit mixing appends with other writes: a failing job rolls back alone; ids stay dense."""
    log = MessageLog(tmp_path / "ingest.db")
    gate = threading.Event()
    entered = threading.Event()

    def hold(conn: sqlite3.Connection) -> str:
        entered.set()
        gate.wait(30)
        return "held"

    def failing(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO meta VALUES ('x', 1)")
        raise ValueError("this job fails")

    async def body() -> None:
        blocker = asyncio.ensure_future(log.run(hold))
        await asyncio.to_thread(entered.wait, 30)  # the writer is inside a commit: the rest queue up
        first = asyncio.ensure_future(log.publish(1, [b"a", b"b"], ["{}", None], None))
        bad = asyncio.ensure_future(log.run(failing))
        second = asyncio.ensure_future(log.publish(1, [b"c"]))
        other = asyncio.ensure_future(log.publish(2, [b"d"], None, ["key"]))
        meta = asyncio.ensure_future(
            log.run(lambda c: c.execute("INSERT INTO meta VALUES ('y', 2)").rowcount)
        )
        await asyncio.sleep(0.05)
        gate.set()
        assert await blocker == "held"
        assert await first == 1 and await second == 3 and await other == 4
        with pytest.raises(ValueError, match="this job fails"):
            await bad
        assert await meta == 1
        assert log.query("SELECT key FROM meta ORDER BY key") == [("y",)]
        assert [(m.seq, m.data, m.attrs) for m in log.read(1, 0, 10)] == [
            (1, b"a", "{}"),
            (2, b"b", None),
            (3, b"c", None),
        ]
        assert [(m.seq, m.okey) for m in log.read(2, 0, 10)] == [(4, "key")]
        assert await log.publish(1, [b"e"]) == 5
        log.close()

    asyncio.run(body())
    reopened = MessageLog(tmp_path / "ingest.db")
    assert reopened.next_seq == 6
    assert [m.data for m in reopened.read(1, 0, 10)] == [b"a", b"b", b"c", b"e"]
    reopened.close()
