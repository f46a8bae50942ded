"""BigQuery table schemas: validation, legacy type names, DuckDB DDL types and Arrow types.

A schema is a list of BigQuery field dicts `{"name", "type", "mode"?, "fields"?, "description"?}`
with types as the user wrote them (`INT64` or `INTEGER`, `STRUCT` or `RECORD`, ...). Responses
use the legacy names (`legacy_schema`). Each field maps onto one DuckDB column type
(`duckdb_type`) and one Arrow type (`arrow_type`); REPEATED fields are lists, RECORDs structs.
"""

from __future__ import annotations

import re
from typing import Any

import pyarrow as pa

from loopml.errors import InvalidArgument

Field = dict[str, Any]

LEGACY = {
    "INT64": "INTEGER",
    "INTEGER": "INTEGER",
    "FLOAT64": "FLOAT",
    "FLOAT": "FLOAT",
    "BOOL": "BOOLEAN",
    "BOOLEAN": "BOOLEAN",
    "STRUCT": "RECORD",
    "RECORD": "RECORD",
    "STRING": "STRING",
    "BYTES": "BYTES",
    "NUMERIC": "NUMERIC",
    "BIGNUMERIC": "BIGNUMERIC",
    "TIMESTAMP": "TIMESTAMP",
    "DATE": "DATE",
    "TIME": "TIME",
    "DATETIME": "DATETIME",
    "GEOGRAPHY": "GEOGRAPHY",
    "JSON": "JSON",
}
"""Every accepted type name → its legacy (response) name."""

_DUCKDB = {
    "INTEGER": "BIGINT",
    "FLOAT": "DOUBLE",
    "BOOLEAN": "BOOLEAN",
    "STRING": "VARCHAR",
    "BYTES": "BLOB",
    "NUMERIC": "DECIMAL(38,9)",
    "BIGNUMERIC": "DECIMAL(38,9)",
    "TIMESTAMP": "TIMESTAMPTZ",
    "DATE": "DATE",
    "TIME": "TIME",
    "DATETIME": "TIMESTAMP",
    "GEOGRAPHY": "VARCHAR",
    "JSON": "JSON",
}

_ARROW: dict[str, pa.DataType] = {
    "INTEGER": pa.int64(),
    "FLOAT": pa.float64(),
    "BOOLEAN": pa.bool_(),
    "STRING": pa.string(),
    "BYTES": pa.binary(),
    "NUMERIC": pa.decimal128(38, 9),
    "BIGNUMERIC": pa.decimal128(38, 9),
    "TIMESTAMP": pa.timestamp("us", tz="UTC"),
    "DATE": pa.date32(),
    "TIME": pa.time64("us"),
    "DATETIME": pa.timestamp("us"),
    "GEOGRAPHY": pa.string(),
    "JSON": pa.string(),
}

MODES = ("NULLABLE", "REQUIRED", "REPEATED")
FIELD_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,299}\Z")


def legacy_type(type_name: str) -> str:
    return LEGACY[type_name.upper()]


def normalize_schema(fields: Any, *, where: str = "schema") -> list[Field]:
    """Validate a schema from a request; returns clean field dicts (types kept as written)."""
    if not isinstance(fields, list) or not fields:
        raise InvalidArgument(f"Invalid {where}: a table schema needs at least one field.")
    seen: set[str] = set()
    out: list[Field] = []
    for raw in fields:
        if not isinstance(raw, dict):
            raise InvalidArgument(f"Invalid {where}: each field must be an object, got {raw!r}.")
        name = raw.get("name")
        if not isinstance(name, str) or not FIELD_NAME_RE.match(name):
            raise InvalidArgument(
                f"Invalid field name {name!r} in {where}: use letters, digits and underscores, "
                "starting with a letter or underscore."
            )
        if name.lower() in seen:
            raise InvalidArgument(f"Duplicate field name {name!r} in {where}.")
        seen.add(name.lower())
        type_name = str(raw.get("type") or "").upper()
        if type_name not in LEGACY:
            raise InvalidArgument(
                f"Invalid type {raw.get('type')!r} for field {name!r}: expected one of {', '.join(LEGACY)}."
            )
        mode = str(raw.get("mode") or "NULLABLE").upper()
        if mode not in MODES:
            raise InvalidArgument(f"Invalid mode {raw.get('mode')!r} for field {name!r}: expected {MODES}.")
        field: Field = {"name": name, "type": type_name, "mode": mode}
        if LEGACY[type_name] == "RECORD":
            field["fields"] = normalize_schema(raw.get("fields"), where=f"record {name!r}")
        elif raw.get("fields"):
            raise InvalidArgument(f"Field {name!r} of type {type_name} cannot have sub-fields.")
        if raw.get("description"):
            field["description"] = str(raw["description"])
        out.append(field)
    return out


