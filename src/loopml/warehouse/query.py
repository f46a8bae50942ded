"""Running GoogleSQL statements on DuckDB: dispatch by statement type, DDL/DML bookkeeping, errors.

Each statement is offered to the registered statement handlers first (raw text plus the parsed
tree, or None when sqlglot cannot parse it: that is how `CREATE MODEL` reaches BigQuery ML).
Then table-function calls are substituted, names are resolved against the catalog, the tree is
rewritten for DuckDB and executed with bound parameters.
"""

from __future__ import annotations

import datetime as dt
import difflib
import logging
import re
import uuid
from typing import TYPE_CHECKING, Any

import duckdb
import orjson
import pyarrow as pa
from sqlglot import exp

from loopml.errors import AlreadyExists, InvalidQuery, LoopmlError, NotFound
from loopml.warehouse import translate
from loopml.warehouse.infoschema import information_schema
from loopml.warehouse.schema import quote_ident, schema_from_arrow
from loopml.warehouse.types import QueryContext, QueryResult, TableFunctionArgs

if TYPE_CHECKING:
    from loopml.warehouse.warehouse import Warehouse

log = logging.getLogger(__name__)

_DML = {exp.Insert: "INSERT", exp.Update: "UPDATE", exp.Delete: "DELETE", exp.Merge: "MERGE"}


def run(
    wh: Warehouse,
    sql: str,
    *,
    project: str,
    default_dataset: str | None = None,
    params: dict[str, Any] | list[Any] | None = None,
) -> QueryResult:
    if not isinstance(sql, str) or not sql.strip():
        raise InvalidQuery("Syntax error: the query is empty.")
    ctx = QueryContext(warehouse=wh, project=project, default_dataset=default_dataset, params=params)
    statements = translate.split_statements(sql)
    result: QueryResult | None = None
    for stmt in statements:
        result = _run_statement(wh, stmt, sql, ctx)
    assert result is not None
    if len(statements) > 1:
        result.statement_type = "SCRIPT" if result.statement_type != "SELECT" else "SELECT"
    return result


_ML_STATEMENT_RE = re.compile(r"^\s*(CREATE|DROP|EXPORT|ALTER)\b[^;]*?\bMODEL\b", re.I)


def dry_run(
    wh: Warehouse,
    sql: str,
    *,
    project: str,
    default_dataset: str | None = None,
    params: dict[str, Any] | list[Any] | None = None,
) -> QueryResult:
    """Validate without running: parse, resolve tables and, for a query, find its result schema."""
    if not isinstance(sql, str) or not sql.strip():
        raise InvalidQuery("Syntax error: the query is empty.")
    ctx = QueryContext(warehouse=wh, project=project, default_dataset=default_dataset, params=params)
    statements = translate.split_statements(sql)
    result = QueryResult.empty("SCRIPT")
    for stmt in statements:
        text, calls = translate.extract_table_functions(
            stmt.text, set(wh.table_functions), lambda parts, kind: ctx.resolve(parts, kind)
        )
        parsed, error = translate.try_parse(text)
        if parsed is None:
            match = _ML_STATEMENT_RE.match(stmt.text)
            if match and wh.statement_handlers:  # BigQuery ML statements are checked when they run
                result = QueryResult.empty(f"{match.group(1).upper()}_MODEL")
                continue
            assert error is not None
            raise translate.parse_error_to_invalid(error, script=sql, offset=stmt.offset)
        virtual = _resolve_tables(
            wh, parsed, ctx, skip_missing=isinstance(parsed, exp.Create), script=sql, stmt=stmt
        )
        if isinstance(parsed, exp.Query) and not calls:
            translate.name_anonymous_columns(parsed)
            translate.rewrite_functions(parsed)
            bound = _bind_params(parsed, ctx)
            cur = wh.cursor()
            names = []
            for table, arrow in virtual:
                name = f"__is_{uuid.uuid4().hex}"
                cur.register(name, arrow.slice(0, 0))
                names.append(name)
                table.set("db", None)
                table.set("this", exp.to_identifier(name, quoted=True))
            try:
                limited = exp.select("*").from_(parsed.subquery("q")).limit(0)
                limited_sql = limited.sql("duckdb")
                arrow = cur.sql(limited_sql, params=bound).to_arrow_table()
            except duckdb.Error as exc:
                raise _duckdb_error(exc, sql, stmt, limited_sql, cur) from exc
            finally:
                for name in names:
                    cur.unregister(name)
            result = QueryResult(schema=schema_from_arrow(arrow.schema), table=arrow, statement_type="SELECT")
        else:
            kind = str(parsed.args.get("kind", "")).upper()
            result = QueryResult.empty(
                _DML.get(type(parsed))
                or {exp.Export: "EXPORT_DATA", exp.Drop: f"DROP_{kind}", exp.Create: f"CREATE_{kind}"}.get(
                    type(parsed), "SELECT"
                )
            )
    return result


