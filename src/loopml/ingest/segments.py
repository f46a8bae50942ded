"""Segment rows of the message log: many messages' data concatenated, with their sizes.

A segment holds the messages with sequence numbers `first_seq .. first_seq + n - 1` of one
topic: `data` is their data concatenated, `sizes` their lengths (little-endian uint32), `attrs`
and `okeys` JSON arrays of their attributes (JSON text) and ordering keys, or NULL when no
message has any.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from typing import Any

import orjson

MAX_PARAMS = 30_000
"""Bound parameters in one statement (SQLite's limit is 32,766 or more)."""
SEGMENT_MESSAGES = 1000
SEGMENT_BYTES = 1 << 20
"""A segment row holds at most this many messages and (unless one message is larger) bytes, so a
reader fetching a few hundred messages never loads a huge blob."""


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


def insert_sql(rows: int) -> str:
    return "INSERT INTO segments VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * rows)


def encode(
    first: int,
    topic_id: int,
    datas: list[bytes],
    attrs: list[str | None] | None,
    okeys: list[str | None] | None,
) -> list[tuple[Any, ...]]:
    """Segment rows for messages with sequence numbers from `first`: one, or several when they
    exceed SEGMENT_MESSAGES or SEGMENT_BYTES."""
    n = len(datas)
    sizes = list(map(len, datas))
    now = now_us()
    if n <= SEGMENT_MESSAGES and sum(sizes) <= SEGMENT_BYTES:
        bounds = [(0, n)]
    else:
        bounds = []
        start = 0
        while start < n:
            stop, nbytes = start + 1, sizes[start]
            while stop < n and stop - start < SEGMENT_MESSAGES and nbytes + sizes[stop] <= SEGMENT_BYTES:
                nbytes += sizes[stop]
                stop += 1
            bounds.append((start, stop))
            start = stop
    rows = []
    for start, stop in bounds:
        whole = start == 0 and stop == n
        a = attrs if attrs is None or whole else attrs[start:stop]
        k = okeys if okeys is None or whole else okeys[start:stop]
        rows.append(
            (
                first + start,
                topic_id,
                stop - start,
                now,
                b"".join(datas if whole else datas[start:stop]),
                struct.pack(f"<{stop - start}I", *(sizes if whole else sizes[start:stop])),
                orjson.dumps(a).decode() if a and any(a) else None,
                orjson.dumps(k).decode() if k and any(k) else None,
            )
        )
    return rows


SEG = "first_seq, topic_id, n, publish_us, data, sizes, attrs, okeys"


def decode(row: tuple[Any, ...], after_seq: int, limit: int) -> list[Message]:
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