def legacy_schema(fields: list[Field]) -> list[Field]:
    """The schema as BigQuery responses show it: legacy type names, explicit modes."""
    out = []
    for f in fields:
        g: Field = {"name": f["name"], "type": legacy_type(f["type"]), "mode": f.get("mode", "NULLABLE")}
        if f.get("fields"):
            g["fields"] = legacy_schema(f["fields"])
        if f.get("description"):
            g["description"] = f["description"]
        out.append(g)
    return out


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def duckdb_type(field: Field, *, with_mode: bool = True) -> str:
    legacy = legacy_type(field["type"])
    if legacy == "RECORD":
        inner = ", ".join(f"{quote_ident(f['name'])} {duckdb_type(f)}" for f in field["fields"])
        base = f"STRUCT({inner})"
    else:
        base = _DUCKDB[legacy]
    if with_mode and field.get("mode") == "REPEATED":
        return base + "[]"
    return base


def column_ddl(field: Field) -> str:
    ddl = f"{quote_ident(field['name'])} {duckdb_type(field)}"
    if field.get("mode") == "REQUIRED":
        ddl += " NOT NULL"
    return ddl


def arrow_type(field: Field) -> pa.DataType:
    legacy = legacy_type(field["type"])
    if legacy == "RECORD":
        base: pa.DataType = pa.struct([arrow_field(f) for f in field["fields"]])
    else:
        base = _ARROW[legacy]
    if field.get("mode") == "REPEATED":
        return pa.list_(base)
    return base


def arrow_field(field: Field) -> pa.Field:
    return pa.field(field["name"], arrow_type(field), nullable=True)


def arrow_schema(fields: list[Field]) -> pa.Schema:
    return pa.schema([arrow_field(f) for f in fields])


def _type_from_arrow(t: pa.DataType) -> tuple[str, list[Field] | None]:
    if pa.types.is_boolean(t):
        return "BOOLEAN", None
    if pa.types.is_integer(t):
        return "INTEGER", None
    if pa.types.is_floating(t):
        return "FLOAT", None
    if pa.types.is_decimal(t):
        if t.scale == 0:
            return "INTEGER", None
        return ("NUMERIC" if t.scale <= 9 else "BIGNUMERIC"), None
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "STRING", None
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return "BYTES", None
    if pa.types.is_timestamp(t):
        return ("TIMESTAMP" if t.tz else "DATETIME"), None
    if pa.types.is_date(t):
        return "DATE", None
    if pa.types.is_time(t):
        return "TIME", None
    if pa.types.is_struct(t):
        return "RECORD", [field_from_arrow(t.field(i)) for i in range(t.num_fields)]
    if pa.types.is_null(t):
        return "STRING", None
    if isinstance(t, pa.ExtensionType):
        return _type_from_arrow(t.storage_type)
    return "STRING", None


def field_from_arrow(f: pa.Field) -> Field:
    """A BigQuery field (legacy names) for an Arrow field of a query result."""
    t = f.type
    mode = "NULLABLE"
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        t = t.value_type
        mode = "REPEATED"
    type_name, sub = _type_from_arrow(t)
    out: Field = {"name": f.name, "type": type_name, "mode": mode}
    if sub is not None:
        out["fields"] = sub
    return out


def schema_from_arrow(schema: pa.Schema) -> list[Field]:
    return [field_from_arrow(schema.field(i)) for i in range(len(schema))]


def add_columns(old: list[Field], new: list[Field]) -> list[Field]:
    """Patch semantics: `new` must keep every old field (same type) and may append NULLABLE ones."""
    by_name = {f["name"].lower(): f for f in new}
    for f in old:
        g = by_name.get(f["name"].lower())
        if g is None:
            raise InvalidArgument(
                f"Provided schema is missing field {f['name']!r}: fields cannot be dropped."
            )
        if legacy_type(g["type"]) != legacy_type(f["type"]) or g.get("mode") != f.get("mode"):
            raise InvalidArgument(f"Field {f['name']!r} changed type or mode; only new columns can be added.")
    old_names = {f["name"].lower() for f in old}
    added = [f for f in new if f["name"].lower() not in old_names]
    for f in added:
        if f.get("mode") == "REQUIRED":
            raise InvalidArgument(f"New field {f['name']!r} cannot be REQUIRED; add it as NULLABLE.")
    return added