def _run_statement(wh: Warehouse, stmt: translate.Statement, script: str, ctx: QueryContext) -> QueryResult:
    parsed, error = translate.try_parse(stmt.text)
    for handler in wh.statement_handlers:
        handled = handler(stmt.text, parsed, ctx)
        if handled is not None:
            return handled
    names = set(wh.table_functions)
    text, calls = translate.extract_table_functions(
        stmt.text, names, lambda parts, kind: ctx.resolve(parts, kind)
    )
    if calls:
        parsed, error = translate.try_parse(text)
    if parsed is None:
        assert error is not None
        raise translate.parse_error_to_invalid(error, script, stmt.offset)
    return _execute(wh, parsed, calls, ctx, script, stmt)


def _resolve_tables(
    wh: Warehouse,
    tree: exp.Expression,
    ctx: QueryContext,
    *,
    skip_missing: bool = False,
    script: str = "",
    stmt: translate.Statement | None = None,
) -> list[tuple[exp.Table, pa.Table]]:
    """Point every table at its DuckDB schema; INFORMATION_SCHEMA views come back as Arrow tables."""
    virtual: list[tuple[exp.Table, pa.Table]] = []
    ctes = translate.cte_names(tree)
    for table in list(tree.find_all(exp.Table)):
        if not isinstance(table.this, exp.Identifier):
            continue
        name = table.name
        if not table.args.get("db") and (
            name.lower() in ctes or name.startswith(translate.PLACEHOLDER_PREFIX)
        ):
            continue
        parts = [
            p.name for p in (table.args.get("catalog"), table.args.get("db"), table.this) if p is not None
        ]
        p, d, t = ctx.resolve(parts, "table")
        if t.upper().startswith("INFORMATION_SCHEMA."):
            virtual.append((table, information_schema(wh, p, d, t.split(".", 1)[1].upper())))
            continue
        if not skip_missing and not wh.table_exists(p, d, t):
            wh.get_dataset(p, d)
            first = next(
                (n for n in (table.args.get("catalog"), table.args.get("db"), table.this) if n), None
            )
            start = first.meta.get("start") if first is not None else None
            where = translate.at(script, stmt.offset + start) if stmt and isinstance(start, int) else ""
            raise NotFound(f"Not found: Table {p}:{d}.{t} was not found in location US{where}")
        table.set("catalog", None)
        table.set("db", exp.to_identifier(f"{p}.{d}", quoted=True))
        table.set("this", exp.to_identifier(t, quoted=True))
    return virtual


def _target(tree: exp.Expression, ctx: QueryContext) -> tuple[str, str, str]:
    node = tree.this
    if isinstance(node, exp.Schema):
        node = node.this
    if not isinstance(node, exp.Table):
        raise InvalidQuery(f"Cannot find the target table of {tree.key.upper()}.")
    parts = [p.name for p in (node.args.get("catalog"), node.args.get("db"), node.this) if p is not None]
    return ctx.resolve(parts, "table")


def _bind_params(tree: exp.Expression, ctx: QueryContext) -> dict[str, Any] | list[Any] | None:
    named = {str(p.name).lower() for p in tree.find_all(exp.Parameter)}
    positional = sum(1 for _ in tree.find_all(exp.Placeholder))
    params = ctx.params
    if named and positional:
        raise InvalidQuery("Query mixes named (@x) and positional (?) parameters.")
    if named:
        given = {str(k).lower(): v for k, v in params.items()} if isinstance(params, dict) else {}
        missing = sorted(named - set(given))
        if missing:
            raise InvalidQuery(f"Query parameter '{missing[0]}' not found")
        for node in list(tree.find_all(exp.Parameter)):
            key = str(node.name).lower()
            node.set("this", exp.var(key))
            _typed(node, given[key])
        return {k: _bindable(given[k]) for k in named}
    if positional:
        values = list(params) if isinstance(params, list) else []
        if len(values) != positional:
            raise InvalidQuery(f"Query has {positional} positional parameters but {len(values)} were given.")
        for slot, value in zip(list(tree.find_all(exp.Placeholder, bfs=False)), values, strict=True):
            _typed(slot, value)
        return [_bindable(v) for v in values]
    return None


