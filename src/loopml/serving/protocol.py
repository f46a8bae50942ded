"""The router ⇄ replica wire format: length-prefixed binary frames on a persistent Unix socket.

A frame is `u32 length` followed by `length` bytes. The router never parses JSON on the hot
path: it forwards the raw HTTP request bodies and gets back complete response bodies.

Request frame body::

    u8 type ("B" batch | "H" health)  u32 count  then per item: u8 kind  u32 len  bytes

Response frame body::

    u8 type ("B" | "H")  u32 count  then per item: u16 status  u32 len  bytes

A health answer carries one item whose bytes are a JSON object describing the replica
(pid, framework, expected feature count, ...).
"""

from __future__ import annotations

import struct

KIND_PREDICT = 0
KIND_RAW = 1
KIND_EXPLAIN = 2

TYPE_BATCH = ord("B")
TYPE_HEALTH = ord("H")

_U32 = struct.Struct("!I")
_HEAD = struct.Struct("!BI")
_REQ_ITEM = struct.Struct("!BI")
_RESP_ITEM = struct.Struct("!HI")

MAX_FRAME = 256 * 1024 * 1024


class ProtocolError(Exception):
    pass


def encode_request(frame_type: int, items: list[tuple[int, bytes]]) -> bytes:
    parts = [b"", _HEAD.pack(frame_type, len(items))]
    pack = _REQ_ITEM.pack
    for kind, body in items:
        parts.append(pack(kind, len(body)))
        parts.append(body)
    payload_len = sum(len(p) for p in parts)
    parts[0] = _U32.pack(payload_len)
    return b"".join(parts)


def decode_request(payload: bytes | memoryview) -> tuple[int, list[tuple[int, bytes]]]:
    view = memoryview(payload)
    frame_type, count = _HEAD.unpack_from(view, 0)
    pos = _HEAD.size
    items: list[tuple[int, bytes]] = []
    unpack = _REQ_ITEM.unpack_from
    for _ in range(count):
        kind, n = unpack(view, pos)
        pos += _REQ_ITEM.size
        items.append((kind, bytes(view[pos : pos + n])))
        pos += n
    if pos != len(view):
        raise ProtocolError("trailing bytes in request frame")
    return frame_type, items


def encode_response(frame_type: int, items: list[tuple[int, bytes]]) -> bytes:
    parts = [b"", _HEAD.pack(frame_type, len(items))]
    pack = _RESP_ITEM.pack
    for status, body in items:
        parts.append(pack(status, len(body)))
        parts.append(body)
    payload_len = sum(len(p) for p in parts)
    parts[0] = _U32.pack(payload_len)
    return b"".join(parts)


def decode_response(payload: bytes | memoryview) -> tuple[int, list[tuple[int, bytes]]]:
    view = memoryview(payload)
    frame_type, count = _HEAD.unpack_from(view, 0)
    pos = _HEAD.size
    items: list[tuple[int, bytes]] = []
    unpack = _RESP_ITEM.unpack_from
    for _ in range(count):
        status, n = unpack(view, pos)
        pos += _RESP_ITEM.size
        items.append((status, bytes(view[pos : pos + n])))
        pos += n
    if pos != len(view):
        raise ProtocolError("trailing bytes in response frame")
    return frame_type, items


def frame_length(header: bytes | bytearray | memoryview) -> int:
    (n,) = _U32.unpack_from(header, 0)
    if n > MAX_FRAME:
        raise ProtocolError(f"frame of {n} bytes is larger than {MAX_FRAME}")
    return int(n)


HEADER_SIZE = _U32.size
