"""List requests: `filter`, `orderBy`, `pageSize`, `pageToken` over already-rendered resources.

Filters are a conjunction (`AND`) of `field="value"` terms where field is `display_name`
(or `displayName`), `labels.KEY`, or `name`/`model_id`/`endpoint_id`; `labels.KEY:*` tests that a
label exists. orderBy is a comma-separated list of `create_time`, `update_time`, `display_name`,
each optionally followed by `desc` or `asc`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import Any

import orjson

from loopml.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

_TERM_RE = re.compile(
    r"""^\s*(?P<field>[A-Za-z_][A-Za-z0-9_.\-]*)\s*(?P<op>=|!=|:)\s*"""
    r"""(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<bare>[^\s"']+))\s*$"""
)
_AND_RE = re.compile(r"\s+AND\s+", re.IGNORECASE)

_ORDER_FIELDS = {
    "create_time": "createTime",
    "createtime": "createTime",
    "update_time": "updateTime",
    "updatetime": "updateTime",
    "display_name": "displayName",
    "displayname": "displayName",
}

Predicate = Callable[[dict[str, Any]], bool]


def parse_filter(text: str | None, id_key: str) -> Predicate:
    """A predicate over resource JSON for a Vertex list filter."""
    if not text or not text.strip():
        return lambda _item: True
    preds: list[Predicate] = []
    for term in _AND_RE.split(text.strip()):
        m = _TERM_RE.match(term)
        if not m:
            raise InvalidArgument(
                f'filter: cannot parse {term!r}: use field="value" terms joined by AND, e.g. '
                'display_name="churn" AND labels.team="growth".'
            )
        field, op = m.group("field"), m.group("op")
        value = next(v for v in (m.group("dq"), m.group("sq"), m.group("bare")) if v is not None)
        preds.append(_term(field, op, value, id_key))
    return lambda item: all(p(item) for p in preds)


def _term(field: str, op: str, value: str, id_key: str) -> Predicate:
    def compare(actual: Any) -> bool:
        if op == ":":
            return actual is not None and (value == "*" or str(actual) == value)
        equal = actual is not None and str(actual) == value
        return equal if op == "=" else not equal

    if field.startswith("labels."):
        key = field[len("labels.") :]
        return lambda item: compare((item.get("labels") or {}).get(key))
    if field in ("display_name", "displayName"):
        return lambda item: compare(item.get("displayName"))
    if field in ("name", id_key, "model_id", "endpoint_id", "modelId", "endpointId"):
        return lambda item: compare(str(item.get("name", "")).rsplit("/", 1)[-1]) or compare(item.get("name"))
    raise InvalidArgument(f"filter: unsupported field {field!r}: use display_name, labels.KEY or {id_key}.")


def parse_order(text: str | None) -> list[tuple[str, bool]]:
    """[(json field, descending)] for an orderBy string."""
    if not text or not text.strip():
        return []
    out: list[tuple[str, bool]] = []
    for part in text.split(","):
        words = part.split()
        if not words or len(words) > 2:
            raise InvalidArgument(f"orderBy: cannot parse {part.strip()!r}.")
        field = _ORDER_FIELDS.get(words[0].lower())
        if field is None:
            raise InvalidArgument(
                f"orderBy: unsupported field {words[0]!r}: use create_time, update_time or display_name."
            )
        direction = words[1].lower() if len(words) == 2 else "asc"
        if direction not in ("asc", "desc"):
            raise InvalidArgument(f"orderBy: direction must be asc or desc, got {words[1]!r}.")
        out.append((field, direction == "desc"))
    return out


def parse_page_size(value: Any) -> int:
    if value is None or value == "":
        return DEFAULT_PAGE_SIZE
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"pageSize must be an integer, got {value!r}.") from None
    if size < 0:
        raise InvalidArgument(f"pageSize must not be negative, got {size}.")
    return min(size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(offset: int, query: str) -> str:
    raw = orjson.dumps({"o": offset, "q": query})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str | None, query: str) -> int:
    if not token:
        return 0
    try:
        data = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        offset = int(data["o"])
        same = data.get("q") == query
    except Exception:
        raise InvalidArgument(f"pageToken {token!r} is not valid.") from None
    if offset < 0 or not same:
        raise InvalidArgument("pageToken does not belong to this list request (filter or orderBy changed).")
    return offset


def paginate(
    items: list[dict[str, Any]],
    *,
    filter_text: str | None,
    order_by: str | None,
    page_size: Any,
    page_token: str | None,
    id_key: str,
) -> tuple[list[dict[str, Any]], str | None]:
    """Filter, sort and cut one page; returns (page, nextPageToken or None)."""
    predicate = parse_filter(filter_text, id_key)
    order = parse_order(order_by)
    size = parse_page_size(page_size)
    query = f"{filter_text or ''}|{order_by or ''}"
    offset = decode_token(page_token, query)
    selected = [item for item in items if predicate(item)]
    for field, desc in reversed(order):
        selected.sort(key=_sort_key(field), reverse=desc)
    page = selected[offset : offset + size]
    next_token = encode_token(offset + size, query) if offset + size < len(selected) else None
    return page, next_token


def _sort_key(field: str) -> Callable[[dict[str, Any]], str]:
    return lambda item: str(item.get(field) or "")