def _typed(node: exp.Expression, value: Any) -> None:
    """Time-zone-aware timestamps are bound as text and cast to TIMESTAMPTZ in the SQL."""
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        node.replace(exp.cast(node.copy(), exp.DataType.build("TIMESTAMPTZ")))


def _bindable(value: Any) -> Any:
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC).isoformat()
    return value


def _execute(
    wh: Warehouse,
    tree: exp.Expression,
    calls: list[translate.TableFunctionCall],
    ctx: QueryContext,
    script: str,
    stmt: translate.Statement,
) -> QueryResult:
    if isinstance(tree, exp.Export):
        from loopml.warehouse.export import export_data

        select = tree.this
        inner = _execute(wh, select, calls, ctx, script, stmt)
        return export_data(wh, tree, inner)
    if isinstance(tree, exp.Create) and str(tree.args.get("kind", "")).upper() == "SCHEMA":
        return _create_schema(wh, tree, ctx)
    if isinstance(tree, exp.Drop):
        return _drop(wh, tree, ctx)
    if not isinstance(tree, (exp.Query, exp.Create, exp.Insert, exp.Update, exp.Delete, exp.Merge)):
        raise InvalidQuery(f"Statement type {tree.key.upper()} is not supported by loopml.")

    target: tuple[str, str, str] | None = None
    if isinstance(tree, exp.Create):
        kind = str(tree.args.get("kind", "")).upper()
        if kind not in ("TABLE", "VIEW"):
            raise InvalidQuery(f"CREATE {kind} is not supported by loopml.")
        target = _target(tree, ctx)
        wh.get_dataset(target[0], target[1])
        fresh = not tree.args.get("replace") and not tree.args.get("exists")
        if kind == "TABLE" and fresh and wh.table_exists(*target):
            raise AlreadyExists("Already Exists: Table {}:{}.{}".format(*target))
    elif not isinstance(tree, exp.Query):
        target = _target(tree, ctx)
    virtual = _resolve_tables(
        wh, tree, ctx, skip_missing=isinstance(tree, exp.Create), script=script, stmt=stmt
    )
    if isinstance(tree, exp.Query):
        translate.name_anonymous_columns(tree)
    elif isinstance(tree, exp.Create) and isinstance(tree.expression, exp.Query):
        translate.name_anonymous_columns(tree.expression)
    translate.rewrite_functions(tree)
    params = _bind_params(tree, ctx)
    cur = wh.cursor()
    registered = _run_table_functions(wh, cur, tree, calls, ctx)
    for table, arrow in virtual:
        name = f"__is_{uuid.uuid4().hex}"
        cur.register(name, arrow)
        registered.append(name)
        if not table.alias:
            table.set("alias", exp.TableAlias(this=exp.to_identifier(table.name.split(".")[-1].lower())))
        table.set("catalog", None)
        table.set("db", None)
        table.set("this", exp.to_identifier(name, quoted=True))
    try:
        sql = tree.sql("duckdb")
        if isinstance(tree, exp.Query):
            try:
                arrow = cur.sql(sql, params=params).to_arrow_table()
            except duckdb.Error as exc:
                raise _duckdb_error(exc, script, stmt, sql, cur) from exc
            return QueryResult(schema=schema_from_arrow(arrow.schema), table=arrow, statement_type="SELECT")
        with wh.write_lock:
            try:
                rows = cur.execute(sql, params).fetchall()
            except duckdb.Error as exc:
                raise _duckdb_error(exc, script, stmt, sql, cur) from exc
            assert target is not None
            if isinstance(tree, exp.Create):
                kind = str(tree.args.get("kind", "")).upper()
                if kind == "TABLE":
                    wh.record_table(*target)
                wh.invalidate()
                as_select = tree.expression is not None
                stype = "CREATE_TABLE_AS_SELECT" if as_select and kind == "TABLE" else f"CREATE_{kind}"
                return QueryResult.empty(stype, destination=target, ddl_operation="CREATE")
            affected = int(rows[0][0]) if rows and rows[0] and isinstance(rows[0][0], int) else 0
            return QueryResult.empty(_DML[type(tree)], num_dml_affected_rows=affected, destination=target)
    finally:
        for name in registered:
            cur.unregister(name)


