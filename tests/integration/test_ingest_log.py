"""The message log and subscriptions on real SQLite and a real DuckDB warehouse (no server)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from loopml.errors import InvalidArgument, NotFound
from loopml.ingest import IngestService
from loopml.warehouse import Warehouse

P = "proj"


def run(coro_fn: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(coro_fn())  # type: ignore[arg-type]


async def wait_until(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def msg(obj: Any, **attrs: str) -> tuple[bytes, str | None, str | None]:
    return orjson.dumps(obj), orjson.dumps(attrs).decode() if attrs else None, None


def test_group_commit_ids_are_unique_ordered_and_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "ingest.db"

    async def first() -> list[list[str]]:
        svc = IngestService(path)
        await svc.start()
        await svc.create_topic(P, "events")
        results = await asyncio.gather(
            *[svc.publish(P, "events", [msg({"i": i}), msg({"i": -i})]) for i in range(300)]
        )
        assert svc.log.commits < 300  # concurrent publishes shared transactions
        await svc.stop()
        return results

    results = run(first)
    ids = [int(x) for pair in results for x in pair]
    assert len(set(ids)) == 600
    assert all(int(b) == int(a) + 1 for a, b in results)  # one request's messages are contiguous

    async def second() -> None:
        svc = IngestService(path)
        await svc.start()
        assert svc.get_topic(P, "events")["name"] == f"projects/{P}/topics/events"
        tid = svc.topic_id(P, "events")
        rows = svc.log.read(tid, 0, 10_000)
        assert len(rows) == 600 and [r.seq for r in rows] == sorted(ids)
        (new_id,) = await svc.publish(P, "events", [msg("after")])
        assert int(new_id) > max(ids)  # sequence continues, never reused
        await svc.stop()

    run(second)


def test_pull_leases_acks_and_redelivery_across_restart(tmp_path: Path) -> None:
    path = tmp_path / "ingest.db"

    async def first() -> None:
        svc = IngestService(path)
        await svc.start()
        await svc.create_topic(P, "t-pull")
        await svc.create_subscription(P, "s-pull", {"topic": f"projects/{P}/topics/t-pull"})
        await svc.publish(P, "t-pull", [msg(i) for i in range(5)])
        got = await svc.pull(P, "s-pull", 3, True)
        assert [base64.b64decode(m["message"]["data"]) for m in got] == [b"0", b"1", b"2"]
        await svc.acknowledge(P, "s-pull", [got[0]["ackId"]])
        await svc.stop()

    async def second() -> None:
        svc = IngestService(path)
        await svc.start()
        got = await svc.pull(P, "s-pull", 10, True)
        # the two remaining new messages; leased 1 and 2 are not yet due
        assert [base64.b64decode(m["message"]["data"]) for m in got] == [b"3", b"4"]
        leased = svc.log.query("SELECT seq FROM leases ORDER BY seq")
        assert len(leased) == 4
        await svc.modify_ack_deadline(P, "s-pull", [f"{s}-1" for (s,) in leased], 0)
        again = await svc.pull(P, "s-pull", 10, True)
        assert sorted(base64.b64decode(m["message"]["data"]) for m in again) == [b"1", b"2", b"3", b"4"]
        assert {m["deliveryAttempt"] for m in again} == {2}
        await svc.acknowledge(P, "s-pull", [m["ackId"] for m in again])
        assert await svc.pull(P, "s-pull", 10, True) == []
        with pytest.raises(InvalidArgument):
            await svc.acknowledge(P, "s-pull", ["garbage"])
        with pytest.raises(NotFound):
            await svc.pull(P, "no-such-sub", 1, True)
        await svc.stop()

    run(first)
    run(second)


SCHEMA = [
    {"name": "event", "type": "STRING", "mode": "REQUIRED"},
    {"name": "ts", "type": "TIMESTAMP"},
    {
        "name": "items",
        "type": "RECORD",
        "mode": "REPEATED",
        "fields": [{"name": "item_id", "type": "INTEGER"}, {"name": "price", "type": "FLOAT"}],
    },
    {"name": "message_id", "type": "STRING"},
    {"name": "subscription_name", "type": "STRING"},
    {"name": "publish_time", "type": "TIMESTAMP"},
    {"name": "attributes", "type": "STRING"},
]


def test_bigquery_subscription_coerces_records_errors_and_never_duplicates(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "wh.duckdb")
    wh.create_dataset(P, "sink")
    wh.create_table(P, "sink", "events", SCHEMA)
    wh.create_table(P, "sink", "raw", [{"name": "data", "type": "STRING"}])
    wh.create_table(P, "sink", "raw_bytes", [{"name": "data", "type": "BYTES"}])
    path = tmp_path / "ingest.db"
    good = {"event": "purchase", "ts": "2020-11-16 22:59:59", "items": [{"item_id": "67890", "price": 1.5}]}
    batch_sent: list[tuple[bytes, str | None, str | None]] = []

    def count(table: str) -> int:
        return int(
            wh.query(f"SELECT COUNT(*) AS n FROM `{P}.sink.{table}`", project=P).table.column(0)[0].as_py()
        )

    async def first() -> None:
        svc = IngestService(path, warehouse=lambda: wh)
        await svc.start()
        await svc.create_topic(P, "bq-topic")
        await svc.create_subscription(
            P,
            "to-events",
            {
                "topic": f"projects/{P}/topics/bq-topic",
                "bigqueryConfig": {
                    "table": f"{P}:sink.events",
                    "useTableSchema": True,
                    "writeMetadata": True,
                    "dropUnknownFields": True,
                },
            },
        )
        await svc.create_subscription(
            P,
            "to-raw",
            {"topic": f"projects/{P}/topics/bq-topic", "bigqueryConfig": {"table": f"{P}.sink.raw"}},
        )
        await svc.create_subscription(
            P,
            "to-bytes",
            {"topic": f"projects/{P}/topics/bq-topic", "bigqueryConfig": {"table": f"{P}.sink.raw_bytes"}},
        )
        with pytest.raises(NotFound, match=r"bigqueryConfig\.table"):
            await svc.create_subscription(
                P,
                "bad",
                {"topic": f"projects/{P}/topics/bq-topic", "bigqueryConfig": {"table": f"{P}.sink.nope"}},
            )
        with pytest.raises(InvalidArgument, match="message_id"):
            await svc.create_subscription(
                P,
                "bad2",
                {
                    "topic": f"projects/{P}/topics/bq-topic",
                    "bigqueryConfig": {"table": f"{P}.sink.raw", "writeMetadata": True},
                },
            )
        batch = [
            msg({**good, "extra": 1}, src="a"),
            msg({"event": "purchase", "items": [{"item_id": "not-a-number"}]}),  # wrong type
            (b"{broken", None, None),  # not JSON
            msg({"ts": "2020-11-16 10:00:00"}),  # REQUIRED event missing
            msg(good),
        ]
        await svc.publish(P, "bq-topic", batch)
        batch_sent.extend(batch)
        sub = svc.sub(P, "to-events")
        await wait_until(lambda: svc.status(sub)["backlog"] == 0 and svc.status(sub)["deadLetters"] == 3)
        raw = svc.sub(P, "to-raw")
        await wait_until(lambda: svc.status(raw)["backlog"] == 0)
        raw_bytes = svc.sub(P, "to-bytes")
        await wait_until(lambda: svc.status(raw_bytes)["backlog"] == 0)
        dead = svc.dead_letters(P, "to-events")
        assert len(dead) == 3 and all(d["error"] for d in dead)
        assert any("JSON" in d["error"] for d in dead)
        assert svc.get_subscription(P, "to-events")["state"] == "RESOURCE_ERROR"
        await svc.stop()

    run(first)
    assert count("events") == 2 and count("raw") == 5
    res = wh.query(
        f"SELECT items[OFFSET(0)].item_id AS i, ts, message_id, attributes FROM `{P}.sink.events` ORDER BY message_id",
        project=P,
    ).table.to_pylist()
    assert res[0]["i"] == 67890 and str(res[0]["ts"]).startswith("2020-11-16 22:59:59")
    assert orjson.loads(res[0]["attributes"]) == {"src": "a"}
    stored = wh.query(f"SELECT data FROM `{P}.sink.raw_bytes`", project=P).table.column(0).to_pylist()
    assert sorted(stored) == sorted(m[0] for m in batch_sent)

    async def replay() -> None:  # a crash between the insert and the cursor commit: everything again
        svc = IngestService(path, warehouse=lambda: wh)
        await svc.log.run(lambda conn: conn.execute("UPDATE subscriptions SET cursor = 0"))
        await svc.log.run(lambda conn: conn.execute("DELETE FROM dead_letters"))
        await svc.start()
        for name in ("to-events", "to-raw"):
            sub = svc.sub(P, name)
            await wait_until(lambda sub=sub: svc.status(sub)["backlog"] == 0)  # type: ignore[misc]
        await svc.stop()

    run(replay)
    assert count("events") == 2 and count("raw") == 5  # insertId = message id: no duplicates
    wh.close()


def test_inference_subscription_writes_predictions(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "wh.duckdb")
    wh.create_dataset(P, "sink")
    wh.create_table(
        P,
        "sink",
        "scored",
        [
            {"name": "value", "type": "FLOAT"},
            {"name": "anomaly", "type": "BOOLEAN"},
            {"name": "raw", "type": "STRING"},
        ],
    )
    calls: list[int] = []
    failures = {"left": 2}

    async def predict(endpoint: str, instances: list[Any]) -> dict[str, Any]:
        assert endpoint == f"projects/{P}/locations/l1/endpoints/e1"
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("replica starting")
        calls.append(len(instances))
        return {"predictions": [{"nearest_centroid_id": [1 if i["value"] > 100 else 2]} for i in instances]}

    async def body() -> None:
        svc = IngestService(tmp_path / "ingest.db", warehouse=lambda: wh, predict=predict)
        await svc.start()
        await svc.create_topic(P, "scoring")
        await svc.create_subscription(
            P,
            "infer",
            {
                "topic": f"projects/{P}/topics/scoring",
                "retryPolicy": {"minimumBackoff": "0.1s", "maximumBackoff": "0.2s"},
                "loopmlInferenceConfig": {
                    "endpoint": f"projects/{P}/locations/l1/endpoints/e1",
                    "filter": 'event = "purchase"',
                    "instanceFields": {"value": "ecommerce.purchase.value"},
                    "outputTable": f"{P}.sink.scored",
                    "outputFields": {
                        "anomaly": "prediction.nearest_centroid_id[0] == 1",
                        "raw": "prediction",
                    },
                    "batchSize": 4,
                },
            },
        )
        events = [
            {"event": "purchase", "ecommerce": {"purchase": {"value": v}}} for v in (35.43, 1000000.1, 35.43)
        ] + [{"event": "view_item"}, {"event": "purchase", "ecommerce": {}}]
        await svc.publish(P, "scoring", [msg(e) for e in events])
        sub = svc.sub(P, "infer")
        await wait_until(lambda: svc.status(sub)["backlog"] == 0)
        assert svc.status(sub)["deadLetters"] == 1  # the purchase without a value
        assert "value" in svc.dead_letters(P, "infer")[0]["error"]
        await svc.stop()

    run(body)
    rows = wh.query(
        f"SELECT value, anomaly, raw FROM `{P}.sink.scored` ORDER BY value", project=P
    ).table.to_pylist()
    assert [(r["value"], r["anomaly"]) for r in rows] == [(35.43, False), (35.43, False), (1000000.1, True)]
    assert orjson.loads(rows[2]["raw"]) == {"nearest_centroid_id": [1]}
    assert calls == [3]  # retried after two failures, one batch
    wh.close()


def test_compaction_deletes_only_what_every_subscription_has_consumed(tmp_path: Path) -> None:
    async def body() -> None:
        svc = IngestService(tmp_path / "ingest.db")
        await svc.start()
        await svc.create_topic(P, "kept")
        await svc.create_topic(P, "unsubscribed")
        await svc.create_subscription(P, "fast", {"topic": f"projects/{P}/topics/kept"})
        await svc.create_subscription(P, "slow", {"topic": f"projects/{P}/topics/kept"})
        for batch in range(3):
            await svc.publish(P, "kept", [msg({"b": batch, "i": i}) for i in range(2)])
        await svc.publish(P, "unsubscribed", [msg("nobody listens")])

        def segments(topic: str) -> int:
            return int(
                svc.log.query("SELECT COUNT(*) FROM segments WHERE topic_id = ?", (svc.topic_id(P, topic),))[
                    0
                ][0]
            )

        fast = await svc.pull(P, "fast", 6, True)
        await svc.acknowledge(P, "fast", [m["ackId"] for m in fast])
        slow = await svc.pull(P, "slow", 3, True)  # leases batch 0 and half of batch 1
        await svc.acknowledge(P, "slow", [slow[0]["ackId"], slow[1]["ackId"], slow[2]["ackId"]])
        assert await svc.log.run(svc.compact) == 2  # batch 0 of "kept" and the unsubscribed topic's
        assert segments("kept") == 2 and segments("unsubscribed") == 0
        rest = await svc.pull(P, "slow", 10, True)
        assert [orjson.loads(base64.b64decode(m["message"]["data"])) for m in rest] == [
            {"b": 1, "i": 1},
            {"b": 2, "i": 0},
            {"b": 2, "i": 1},
        ]
        assert await svc.log.run(svc.compact) == 0  # leased, not yet acknowledged
        await svc.acknowledge(P, "slow", [m["ackId"] for m in rest])
        assert await svc.log.run(svc.compact) == 2 and segments("kept") == 0
        (new_id,) = await svc.publish(P, "kept", [msg("after")])
        assert int(new_id) == 8  # sequence numbers are never reused
        assert await svc.log.run(svc.compact) == 0  # not yet received by either subscription
        await svc.delete_subscription(P, "fast")
        await svc.delete_subscription(P, "slow")
        assert await svc.log.run(svc.compact) == 1
        await svc.stop()

    run(body)

    async def reopened() -> None:  # every segment is gone; the sequence still continues
        svc = IngestService(tmp_path / "ingest.db")
        await svc.start()
        (new_id,) = await svc.publish(P, "kept", [msg("after restart")])
        assert int(new_id) == 9
        await svc.stop()

    run(reopened)
