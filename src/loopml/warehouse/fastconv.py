"""Compile a row converter for one schema into straight-line Python (the streaming-insert hot path).

The generated function does, field by field, what the coercion functions in `coerce.py` do, but
inlines the common case (the value already has the right JSON type) and calls the coercion
function only otherwise. Generated code only ever contains field names as `repr()` string
literals and names of helpers from a fixed namespace, never user text as code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from loopml.warehouse.schema import Field, legacy_type

_FAST = {
    "INTEGER": "type({v}) is int and -9223372036854775808 <= {v} <= 9223372036854775807",
    "FLOAT": "type({v}) is float",
    "BOOLEAN": "type({v}) is bool",
    "STRING": "type({v}) is str",
    "GEOGRAPHY": "type({v}) is str",
}


class _Canon:
    def __init__(self, names: list[str], ignore_unknown: bool, error: type[Exception]) -> None:
        self.lower = {n.lower(): n for n in names}
        self.ignore_unknown = ignore_unknown
        self.error = error

    def __call__(self, row: dict[str, Any], prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in row.items():
            name = self.lower.get(key.lower()) if isinstance(key, str) else None
            if name is None:
                if self.ignore_unknown:
                    continue
                raise self.error(prefix + str(key), f"no such field: {prefix}{key}.")
            out[name] = value
        return out


class _Compiler:
    def __init__(
        self, scalars: dict[str, Callable[[Any, str], Any]], error: type[Exception], ignore: bool
    ) -> None:
        self.ns: dict[str, Any] = {"RowError": error}
        for kind, fn in scalars.items():
            self.ns[f"S_{kind}"] = fn
        self.ns["not_record"] = self._not_record
        self.ns["not_array"] = self._not_array
        self.error = error
        self.ignore = ignore
        self.sources: list[str] = []
        self.count = 0

    def _not_record(self, v: Any, path: str) -> None:
        raise self.error(path, f"Field {path} is a RECORD: expected a JSON object, got {v!r}.")

    def _not_array(self, v: Any, path: str) -> None:
        raise self.error(path, f"Field {path} is REPEATED: expected a JSON array, got {v!r}.")

    def _scalar(self, field: Field, var: str, path: str, lines: list[str], indent: str) -> None:
        """Lines converting the non-null value in `var` (path expression `path`) in place."""
        kind = legacy_type(field["type"])
        if kind == "RECORD":
            sub = self.record(field["fields"])
            lines.append(f"{indent}if type({var}) is not dict: not_record({var}, {path})")
            lines.append(f"{indent}{var} = {sub}({var}, {path} + '.')")
        elif kind == "INTEGER":  # JSON numbers, and the digit strings streaming clients often send
            lines.append(f"{indent}if not ({_FAST[kind].format(v=var)}):")
            lines.append(
                f"{indent}    if type({var}) is str and len({var}) < 19 and {var}.isascii() and {var}.isdigit(): "
                f"{var} = int({var})"
            )
            lines.append(f"{indent}    else: {var} = S_{kind}({var}, {path})")
        elif kind in _FAST:
            lines.append(f"{indent}if not ({_FAST[kind].format(v=var)}): {var} = S_{kind}({var}, {path})")
        else:
            lines.append(f"{indent}{var} = S_{kind}({var}, {path})")

    def record(self, fields: list[Field]) -> str:
        k = self.count
        self.count += 1
        names = [f["name"] for f in fields]
        self.ns[f"KNOWN_{k}"] = frozenset(names)
        self.ns[f"CANON_{k}"] = _Canon(names, self.ignore, self.error)
        lines = [
            f"def conv_{k}(row, prefix):",
            f"    if not KNOWN_{k}.issuperset(row): row = CANON_{k}(row, prefix)",
            "    g = row.get",
        ]
        for i, field in enumerate(fields):
            name = repr(field["name"])
            path = f"prefix + {name}"
            mode = field.get("mode", "NULLABLE")
            var = f"f{i}"
            lines.append(f"    {var} = g({name})")
            if mode == "REPEATED":
                lines.append(f"    if {var} is None: {var} = []")
                lines.append("    else:")
                lines.append(f"        if type({var}) is not list: not_array({var}, {path})")
                lines.append(f"        items = {var}; {var} = []")
                lines.append("        for i, x in enumerate(items):")
                lines.append(f"            p = {path} + '[' + str(i) + ']'")
                lines.append(
                    "            if x is None: raise RowError(p, 'Array field ' + "
                    f"{path} + ' cannot contain a NULL element.')"
                )
                self._scalar(field, "x", "p", lines, "            ")
                lines.append(f"            {var}.append(x)")
            elif mode == "REQUIRED":
                lines.append(
                    f"    if {var} is None: raise RowError({path}, 'Missing required field: ' + {path} + '.')"
                )
                self._scalar(field, var, path, lines, "    ")
            else:
                lines.append(f"    if {var} is not None:")
                self._scalar(field, var, path, lines, "        ")
        body = ", ".join(f"{f['name']!r}: f{i}" for i, f in enumerate(fields))
        lines.append(f"    return {{{body}}}")
        self.sources.append("\n".join(lines))
        return f"conv_{k}"


def compile_converter(
    schema: list[Field],
    scalars: dict[str, Callable[[Any, str], Any]],
    error: type[Exception],
    *,
    ignore_unknown: bool,
) -> Callable[[dict[str, Any], str], dict[str, Any]]:
    """A function `(row, prefix) -> converted row` raising `error(location, message)`."""
    compiler = _Compiler(scalars, error, ignore_unknown)
    top = compiler.record(schema)
    code = compile("\n\n".join(compiler.sources), "<loopml-row-converter>", "exec")
    exec(code, compiler.ns)
    fn: Callable[[dict[str, Any], str], dict[str, Any]] = compiler.ns[top]
    return fn