def _run_table_functions(
    wh: Warehouse,
    cur: duckdb.DuckDBPyConnection,
    tree: exp.Expression,
    calls: list[translate.TableFunctionCall],
    ctx: QueryContext,
) -> list[str]:
    registered: list[str] = []
    by_placeholder = {c.placeholder: c for c in calls}
    for table in list(tree.find_all(exp.Table)):
        call = by_placeholder.get(table.name) if not table.args.get("db") else None
        if call is None:
            continue
        fn = wh.table_functions[call.name]
        args = TableFunctionArgs(
            name=call.name,
            model=call.model,
            query=call.query,
            table=call.table,
            options=call.options,
            args=call.args,
        )
        result = fn(args, ctx)
        if isinstance(result, QueryResult):
            result = result.table
        if not isinstance(result, pa.Table):
            raise InvalidQuery(f"{call.name} returned no table.")
        name = f"__tf_{uuid.uuid4().hex}"
        cur.register(name, result)
        registered.append(name)
        if not table.alias:
            table.set("alias", exp.TableAlias(this=exp.to_identifier(call.name.split(".")[-1].lower())))
        table.set("this", exp.to_identifier(name, quoted=True))
    return registered


def _create_schema(wh: Warehouse, tree: exp.Create, ctx: QueryContext) -> QueryResult:
    node = tree.this
    parts = [p.name for p in (node.args.get("catalog"), node.args.get("db"), node.this) if p is not None]
    parts = [p for p in parts if p]
    project, dataset = (parts if len(parts) == 2 else [ctx.project, parts[-1]])[-2:]
    wh.create_dataset(project, dataset, exists_ok=bool(tree.args.get("exists")))
    return QueryResult.empty("CREATE_SCHEMA", ddl_operation="CREATE")


def _drop(wh: Warehouse, tree: exp.Drop, ctx: QueryContext) -> QueryResult:
    kind = str(tree.args.get("kind", "")).upper()
    if_exists = bool(tree.args.get("exists"))
    tables = tree.args.get("tables") or []
    node = tables[0] if tables else tree.this
    if not isinstance(node, exp.Expression):
        raise InvalidQuery(f"DROP {kind} needs a name.")
    parts = [p.name for p in (node.args.get("catalog"), node.args.get("db"), node.this) if p is not None]
    parts = [p for p in parts if p]
    if kind == "SCHEMA":
        project, dataset = (parts if len(parts) == 2 else [ctx.project, parts[-1]])[-2:]
        try:
            wh.delete_dataset(project, dataset, delete_contents=bool(tree.args.get("cascade")))
        except NotFound:
            if not if_exists:
                raise
        return QueryResult.empty("DROP_SCHEMA", ddl_operation="DROP")
    if kind not in ("TABLE", "VIEW"):
        raise InvalidQuery(f"DROP {kind} is not supported by loopml.")
    target = ctx.resolve(parts, "table")
    try:
        wh.delete_table(*target)
    except NotFound:
        if not if_exists:
            raise
    return QueryResult.empty(f"DROP_{kind}", destination=target, ddl_operation="DROP")


_LINE_RE = re.compile(r"\n?LINE \d+:.*", re.S)
_PREFIX_RE = re.compile(r"^(Binder|Parser|Conversion|Catalog|Invalid Input|Not implemented) Error: ")
_COLUMN_RE = re.compile(r'Referenced column "?([^"\s]+)"? not found')
_QUALIFIED_RE = re.compile(r'Table "([^"]+)" does not have a column named "([^"]+)"')
_QUALIFIER_RE = re.compile(r'Referenced table "([^"]+)" not found')
_FUNCTION_RE = re.compile(r"(Scalar|Aggregate|Table) Function with name (\S+) does not exist")
_GROUP_RE = re.compile(r'column "([^"]+)" must appear in the GROUP BY clause')
_CANDIDATE_RE = re.compile(r'Candidate bindings: [:\s]*"([^"]+)"')
_SIGNATURE_RE = re.compile(r'best candidate function for the function call "(.+?)\((.*)\)"')
UNKNOWN_POSITION = " [position unknown: DuckDB reports none for this error]"
UNMAPPED_POSITION = (
    " [position unknown: DuckDB's position in the translated SQL has no match in the query text]"
)


