"""BigQuery wire encodings: f/v rows out (§5 of the reference), query parameters in.

Every scalar cell is a string (INTEGER "1", FLOAT "0.5", BOOLEAN "true", BYTES base64, DATE
"2024-01-01", DATETIME "2024-01-01T10:00:00"); NULL is null; TIMESTAMP is int64 microseconds as a
string when `useInt64Timestamp` is set, else floating-point seconds; RECORD `{"v": {"f": [...]}}`,
REPEATED `{"v": [{"v": ...}]}`.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
from decimal import Context, Decimal, InvalidOperation
from typing import Any

import pyarrow as pa

from loopml.errors import InvalidArgument
from loopml.warehouse.coerce import _EPOCH, _US, RowError, parse_timestamp_micros
from loopml.warehouse.schema import Field, legacy_type

_WIDE = Context(prec=80)


def _ts_micros(value: Any) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return (value - _EPOCH) // _US
    raise TypeError(f"not a timestamp: {value!r}")


def _scalar(kind: str, value: Any, int64_ts: bool) -> str:
    if kind == "INTEGER":
        return str(int(value))
    if kind == "FLOAT":
        f = float(value)
        if math.isnan(f):
            return "NaN"
        if math.isinf(f):
            return "Infinity" if f > 0 else "-Infinity"
        return repr(f)
    if kind == "BOOLEAN":
        return "true" if value else "false"
    if kind == "BYTES":
        return base64.b64encode(value).decode()
    if kind in ("NUMERIC", "BIGNUMERIC"):
        d = value if isinstance(value, Decimal) else Decimal(str(value))
        return format(d.normalize(context=_WIDE), "f")
    if kind == "TIMESTAMP":
        micros = _ts_micros(value)
        return str(micros) if int64_ts else repr(micros / 1_000_000)
    if kind in ("DATE", "TIME", "DATETIME"):
        return str(value.isoformat())
    return str(value)


def encode_cell(field: Field, value: Any, int64_ts: bool) -> Any:
    if value is None:
        return None
    kind = legacy_type(field["type"])
    if field.get("mode") == "REPEATED":
        return [{"v": _encode_one(field, kind, v, int64_ts)} for v in value]
    return _encode_one(field, kind, value, int64_ts)


def _encode_one(field: Field, kind: str, value: Any, int64_ts: bool) -> Any:
    if value is None:
        return None
    if kind == "RECORD":
        return {"f": [{"v": encode_cell(sub, value.get(sub["name"]), int64_ts)} for sub in field["fields"]]}
    return _scalar(kind, value, int64_ts)


def encode_rows(table: pa.Table, schema: list[Field], *, int64_ts: bool = True) -> list[dict[str, Any]]:
    """Arrow rows → `[{"f": [{"v": ...}, ...]}]` in schema order."""
    columns: list[list[Any]] = []
    for field in schema:
        col = table.column(field["name"])
        if pa.types.is_timestamp(col.type) and legacy_type(field["type"]) == "TIMESTAMP":
            col = col.cast(pa.timestamp("us", tz=col.type.tz)).cast(pa.int64())
        columns.append(col.to_pylist())
    out = []
    for i in range(table.num_rows):
        out.append(
            {"f": [{"v": encode_cell(f, c[i], int64_ts)} for f, c in zip(schema, columns, strict=True)]}
        )
    return out


# -- query parameters ---------------------------------------------------------------------------
def _param_scalar(kind: str, value: Any, name: str) -> Any:
    if value is None:
        return None
    try:
        if kind in ("INT64", "INTEGER"):
            return int(value)
        if kind in ("FLOAT64", "FLOAT"):
            return float(value)
        if kind in ("BOOL", "BOOLEAN"):
            if isinstance(value, bool):
                return value
            return str(value).lower() == "true"
        if kind in ("NUMERIC", "BIGNUMERIC"):
            return Decimal(str(value))
        if kind == "TIMESTAMP":
            micros = parse_timestamp_micros(value, name)
            return _EPOCH + dt.timedelta(microseconds=micros)
        if kind == "DATETIME":
            return dt.datetime.fromisoformat(str(value).replace(" ", "T", 1))
        if kind == "DATE":
            return dt.date.fromisoformat(str(value))
        if kind == "TIME":
            return dt.time.fromisoformat(str(value))
        if kind == "BYTES":
            return base64.b64decode(str(value))
        if kind in ("STRING", "JSON", "GEOGRAPHY"):
            return str(value)
    except (ValueError, InvalidOperation, RowError) as exc:
        raise InvalidArgument(f"Invalid value {value!r} for {kind} query parameter {name}.") from exc
    raise InvalidArgument(f"Unsupported query parameter type {kind!r} for {name}.")


def _param_value(ptype: dict[str, Any], pvalue: dict[str, Any] | None, name: str) -> Any:
    kind = str(ptype.get("type") or "STRING").upper()
    pvalue = pvalue or {}
    if kind == "ARRAY":
        items = pvalue.get("arrayValues") or []
        return [_param_value(ptype.get("arrayType") or {}, item, name) for item in items]
    if kind == "STRUCT":
        values = pvalue.get("structValues") or {}
        return {
            st.get("name"): _param_value(st.get("type") or {}, values.get(st.get("name")), name)
            for st in ptype.get("structTypes") or []
        }
    return _param_scalar(kind, pvalue.get("value"), name)


def decode_parameters(
    mode: str | None, params: list[dict[str, Any]] | None
) -> dict[str, Any] | list[Any] | None:
    """REST `queryParameters` → a dict (NAMED) or a list (POSITIONAL) of Python values."""
    if not params:
        return None
    if not isinstance(params, list):
        raise InvalidArgument("queryParameters must be a list.")
    named = (mode or "").upper() == "NAMED" or (mode is None and all(p.get("name") for p in params))
    if named:
        out: dict[str, Any] = {}
        for p in params:
            name = p.get("name")
            if not name:
                raise InvalidArgument("Every NAMED query parameter needs a name.")
            out[str(name)] = _param_value(p.get("parameterType") or {}, p.get("parameterValue"), str(name))
        return out
    return [
        _param_value(p.get("parameterType") or {}, p.get("parameterValue"), f"#{i + 1}")
        for i, p in enumerate(params)
    ]


# -- decoding (CLI and tests) -------------------------------------------------------------------
def _decode_scalar(kind: str, value: str) -> Any:
    if kind == "INTEGER":
        return int(value)
    if kind == "FLOAT":
        return float(value)
    if kind == "BOOLEAN":
        return value == "true"
    if kind == "TIMESTAMP":
        seconds = int(value) / 1_000_000 if value.lstrip("-").isdigit() else float(value)
        return (_EPOCH + dt.timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")
    return value


def decode_cell(field: Field, cell: Any) -> Any:
    if cell is None:
        return None
    kind = legacy_type(field["type"])
    if field.get("mode") == "REPEATED":
        return [_decode_one(field, kind, item.get("v")) for item in cell]
    return _decode_one(field, kind, cell)


def _decode_one(field: Field, kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "RECORD":
        return {
            sub["name"]: decode_cell(sub, c.get("v"))
            for sub, c in zip(field["fields"], value["f"], strict=True)
        }
    return _decode_scalar(kind, value)


def decode_rows(rows: list[dict[str, Any]], schema: list[Field]) -> list[dict[str, Any]]:
    """`[{"f": [{"v": ...}]}]` → plain dicts (TIMESTAMPs as ISO strings in UTC)."""
    return [
        {f["name"]: decode_cell(f, c.get("v")) for f, c in zip(schema, row["f"], strict=True)} for row in rows
    ]
