"""Streaming-insert coercion: JSON rows → Arrow columns, with BigQuery's insertAll rules.

`RowConverter(schema)` compiles one small function per field once; `convert(rows)` returns the
converted columns plus per-row errors `{"index", "errors": [{"reason": "invalid", "location",
"message"}]}`. Coercions: numeric strings into INTEGER/FLOAT/NUMERIC, `true`/`false` strings into
BOOLEAN, TIMESTAMP strings `YYYY-MM-DD[ T]HH:MM:SS[.ffffff][Z|±HH:MM| UTC]` (no offset = UTC) or
epoch seconds, DATE/TIME/DATETIME ISO strings, base64 BYTES, JSON values serialised to text,
nested objects and arrays for RECORD and REPEATED fields.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import math
from collections.abc import Callable
from decimal import Context, Decimal, InvalidOperation
from typing import Any

import orjson
import pyarrow as pa

from loopml.warehouse.schema import Field, arrow_type

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_US = dt.timedelta(microseconds=1)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_NUMERIC_Q = Decimal("1e-9")
_NUMERIC_MAX = Decimal("1e29")
_NUMERIC_CTX = Context(prec=40)


class RowError(Exception):
    def __init__(self, location: str, message: str) -> None:
        super().__init__(message)
        self.location = location
        self.message = message


Conv = Callable[[Any, str], Any]


def _int(v: Any, path: str) -> int:
    if type(v) is int:
        if _INT64_MIN <= v <= _INT64_MAX:
            return v
        raise RowError(path, f"Value {v} is out of range for INT64 field {path}.")
    if isinstance(v, str):
        try:
            return _int(int(v.strip()), path)
        except ValueError:
            try:
                f = float(v)
            except ValueError:
                raise RowError(path, f"Cannot convert value {v!r} to integer for field {path}.") from None
            v = f
    if isinstance(v, float) and v.is_integer():
        return _int(int(v), path)
    raise RowError(path, f"Cannot convert value {v!r} to integer for field {path}.")


def _float(v: Any, path: str) -> float:
    if type(v) is float:
        return v
    if type(v) is int:
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            pass
    raise RowError(path, f"Cannot convert value {v!r} to float for field {path}.")


def _bool(v: Any, path: str) -> bool:
    if type(v) is bool:
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "false", "1", "0"):
        return v.strip().lower() in ("true", "1")
    if type(v) is int and v in (0, 1):
        return bool(v)
    raise RowError(path, f"Cannot convert value {v!r} to boolean for field {path}.")


def _string(v: Any, path: str) -> str:
    if type(v) is str:
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    raise RowError(path, f"Cannot convert value {v!r} to string for field {path}.")


def _bytes(v: Any, path: str) -> bytes:
    if isinstance(v, bytes):
        return v
    if isinstance(v, str):
        try:
            return base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError):
            pass
    raise RowError(path, f"Field {path} is BYTES: send base64 text, not {v!r}.")


def _numeric(v: Any, path: str) -> Decimal:
    if isinstance(v, bool) or not isinstance(v, (int, float, str, Decimal)):
        raise RowError(path, f"Cannot convert value {v!r} to NUMERIC for field {path}.")
    try:
        d = Decimal(str(v).strip())
    except InvalidOperation:
        raise RowError(path, f"Cannot convert value {v!r} to NUMERIC for field {path}.") from None
    if not d.is_finite() or abs(d) >= _NUMERIC_MAX:
        raise RowError(path, f"Value {v!r} is out of range for NUMERIC field {path}.")
    return d.quantize(_NUMERIC_Q, context=_NUMERIC_CTX)


def parse_timestamp_micros(v: Any, path: str = "value") -> int:
    """Microseconds since the epoch for a BigQuery TIMESTAMP literal or epoch seconds."""
    if isinstance(v, bool):
        raise RowError(path, f"Cannot convert value {v!r} to TIMESTAMP for field {path}.")
    if isinstance(v, (int, float)):
        if not math.isfinite(v):
            raise RowError(path, f"Cannot convert value {v!r} to TIMESTAMP for field {path}.")
        return round(v * 1_000_000)
    if isinstance(v, dt.datetime):
        d = v
    elif isinstance(v, str):
        s = v.strip()
        if s.endswith(" UTC"):
            s = s[:-4]
        try:
            d = dt.datetime.fromisoformat(s)
        except ValueError:
            try:
                return round(float(s) * 1_000_000)
            except ValueError:
                raise RowError(
                    path,
                    f"Cannot convert value {v!r} to TIMESTAMP for field {path}: "
                    "use 'YYYY-MM-DD HH:MM:SS[.ffffff][+HH:MM]' or epoch seconds.",
                ) from None
    else:
        raise RowError(path, f"Cannot convert value {v!r} to TIMESTAMP for field {path}.")
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.UTC)
    return (d - _EPOCH) // _US


def _timestamp(v: Any, path: str) -> int:
    return parse_timestamp_micros(v, path)


def _cached_timestamps(size: int = 4096) -> Conv:
    """TIMESTAMP conversion remembering recent strings (events of one second share theirs)."""
    memo: dict[str, int] = {}

    def conv(v: Any, path: str) -> int:
        if type(v) is str:
            hit = memo.get(v)
            if hit is None:
                hit = parse_timestamp_micros(v, path)
                if len(memo) >= size:
                    memo.clear()
                memo[v] = hit
            return hit
        return parse_timestamp_micros(v, path)

    return conv


def _iso(kind: str, parse: Callable[[str], Any]) -> Conv:
    def conv(v: Any, path: str) -> Any:
        if isinstance(v, str):
            try:
                return parse(v.strip().replace(" ", "T", 1) if kind == "DATETIME" else v.strip())
            except ValueError:
                pass
        raise RowError(path, f"Cannot convert value {v!r} to {kind} for field {path}.")

    return conv


def _datetime_parse(s: str) -> dt.datetime:
    d = dt.datetime.fromisoformat(s)
    if d.tzinfo is not None:
        raise ValueError("DATETIME has no time zone")
    return d


def _json(v: Any, path: str) -> str:
    if isinstance(v, str):
        try:
            orjson.loads(v)
            return v
        except orjson.JSONDecodeError:
            return orjson.dumps(v).decode()
    return orjson.dumps(v).decode()


_SCALARS: dict[str, Conv] = {
    "INTEGER": _int,
    "FLOAT": _float,
    "BOOLEAN": _bool,
    "STRING": _string,
    "BYTES": _bytes,
    "NUMERIC": _numeric,
    "BIGNUMERIC": _numeric,
    "TIMESTAMP": _timestamp,
    "DATE": _iso("DATE", dt.date.fromisoformat),
    "TIME": _iso("TIME", dt.time.fromisoformat),
    "DATETIME": _iso("DATETIME", _datetime_parse),
    "GEOGRAPHY": _string,
    "JSON": _json,
}


class RowConverter:
    """Converts JSON rows for one table schema; build once per schema and reuse."""

    def __init__(self, schema: list[Field], *, ignore_unknown: bool = False) -> None:
        from loopml.warehouse.fastconv import compile_converter

        self.schema = schema
        self.ignore_unknown = ignore_unknown
        self.names = [f["name"] for f in schema]
        self.arrow_schema = pa.schema([pa.field(f["name"], arrow_type(f)) for f in schema])
        scalars = dict(_SCALARS, TIMESTAMP=_cached_timestamps())
        self._convert_one = compile_converter(schema, scalars, RowError, ignore_unknown=ignore_unknown)

    def convert_one(self, row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        """One row with every value coerced to its column type; raises RowError."""
        return self._convert_one(row, prefix)

    def convert(self, rows: list[Any]) -> tuple[list[dict[str, Any]], list[int], list[dict[str, Any]]]:
        """(converted rows, their indexes in `rows`, insert errors for the others)."""
        good: list[dict[str, Any]] = []
        kept: list[int] = []
        errors: list[dict[str, Any]] = []
        conv = self._convert_one
        for index, row in enumerate(rows):
            if type(row) is not dict:
                errors.append(_error(index, "", f"Row {index} is not a JSON object."))
                continue
            try:
                good.append(conv(row, ""))
                kept.append(index)
            except RowError as exc:
                errors.append(_error(index, exc.location, exc.message))
        return good, kept, errors

    def to_arrow(self, rows: list[dict[str, Any]]) -> pa.Table:
        return pa.Table.from_pylist(rows, schema=self.arrow_schema)


def _error(index: int, location: str, message: str) -> dict[str, Any]:
    return {"index": index, "errors": [{"reason": "invalid", "location": location, "message": message}]}


def stopped_error(index: int) -> dict[str, Any]:
    """The error BigQuery reports for a good row not inserted because another row failed."""
    return {"index": index, "errors": [{"reason": "stopped", "location": "", "message": ""}]}
