"""Background delivery for push, BigQuery and streaming-inference subscriptions.

Every worker tails its topic from the subscription's durable cursor. A message counts as
delivered only after the sink committed it (BigQuery, inference), or the push endpoint answered
2xx; the cursor (or the lease) moves after that, so a crash redelivers instead of losing.
Rows are written with the message id as `insertId`, so a redelivery never duplicates a row.
Messages that can never be written are recorded as dead letters with their error.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import sqlite3
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from loopml.ingest import pull
from loopml.ingest.log import Message, now_us
from loopml.ingest.messages import SubState, attributes_of, matches, message_json, publish_time

if TYPE_CHECKING:
    from loopml.ingest.service import IngestService

log = logging.getLogger(__name__)

READ_BATCH = 500
PUSH_CONCURRENCY = 16
PUSH_MAX_OUTSTANDING = 1000
ACK_CODES = {102, 200, 201, 202, 204}


async def run_worker(svc: IngestService, state: SubState) -> None:
    kind = state.spec.kind
    try:
        if kind == "push":
            await PushWorker(svc, state).run()
        else:
            await SinkWorker(svc, state).run()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a bug: keep it visible on the subscription
        log.exception("worker for %s stopped", state.full_name)
        state.last_error = f"worker stopped: {type(exc).__name__}: {exc}"


def backoff(state: SubState, attempt: int) -> float:
    return float(min(state.spec.min_backoff * (2 ** max(attempt - 1, 0)), state.spec.max_backoff))


def advance(state: SubState, cursor: int, dead: list[tuple[Message, str]]) -> Any:
    def job(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE subscriptions SET cursor = ? WHERE sub_id = ?", (cursor, state.sub_id))
        conn.executemany(
            "INSERT INTO dead_letters (sub_id, seq, error, time_us, publish_us, data, attrs, okey)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(state.sub_id, m.seq, err, now_us(), m.publish_us, m.data, m.attrs, m.okey) for m, err in dead],
        )

    return job


def format_insert_error(err: dict[str, Any]) -> str:
    parts = []
    for e in err.get("errors") or []:
        loc = f" at {e['location']}" if e.get("location") else ""
        parts.append(f"{e.get('reason', 'invalid')}{loc}: {e.get('message', '')}")
    return "; ".join(parts) or "row rejected by the warehouse"


class SinkWorker:
    """BigQuery and inference subscriptions: ordered batches from the cursor into a table."""

    def __init__(self, svc: IngestService, state: SubState) -> None:
        self.svc = svc
        self.state = state
        self.spec = state.spec
        self.column_types: dict[str, str] | None = None

    async def run(self) -> None:
        state = self.state
        assert state.topic_id is not None
        rows = await asyncio.to_thread(
            self.svc.log.query, "SELECT cursor FROM subscriptions WHERE sub_id = ?", (state.sub_id,)
        )
        cursor = int(rows[0][0]) if rows else 0
        attempt = 0
        while True:
            limit = READ_BATCH if self.spec.inference is None else max(self.spec.inference.batch_size * 4, 64)
            msgs = await asyncio.to_thread(self.svc.log.read, state.topic_id, cursor, limit)
            if not msgs:
                await self.svc.wait_for_messages(state.topic_id, 1.0)
                continue
            try:
                written, dead = await (
                    self.write_inference(msgs) if self.spec.inference else self.write_bq(msgs)
                )
            except RetryLater as exc:
                attempt += 1
                state.last_error = str(exc)
                delay = backoff(state, attempt)
                log.warning("%s: %s; retrying in %.1fs", state.full_name, exc, delay)
                await asyncio.sleep(delay)
                continue
            attempt = 0
            cursor = msgs[-1].seq
            await self.svc.log.run(advance(state, cursor, dead))
            state.delivered += written
            state.last_error = f"{len(dead)} message(s) dead-lettered; see deadLetters" if dead else ""

    # -- BigQuery -------------------------------------------------------------------------------
    def bq_row(self, msg: Message) -> dict[str, Any]:
        spec = self.spec
        if spec.use_table_schema:
            try:
                row = orjson.loads(msg.data)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"message data is not valid JSON: {exc}") from exc
            if not isinstance(row, dict):
                raise ValueError("message data is a JSON value but not an object; it cannot map to columns")
        elif (self.column_types or {}).get("data") == "BYTES":
            row = {"data": base64.b64encode(msg.data).decode()}  # BYTES travel base64 in insertAll
        else:
            row = {"data": msg.data.decode("utf-8", errors="replace")}
        if spec.write_metadata:
            row["subscription_name"] = self.state.full_name
            row["message_id"] = msg.message_id
            row["publish_time"] = publish_time(msg)
            row["attributes"] = orjson.dumps(attributes_of(msg)).decode()
        return row

    async def insert(self, table: Any, rows: list[dict[str, Any]], ids: list[str]) -> list[dict[str, Any]]:
        warehouse = self.svc.warehouse()
        if warehouse is None:
            raise RetryLater("no warehouse is configured on this server")
        try:
            errors = await asyncio.to_thread(
                warehouse.insert_rows,
                table.project,
                table.dataset,
                table.table,
                rows,
                ids,
                skip_invalid=True,
                ignore_unknown=self.spec.drop_unknown,
            )
        except Exception as exc:
            raise RetryLater(f"writing to {table} failed: {getattr(exc, 'message', exc)}") from exc
        return list(errors or [])

    async def write_bq(self, msgs: list[Message]) -> tuple[int, list[tuple[Message, str]]]:
        rows: list[dict[str, Any]] = []
        ids: list[str] = []
        kept: list[Message] = []
        dead: list[tuple[Message, str]] = []
        if self.column_types is None and not self.spec.use_table_schema:
            assert self.spec.table is not None
            self.column_types = await self._column_types(self.spec.table)
        for msg in msgs:
            if not matches(self.spec, msg):
                continue
            try:
                rows.append(self.bq_row(msg))
            except ValueError as exc:
                dead.append((msg, str(exc)))
                continue
            ids.append(msg.message_id)
            kept.append(msg)
        if not rows:
            return 0, dead
        errors = await self.insert(self.spec.table, rows, ids)
        for err in errors:
            dead.append((kept[int(err.get("index", 0))], format_insert_error(err)))
        return len(rows) - len(errors), dead

    # -- streaming inference ----------------------------------------------------------------------
    async def write_inference(self, msgs: list[Message]) -> tuple[int, list[tuple[Message, str]]]:
        inf = self.spec.inference
        assert inf is not None
        dead: list[tuple[Message, str]] = []
        items: list[tuple[Message, dict[str, Any], dict[str, Any]]] = []
        for msg in msgs:
            if not matches(self.spec, msg):
                continue
            try:
                data = orjson.loads(msg.data)
            except orjson.JSONDecodeError as exc:
                dead.append((msg, f"message data is not valid JSON: {exc}"))
                continue
            if inf.filter is not None and not inf.filter(data if isinstance(data, dict) else {}):
                continue
            instance = {name: path.get(data) for name, path in inf.instance_fields.items()}
            missing = [f"{n} ({inf.instance_fields[n]})" for n, v in instance.items() if v is None]
            if missing:
                dead.append((msg, f"instance field(s) missing in the message: {', '.join(missing)}"))
                continue
            items.append((msg, data, instance))
        if not items:
            return 0, dead
        rows, ids, kept = [], [], []
        for start in range(0, len(items), inf.batch_size):
            chunk = items[start : start + inf.batch_size]
            for (msg, data, instance), outcome in zip(chunk, await self.predict(chunk), strict=True):
                if isinstance(outcome, PredictFailure):
                    dead.append((msg, outcome.error))
                    continue
                rows.append(await self.output_row(msg, data, instance, outcome.value))
                ids.append(msg.message_id)
                kept.append(msg)
        if not rows:
            return 0, dead
        errors = await self.insert(inf.output_table, rows, ids)
        for err in errors:
            dead.append((kept[int(err.get("index", 0))], format_insert_error(err)))
        return len(rows) - len(errors), dead

    async def predict(self, chunk: list[tuple[Message, Any, dict[str, Any]]]) -> list[Any]:
        """Predictions for a chunk, retried with backoff; persistent failures become PredictFailure."""
        inf = self.spec.inference
        assert inf is not None
        predict = self.svc.predict
        if predict is None:
            raise RetryLater("no serving runtime is configured for streaming inference")
        instances = [inst for _, _, inst in chunk]
        for attempt in range(1, inf.max_attempts + 1):
            try:
                response = await predict(inf.endpoint, instances)
                preds = list(response.get("predictions") or [])
                if len(preds) != len(instances):
                    raise ValueError(
                        f"endpoint answered {len(preds)} predictions for {len(instances)} instances"
                    )
                return [PredictOk(p) for p in preds]
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = f"prediction on {inf.endpoint} failed: {getattr(exc, 'message', exc)}"
                # a 400 INVALID_ARGUMENT blames the instances; anything else (404, 503, a replica
                # starting, FAILED_PRECONDITION) may pass, so it is retried with backoff
                if getattr(exc, "status", 500) == 400 and getattr(exc, "code", "") == "INVALID_ARGUMENT":
                    if len(chunk) == 1:
                        return [PredictFailure(error)]
                    return [(await self.predict([one]))[0] for one in chunk]  # isolate the bad instance
                self.state.last_error = error
                if attempt == inf.max_attempts:
                    return [PredictFailure(f"{error} (after {attempt} attempts)")] * len(chunk)
                await asyncio.sleep(backoff(self.state, attempt))
        return [PredictFailure("no attempts made")] * len(chunk)

    async def output_row(
        self, msg: Message, data: Any, instance: dict[str, Any], prediction: Any
    ) -> dict[str, Any]:
        inf = self.spec.inference
        assert inf is not None
        if self.column_types is None:
            self.column_types = await self._column_types(inf.output_table)
        env = {
            "prediction": prediction,
            "instance": instance,
            "data": data,
            "message": {"messageId": msg.message_id, "publishTime": publish_time(msg), **message_json(msg)},
        }
        row = dict(instance)
        for col, node in inf.output_fields.items():
            value = node(env)
            kind = self.column_types.get(col, "")
            if isinstance(value, dict | list) and kind not in ("RECORD", "STRUCT", "REPEATED"):
                value = orjson.dumps(value).decode()
            row[col] = value
        return row

    async def _column_types(self, table: Any) -> dict[str, str]:
        warehouse = self.svc.warehouse()
        try:
            schema = await asyncio.to_thread(
                warehouse.get_table_schema, table.project, table.dataset, table.table
            )
        except Exception:
            return {}
        fields = schema.get("fields", []) if isinstance(schema, dict) else schema
        out = {}
        for f in fields or []:
            f = f if isinstance(f, dict) else getattr(f, "to_api_repr", lambda: {})()
            mode = str(f.get("mode", "")).upper()
            out[str(f.get("name"))] = "REPEATED" if mode == "REPEATED" else str(f.get("type", "")).upper()
        return out


class RetryLater(Exception):
    """The sink is unavailable; the batch is retried (with backoff) without moving the cursor."""


class PredictOk:
    def __init__(self, value: Any) -> None:
        self.value = value


class PredictFailure:
    def __init__(self, error: str) -> None:
        self.error = error


class PushWorker:
    """POSTs the Pub/Sub push envelope to the endpoint; 102/200/201/202/204 acknowledge."""

    def __init__(self, svc: IngestService, state: SubState) -> None:
        self.svc = svc
        self.state = state
        self.inflight: dict[int, asyncio.Task[None]] = {}
        self.acked: list[int] = []
        self.sem = asyncio.Semaphore(PUSH_CONCURRENCY)

    async def run(self) -> None:
        state = self.state
        assert state.topic_id is not None
        timeout = httpx.Timeout(state.spec.ack_deadline, connect=5.0)
        sub_id = state.sub_id
        # leases left by a previous run (a crash or a restart) are delivered again at once
        await self.svc.log.run(
            lambda conn: conn.execute("UPDATE leases SET due_us = 0 WHERE sub_id = ?", (sub_id,))
        )
        async with httpx.AsyncClient(timeout=timeout) as client:
            self.client = client
            try:
                while True:
                    await self.flush_acks()
                    room = PUSH_MAX_OUTSTANDING - len(self.inflight)
                    fresh = 0
                    if room > 0:
                        want = min(room, READ_BATCH)
                        pulled = await self.svc.log.run(
                            lambda conn, want=want: pull.lease(self.svc.log, conn, state, want, 3600.0)  # type: ignore[misc]
                        )
                        for p in pulled:
                            if p.seq not in self.inflight:
                                fresh += 1
                                task = asyncio.get_running_loop().create_task(
                                    self.deliver(p.seq, p.attempts, p.message)
                                )
                                self.inflight[p.seq] = task
                    if not fresh:
                        await self.svc.wait_for_messages(state.topic_id, 0.25 if self.inflight else 1.0)
            finally:
                for task in self.inflight.values():
                    task.cancel()
                await asyncio.gather(*self.inflight.values(), return_exceptions=True)
                await self.flush_acks()

    async def flush_acks(self) -> None:
        if not self.acked:
            return
        seqs, self.acked = self.acked, []
        sub_id = self.state.sub_id
        await self.svc.log.run(
            lambda conn: conn.executemany(
                "DELETE FROM leases WHERE sub_id = ? AND seq = ?", [(sub_id, s) for s in seqs]
            )
        )

    def envelope(self, msg: Message) -> dict[str, Any]:
        body = message_json(msg)
        body["message_id"] = body["messageId"]
        body["publish_time"] = body["publishTime"]
        return {"message": body, "subscription": self.state.full_name}

    async def deliver(self, seq: int, attempt: int, msg: Message) -> None:
        url = self.state.spec.push_endpoint
        payload = orjson.dumps(self.envelope(msg))
        headers = {"content-type": "application/json"}  # pushConfig.attributes configure, not headers
        try:
            while True:
                async with self.sem:
                    try:
                        resp = await self.client.post(url, content=payload, headers=headers)
                        ok, error = (
                            resp.status_code in ACK_CODES,
                            f"HTTP {resp.status_code}: {resp.text[:200]}",
                        )
                    except httpx.HTTPError as exc:
                        ok, error = False, f"{type(exc).__name__}: {exc}"
                if ok:
                    self.acked.append(seq)
                    self.state.delivered += 1
                    if self.state.last_error.startswith("push of message"):
                        self.state.last_error = ""
                    return
                self.state.last_error = f"push of message {seq} to {url} failed: {error}"
                await asyncio.sleep(backoff(self.state, attempt))
                attempt += 1
        finally:
            self.inflight.pop(seq, None)
