"""Leases: what pull and push subscriptions have handed out and not yet had acknowledged.

A lease row (subscription, sequence, attempts, due time) is written in the same transaction that
moves the subscription's cursor past the message, so a message is always either behind the
cursor and leased, behind the cursor and acknowledged (lease deleted), or ahead of the cursor.
An expired lease is delivered again, with its attempt count increased.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from loopml.errors import InvalidArgument
from loopml.ingest.log import Message, MessageLog, now_us

if TYPE_CHECKING:
    from loopml.ingest.messages import SubState

SCAN = 500


@dataclass
class PulledMessage:
    seq: int
    attempts: int
    message: Message


def lease(
    log: MessageLog, conn: sqlite3.Connection, state: SubState, limit: int, lease_s: float
) -> list[PulledMessage]:
    """Writer job: redeliver expired leases, then lease new messages past the cursor."""
    now = now_us()
    due = now + int(lease_s * 1_000_000)
    again = conn.execute(
        "SELECT seq, attempts FROM leases WHERE sub_id = ? AND due_us <= ? ORDER BY seq LIMIT ?",
        (state.sub_id, now, limit),
    ).fetchall()
    if again:
        conn.executemany(
            "UPDATE leases SET attempts = ?, due_us = ? WHERE sub_id = ? AND seq = ?",
            [(a + 1, due, state.sub_id, s) for s, a in again],
        )
    found = log.get_messages([s for s, _ in again], conn)
    out = [PulledMessage(s, a + 1, found[s]) for s, a in again if s in found]
    if len(out) >= limit or state.topic_id is None:
        return out
    cursor = start = conn.execute(
        "SELECT cursor FROM subscriptions WHERE sub_id = ?", (state.sub_id,)
    ).fetchone()[0]
    fresh: list[PulledMessage] = []
    flt = state.spec.filter
    while len(out) + len(fresh) < limit:
        batch = log.read(
            state.topic_id, cursor, max(limit, SCAN) if flt else limit - len(out) - len(fresh), conn
        )
        if not batch:
            break
        for msg in batch:
            cursor = msg.seq
            if flt is None or flt({"attributes": orjson.loads(msg.attrs) if msg.attrs else {}}):
                fresh.append(PulledMessage(msg.seq, 1, msg))
                if len(out) + len(fresh) >= limit:
                    break
    if fresh:
        conn.executemany(
            "INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?)",
            [(state.sub_id, p.seq, 1, due) for p in fresh],
        )
    if cursor != start:  # an idle poll writes nothing, so its commit costs no fsync
        conn.execute("UPDATE subscriptions SET cursor = ? WHERE sub_id = ?", (cursor, state.sub_id))
    return out + fresh


def ack_seqs(ack_ids: Any) -> list[int]:
    """Sequence numbers from ack ids `<seq>-<attempt>`; a 400 for anything else."""
    if not isinstance(ack_ids, list) or not ack_ids:
        raise InvalidArgument("Invalid field 'ackIds': it must be a non-empty list of ack ids.")
    seqs = []
    for ack in ack_ids:
        head = str(ack).split("-", 1)[0]
        if not head.isdigit():
            raise InvalidArgument(f"Invalid field 'ackIds': {ack!r} is not an ack id from this subscription.")
        seqs.append(int(head))
    return seqs


def ack(conn: sqlite3.Connection, sub_id: int, seqs: list[int]) -> None:
    conn.executemany("DELETE FROM leases WHERE sub_id = ? AND seq = ?", [(sub_id, s) for s in seqs])


def extend(conn: sqlite3.Connection, sub_id: int, seqs: list[int], seconds: int) -> None:
    due = now_us() + seconds * 1_000_000
    conn.executemany(
        "UPDATE leases SET due_us = ? WHERE sub_id = ? AND seq = ?", [(due, sub_id, s) for s in seqs]
    )