def _duckdb_error(
    exc: duckdb.Error,
    script: str,
    stmt: translate.Statement,
    sql: str | None = None,
    cur: duckdb.DuckDBPyConnection | None = None,
) -> LoopmlError:
    """A 400 naming the problem and its line and column in the user's GoogleSQL text.

    DuckDB runs the translated SQL, so its positions are not the user's: names it reports
    (columns, tables, functions) are looked up in the original statement, and a parser error's
    offset (from `json_serialize_sql`) is mapped back token by token. When neither works, the
    message says the position is unknown instead of pointing at the wrong place.
    """
    raw = str(exc)
    full = _LINE_RE.sub("", raw).strip().replace("_loopml", "catalog")
    full = re.sub(r'"__tf_[0-9a-f]+"|__tf_[0-9a-f]+', "table function", full)
    head = _PREFIX_RE.sub("", full.splitlines()[0] if full else full).strip()
    text, base = stmt.text, stmt.offset

    def where(offset: int | None, unknown: str = UNMAPPED_POSITION) -> str:
        return translate.at(script, None if offset is None else base + offset) or unknown

    if m := _COLUMN_RE.search(full):
        name = m.group(1)
        hint = _CANDIDATE_RE.search(full)
        close = hint and difflib.get_close_matches(name.lower(), [hint.group(1).lower()], cutoff=0.6)
        did = f"; Did you mean {hint.group(1)}?" if hint and close else ""
        return InvalidQuery(f"Unrecognized name: {name}{did}{where(translate.find_name(text, name))}")
    if m := _QUALIFIED_RE.search(full):
        table, name = m.group(1), m.group(2)
        found = translate.find_name(text, name, qualifier=table)
        return InvalidQuery(f"Name {name} not found inside {table}{where(found)}")
    if m := _QUALIFIER_RE.search(full):
        name = m.group(1)
        found = translate.find_name(text, name, qualifier=None)
        return InvalidQuery(f"Unrecognized name: {name}{where(found)}")
    if m := _FUNCTION_RE.search(full):
        name = m.group(2)
        kind = "Table-valued function" if m.group(1) == "Table" else "Function"
        found = translate.find_name(text, name, call=True)
        if found is not None and text[found : found + len(name)].lower() == name.lower():
            name = text[found : found + len(name)]  # as the user spelt it (DuckDB lower-cases it)
        return InvalidQuery(f"{kind} not found: {name}{where(found)}")
    if m := _GROUP_RE.search(full):
        name = m.group(1)
        return InvalidQuery(
            f"SELECT list expression references column {name} which is neither grouped nor aggregated"
            f"{where(translate.find_name(text, name))}"
        )
    if isinstance(exc, duckdb.ParserException) and sql is not None:
        offset = _parser_offset(cur, sql)
        found = translate.map_translated_offset(text, sql, offset) if offset is not None else None
        near = re.search(r'at or near "([^"]*)"', head)
        detail = f'syntax error at or near "{near.group(1)}"' if near else head
        return InvalidQuery(
            "Syntax error: the statement was translated to DuckDB SQL, which DuckDB cannot parse "
            f"({detail}){where(found, UNMAPPED_POSITION if offset is not None else UNKNOWN_POSITION)}"
        )
    if m := _SIGNATURE_RE.search(full):
        return InvalidQuery(
            f"No matching signature for {m.group(1)} for argument types: {m.group(2)}; "
            f"add explicit CASTs{UNKNOWN_POSITION}"
        )
    return InvalidQuery(f"{head}{UNKNOWN_POSITION}")


def _parser_offset(cur: duckdb.DuckDBPyConnection | None, sql: str) -> int | None:
    """The 0-based offset DuckDB's parser reports for `sql` (None when it reports none)."""
    if cur is None:
        return None
    try:
        rows = cur.execute("SELECT json_serialize_sql(?)", [sql]).fetchall()
        row = rows[0] if rows else None
        info = orjson.loads(row[0]) if row and isinstance(row[0], str) else {}
        return int(info["position"]) if info.get("error") and "position" in info else None
    except (duckdb.Error, ValueError, KeyError, TypeError):
        return None


def quote_table(project: str, dataset: str, table: str) -> str:
    return f"{quote_ident(f'{project}.{dataset}')}.{quote_ident(table)}"
