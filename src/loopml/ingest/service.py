"""IngestService: Pub/Sub-shaped topics and subscriptions over the durable message log.

Topics, subscriptions, cursors and leases live in the same SQLite file as the messages, so a
cursor moves in the same transaction as the state it describes. Push, BigQuery and inference
subscriptions are served by background workers (`loopml.ingest.workers`); pull subscriptions are
served by `pull`/`acknowledge`/`modify_ack_deadline`.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from loopml.errors import AlreadyExists, InvalidArgument, NotFound
from loopml.ingest import pull
from loopml.ingest.log import Message, MessageLog, now_us
from loopml.ingest.messages import SubState, message_json
from loopml.ingest.resources import (
    SubscriptionSpec,
    check_name,
    check_project,
    parse_subscription,
    parse_topic_name,
)
from loopml.refs import rfc3339

log = logging.getLogger(__name__)

PredictFn = Callable[[str, list[Any]], Awaitable[dict[str, Any]]]
"""`await predict(endpoint_name, instances)` → a Vertex predict response (`{"predictions": [...]}`)."""


@dataclass
class IngestService:
    log_path: Path
    default_project: str = "local"
    warehouse: Callable[[], Any] = field(default=lambda: None)
    predict: PredictFn | None = None
    compact_every_s: float = 60.0

    def __post_init__(self) -> None:
        self.log = MessageLog(self.log_path)
        self.topics: dict[tuple[str, str], int] = {}
        self.subs: dict[tuple[str, str], SubState] = {}
        self._events: dict[int, asyncio.Event] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._janitor_task: asyncio.Task[None] | None = None
        for tid, project, name in self.log.query("SELECT topic_id, project, name FROM topics"):
            self.topics[(project, name)] = tid
        for row in self.log.query("SELECT sub_id, project, name, topic_id, topic, config FROM subscriptions"):
            sub_id, project, name, topic_id, topic, config = row
            try:
                spec = parse_subscription(
                    orjson.loads(config), f"projects/{project}/subscriptions/{name}", topic
                )
            except InvalidArgument as exc:  # stored by an older version; keep it visible, inert
                log.error("subscription %s/%s cannot be loaded: %s", project, name, exc.message)
                continue
            self.subs[(project, name)] = SubState(sub_id, project, name, topic_id, spec)
        self.log.listeners.append(self._on_commit)

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.log.start()
        self._started = True
        for state in self.subs.values():
            self._spawn(state)
        self._janitor_task = asyncio.get_running_loop().create_task(self._janitor(), name="ingest-janitor")

    async def stop(self) -> None:
        self._started = False
        if self._janitor_task is not None:
            self._janitor_task.cancel()
            await asyncio.gather(self._janitor_task, return_exceptions=True)
            self._janitor_task = None
        tasks = [s.task for s in self.subs.values() if s.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for state in self.subs.values():
            state.task = None
        self.log.close()

    def _spawn(self, state: SubState) -> None:
        if not self._started or state.spec.kind == "pull" or state.topic_id is None or state.task:
            return
        from loopml.ingest.workers import run_worker

        state.task = asyncio.get_running_loop().create_task(run_worker(self, state), name=f"sub:{state.name}")

    def _on_commit(self, topic_ids: set[int]) -> None:  # writer thread
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake, topic_ids)

    def _wake(self, topic_ids: set[int]) -> None:
        for tid in topic_ids:
            event = self._events.pop(tid, None)
            if event is not None:
                event.set()

    async def wait_for_messages(self, topic_id: int, timeout: float) -> None:
        event = self._events.setdefault(topic_id, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass

    # -- topics -----------------------------------------------------------------------------------
    def topic_id(self, project: str, topic: str) -> int:
        tid = self.topics.get((project, topic))
        if tid is None:
            raise NotFound(f"Resource not found (resource=projects/{project}/topics/{topic}): no such topic.")
        return tid

    @staticmethod
    def topic_json(project: str, name: str, labels: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"name": f"projects/{project}/topics/{name}", "labels": labels or {}}

    async def create_topic(
        self, project: str, name: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        check_project(project)
        check_name(name, "topic")
        labels = (body or {}).get("labels") or {}
        if not isinstance(labels, dict):
            raise InvalidArgument("Invalid field 'labels': it must be an object of strings.")

        def job(conn: sqlite3.Connection) -> int:
            try:
                cur = conn.execute(
                    "INSERT INTO topics (project, name, labels, create_us) VALUES (?, ?, ?, ?)",
                    (project, name, orjson.dumps(labels).decode(), now_us()),
                )
            except sqlite3.IntegrityError as exc:
                raise AlreadyExists(f"Resource already exists in the project (resource={name}).") from exc
            return int(cur.lastrowid or 0)

        self.topics[(project, name)] = await self.log.run(job)
        return self.topic_json(project, name, labels)

    def get_topic(self, project: str, name: str) -> dict[str, Any]:
        tid = self.topic_id(project, name)
        rows = self.log.query("SELECT labels FROM topics WHERE topic_id = ?", (tid,))
        return self.topic_json(project, name, orjson.loads(rows[0][0]) if rows else {})

    def list_topics(self, project: str) -> list[dict[str, Any]]:
        rows = self.log.query("SELECT name, labels FROM topics WHERE project = ? ORDER BY name", (project,))
        return [self.topic_json(project, n, orjson.loads(lb)) for n, lb in rows]

    def topic_subscriptions(self, project: str, name: str) -> list[str]:
        tid = self.topic_id(project, name)
        return sorted(s.full_name for s in self.subs.values() if s.topic_id == tid)

    async def delete_topic(self, project: str, name: str) -> None:
        tid = self.topic_id(project, name)

        def job(conn: sqlite3.Connection) -> None:
            self.log.keep_next_seq(conn)
            conn.execute("DELETE FROM topics WHERE topic_id = ?", (tid,))
            conn.execute("DELETE FROM segments WHERE topic_id = ?", (tid,))
            conn.execute(
                "UPDATE subscriptions SET topic_id = NULL, topic = '_deleted-topic_' WHERE topic_id = ?",
                (tid,),
            )

        await self.log.run(job)
        del self.topics[(project, name)]
        for state in self.subs.values():
            if state.topic_id == tid:
                state.topic_id = None
                state.spec.resource["topic"] = "_deleted-topic_"
                if state.task:
                    state.task.cancel()
                    state.task = None

    async def publish(
        self, project: str, topic: str, messages: list[tuple[bytes, str | None, str | None]]
    ) -> list[str]:
        """Append messages (data, attributes JSON, ordering key); returns ids once durable."""
        tid = self.topic_id(project, topic)
        if not messages:
            return []
        attrs = [m[1] for m in messages]
        okeys = [m[2] for m in messages]
        first = await self.log.publish(
            tid, [m[0] for m in messages], attrs if any(attrs) else None, okeys if any(okeys) else None
        )
        return list(map(str, range(first, first + len(messages))))

    # -- subscriptions --------------------------------------------------------------------------
    def sub(self, project: str, name: str) -> SubState:
        state = self.subs.get((project, name))
        if state is None:
            raise NotFound(
                f"Resource not found (resource=projects/{project}/subscriptions/{name}): no such subscription."
            )
        return state

    async def create_subscription(self, project: str, name: str, body: Any) -> dict[str, Any]:
        check_project(project)
        check_name(name, "subscription")
        if not isinstance(body, dict):
            raise InvalidArgument("The subscription body must be a JSON object.")
        t_project, t_name = parse_topic_name(body.get("topic"), project)
        tid = self.topic_id(t_project, t_name)
        full = f"projects/{project}/subscriptions/{name}"
        spec = parse_subscription(body, full, f"projects/{t_project}/topics/{t_name}")
        if (project, name) in self.subs:
            raise AlreadyExists(f"Resource already exists in the project (resource={name}).")
        await self._check_table(spec)
        config = orjson.dumps(spec.resource).decode()

        def job(conn: sqlite3.Connection) -> int:
            try:
                cur = conn.execute(
                    "INSERT INTO subscriptions (project, name, topic_id, topic, config, cursor, create_us)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (project, name, tid, spec.resource["topic"], config, self.log.next_seq - 1, now_us()),
                )
            except sqlite3.IntegrityError as exc:
                raise AlreadyExists(f"Resource already exists in the project (resource={name}).") from exc
            return int(cur.lastrowid or 0)

        sub_id = await self.log.run(job)
        state = SubState(sub_id, project, name, tid, spec)
        self.subs[(project, name)] = state
        self._spawn(state)
        return self.subscription_json(state)

    async def _check_table(self, spec: SubscriptionSpec) -> None:
        """The sink table must exist (as in Pub/Sub) and have the columns the config writes."""
        warehouse = self.warehouse()
        if warehouse is None or spec.kind not in ("bigquery", "inference"):
            return
        table = spec.table if spec.kind == "bigquery" else spec.inference.output_table  # type: ignore[union-attr]
        assert table is not None
        what = "bigqueryConfig.table" if spec.kind == "bigquery" else "loopmlInferenceConfig.outputTable"
        try:
            schema = await asyncio.to_thread(
                warehouse.get_table_schema, table.project, table.dataset, table.table
            )
        except NotFound as exc:
            raise NotFound(f"Invalid field {what!r}: table {table} does not exist ({exc.message})") from exc
        columns = {str(f.get("name", "")).lower() for f in schema or []}
        needed: list[str] = []
        if spec.kind == "bigquery" and not spec.use_table_schema:
            needed.append("data")
        if spec.write_metadata:
            needed += ["subscription_name", "message_id", "publish_time", "attributes"]
        missing = [c for c in needed if c not in columns]
        if missing:
            raise InvalidArgument(
                f"Invalid field {what!r}: table {table} has no column(s) {', '.join(missing)} "
                "(needed by the bigqueryConfig options)."
            )

    def subscription_json(self, state: SubState) -> dict[str, Any]:
        body = dict(state.spec.resource)
        status = self.status(state)
        body["state"] = "RESOURCE_ERROR" if state.last_error else "ACTIVE"
        if "bigqueryConfig" in body:
            body["bigqueryConfig"] = {**body["bigqueryConfig"], "state": body["state"]}
        body["loopmlStatus"] = status
        return body

    def status(self, state: SubState) -> dict[str, Any]:
        rows = self.log.query(
            "SELECT cursor, (SELECT COUNT(*) FROM leases WHERE sub_id = s.sub_id),"
            " (SELECT COUNT(*) FROM dead_letters WHERE sub_id = s.sub_id) FROM subscriptions s WHERE sub_id = ?",
            (state.sub_id,),
        )
        cursor, outstanding, dead = rows[0] if rows else (0, 0, 0)
        backlog = 0
        if state.topic_id is not None:
            backlog = self.log.backlog(state.topic_id, cursor)
        return {
            "cursor": str(cursor),
            "backlog": int(backlog) + int(outstanding),
            "outstanding": int(outstanding),
            "delivered": state.delivered,
            "deadLetters": int(dead),
            "lastError": state.last_error,
        }

    def get_subscription(self, project: str, name: str) -> dict[str, Any]:
        return self.subscription_json(self.sub(project, name))

    def list_subscriptions(self, project: str) -> list[dict[str, Any]]:
        return [self.subscription_json(s) for (p, _), s in sorted(self.subs.items()) if p == project]

    async def delete_subscription(self, project: str, name: str) -> None:
        state = self.sub(project, name)
        if state.task:
            state.task.cancel()
            await asyncio.gather(state.task, return_exceptions=True)
            state.task = None

        def job(conn: sqlite3.Connection) -> None:
            for table in ("subscriptions", "leases", "dead_letters"):
                conn.execute(f"DELETE FROM {table} WHERE sub_id = ?", (state.sub_id,))

        await self.log.run(job)
        self.subs.pop((project, name), None)

    # -- pull delivery ----------------------------------------------------------------------------
    async def pull(
        self,
        project: str,
        name: str,
        max_messages: int,
        return_immediately: bool = False,
        wait_s: float = 5.0,
    ) -> list[dict[str, Any]]:
        state = self.sub(project, name)
        if state.spec.kind != "pull":
            raise InvalidArgument(
                f"Subscription {state.full_name} is a {state.spec.kind} subscription; pull is "
                "only allowed on pull subscriptions."
            )
        if not isinstance(max_messages, int) or isinstance(max_messages, bool) or max_messages < 1:
            raise InvalidArgument("Invalid field 'maxMessages': it must be a positive integer.")
        limit = min(max_messages, 1000)
        deadline = asyncio.get_running_loop().time() + (0 if return_immediately else wait_s)
        while True:
            pulled = await self.log.run(
                lambda conn: pull.lease(self.log, conn, state, limit, state.spec.ack_deadline)
            )
            remaining = deadline - asyncio.get_running_loop().time()
            if pulled or remaining <= 0 or state.topic_id is None:
                break
            await self.wait_for_messages(state.topic_id, min(remaining, 1.0))
        state.delivered += len(pulled)
        return [
            {
                "ackId": f"{p.seq}-{p.attempts}",
                "message": message_json(p.message),
                "deliveryAttempt": p.attempts,
            }
            for p in pulled
        ]

    async def acknowledge(self, project: str, name: str, ack_ids: Any) -> None:
        state = self.sub(project, name)
        seqs = pull.ack_seqs(ack_ids)
        await self.log.run(lambda conn: pull.ack(conn, state.sub_id, seqs))

    async def modify_ack_deadline(self, project: str, name: str, ack_ids: Any, seconds: Any) -> None:
        state = self.sub(project, name)
        seqs = pull.ack_seqs(ack_ids)
        if not isinstance(seconds, int) or isinstance(seconds, bool) or not 0 <= seconds <= 600:
            raise InvalidArgument("Invalid field 'ackDeadlineSeconds': an integer in 0..600.")
        await self.log.run(lambda conn: pull.extend(conn, state.sub_id, seqs, seconds))

    # -- dead letters -----------------------------------------------------------------------------
    def dead_letters(self, project: str, name: str, limit: int = 100) -> list[dict[str, Any]]:
        """The subscription's newest dead letters, each with its error and its message."""
        state = self.sub(project, name)
        rows = self.log.query(
            "SELECT seq, error, time_us, publish_us, data, attrs, okey FROM dead_letters"
            " WHERE sub_id = ? ORDER BY id DESC LIMIT ?",
            (state.sub_id, limit),
        )
        return [
            {
                "messageId": str(seq),
                "error": error,
                "time": _ts(time_us),
                "message": message_json(Message(seq, state.topic_id or 0, publish_us, data, attrs, okey)),
            }
            for seq, error, time_us, publish_us, data, attrs, okey in rows
        ]

    # -- retention --------------------------------------------------------------------------------
    def compact(self, conn: sqlite3.Connection) -> int:
        """Writer job: delete segments every subscription of their topic has consumed and acked.

        Messages published to a topic are kept for the subscriptions that existed then (a new
        subscription starts at the head), so once each of them has moved its cursor past a
        segment and holds no lease in it, nobody can receive it again. Dead letters keep their
        own copy of the message. Returns the number of segments deleted.
        """
        deleted = 0
        head = self.log.next_seq - 1
        self.log.keep_next_seq(conn)
        for (tid,) in conn.execute("SELECT topic_id FROM topics").fetchall():
            floor = head
            for sub_id, cursor in conn.execute(
                "SELECT sub_id, cursor FROM subscriptions WHERE topic_id = ?", (tid,)
            ).fetchall():
                leased = conn.execute("SELECT MIN(seq) FROM leases WHERE sub_id = ?", (sub_id,)).fetchone()[0]
                floor = min(floor, cursor, (leased - 1) if leased is not None else cursor)
            cur = conn.execute(
                "DELETE FROM segments WHERE topic_id = ? AND first_seq + n - 1 <= ?", (tid, floor)
            )
            deleted += cur.rowcount
        return deleted

    async def _janitor(self) -> None:
        while True:
            await asyncio.sleep(self.compact_every_s)
            try:
                removed = await self.log.run(self.compact)
                if removed:
                    log.info("message log: %d consumed segment(s) deleted", removed)
            except Exception:
                log.exception("message log compaction failed")


def _ts(us: int) -> str | None:
    from datetime import UTC, datetime

    return rfc3339(datetime.fromtimestamp(us / 1_000_000, UTC))
