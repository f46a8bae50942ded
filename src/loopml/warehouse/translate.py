"""GoogleSQL text → DuckDB: statement splitting, table-function extraction, name resolution.

Positions reported to users are always positions in the text they sent: statements are split on
top-level semicolons with sqlglot's tokenizer, and table-function calls (`ML.PREDICT(...)`) are
replaced by a placeholder padded to the same length, with the same line breaks, so a parse error
after the substitution still points at the right line and column.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.dialects.bigquery import BigQuery
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import Token, TokenType

from loopml.errors import InvalidQuery

_DIALECT = BigQuery()
PLACEHOLDER_PREFIX = "__tf"


@dataclasses.dataclass
class Statement:
    text: str
    offset: int
    """Offset of the statement in the whole script (for error positions)."""


@dataclasses.dataclass
class TableFunctionCall:
    """A table-valued function call found in a statement, e.g. `ML.PREDICT(MODEL m, (SELECT ...))`."""

    name: str
    placeholder: str
    model: tuple[str, str, str] | None = None
    query: str | None = None
    table: tuple[str, str, str] | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    args: list[str] = dataclasses.field(default_factory=list)

    @property
    def model_name(self) -> str | None:
        return ".".join(self.model) if self.model else None


def position(text: str, offset: int) -> tuple[int, int]:
    """1-based (line, column) of an offset."""
    before = text[:offset]
    line = before.count("\n") + 1
    col = offset - (before.rfind("\n") + 1) + 1
    return line, col


def tokenize(text: str, *, base: str | None = None, offset: int = 0) -> list[Token]:
    try:
        return list(_DIALECT.tokenize(text))
    except TokenError as exc:
        raise InvalidQuery(f"Syntax error: {exc}") from exc


def split_statements(sql: str) -> list[Statement]:
    tokens = tokenize(sql)
    out: list[Statement] = []
    start = 0
    for tok in tokens:
        if tok.token_type == TokenType.SEMICOLON:
            if sql[start : tok.start].strip():
                out.append(Statement(sql[start : tok.start], start))
            start = tok.end + 1
    if sql[start:].strip():
        out.append(Statement(sql[start:], start))
    if not out:
        raise InvalidQuery("Syntax error: the query is empty.")
    return out


def parse_error_to_invalid(exc: ParseError, script: str, offset: int) -> InvalidQuery:
    """An InvalidQuery naming the line and column in the user's script."""
    errors = getattr(exc, "errors", None) or []
    first = errors[0] if errors else {}
    desc = str(first.get("description") or exc).split("<Token")[0].strip().rstrip(":")
    desc = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", desc)  # sqlglot's node class, by name
    line, col = first.get("line"), first.get("col")
    if isinstance(line, int) and isinstance(col, int):
        highlight = str(first.get("highlight") or "")
        stmt_line, stmt_col = position(script, offset)
        abs_line = stmt_line + line - 1
        start_col = col - len(highlight) + 1 if highlight else col
        abs_col = start_col + (stmt_col - 1 if line == 1 else 0)
        got = f" near {highlight!r}" if highlight else ""
        return InvalidQuery(f"Syntax error: {desc}{got} at [{abs_line}:{abs_col}]")
    return InvalidQuery(f"Syntax error: {desc}")


def try_parse(text: str) -> tuple[exp.Expression | None, ParseError | None]:
    try:
        parsed = sqlglot.parse(text, read="bigquery")
    except ParseError as exc:
        return None, exc
    except TokenError as exc:
        return None, ParseError(str(exc))
    statements = [p for p in parsed if isinstance(p, exp.Expression)]
    if len(statements) != 1:
        return None, ParseError("expected exactly one statement")
    return statements[0], None


def _ident_parts(tokens: list[Token]) -> list[str]:
    parts: list[str] = []
    for tok in tokens:
        if tok.token_type == TokenType.DOT:
            continue
        parts.extend(p for p in tok.text.split(".") if p)
    return parts


def _literal(node: exp.Expression) -> Any:
    if isinstance(node, exp.Boolean):
        return bool(node.this)
    if isinstance(node, exp.Null):
        return None
    if isinstance(node, exp.Literal):
        if node.is_string:
            return node.this
        text = str(node.this)
        try:
            return int(text)
        except ValueError:
            return float(text)
    if isinstance(node, exp.Neg):
        value = _literal(node.this)
        return -value if isinstance(value, (int, float)) else node.sql("bigquery")
    if isinstance(node, exp.Array):
        return [_literal(e) for e in node.expressions]
    if isinstance(node, exp.Tuple):
        return [_literal(e) for e in node.expressions]
    return node.sql("bigquery")


def struct_options(text: str) -> dict[str, Any]:
    """`STRUCT(0.02 AS contamination, TRUE AS standardize)` → {"contamination": 0.02, ...}."""
    try:
        node = sqlglot.parse_one("SELECT " + text, read="bigquery")
    except ParseError as exc:
        raise InvalidQuery(f"Syntax error in STRUCT argument {text!r}: {exc}") from exc
    struct = node.expressions[0] if node.expressions else None
    if not isinstance(struct, exp.Struct):
        raise InvalidQuery(f"Expected STRUCT(... AS name) options, got {text!r}.")
    out: dict[str, Any] = {}
    for item in struct.expressions:
        if isinstance(item, (exp.PropertyEQ, exp.EQ)):
            out[str(item.this.name).lower()] = _literal(item.expression)
        elif isinstance(item, exp.Alias):
            out[str(item.alias).lower()] = _literal(item.this)
        else:
            raise InvalidQuery(
                f"Each STRUCT option needs a name (`value AS name`), got {item.sql('bigquery')!r}."
            )
    return out


def extract_table_functions(
    text: str,
    names: set[str],
    resolve: Any,
) -> tuple[str, list[TableFunctionCall]]:
    """Replace each call of a registered table function by a same-length placeholder."""
    tokens = tokenize(text)
    calls: list[TableFunctionCall] = []
    pieces: list[str] = []
    last = 0
    i = 0
    while i < len(tokens) - 3:
        a, dot, b, lp = tokens[i : i + 4]
        if not (
            dot.token_type == TokenType.DOT
            and lp.token_type == TokenType.L_PAREN
            and a.token_type in (TokenType.VAR, TokenType.IDENTIFIER)
            and f"{a.text}.{b.text}".upper() in names
        ):
            i += 1
            continue
        depth, j = 0, i + 3
        args: list[list[Token]] = [[]]
        while j < len(tokens):
            tt = tokens[j].token_type
            if tt == TokenType.L_PAREN:
                depth += 1
                if depth == 1:
                    j += 1
                    continue
            elif tt == TokenType.R_PAREN:
                depth -= 1
                if depth == 0:
                    break
            elif tt == TokenType.COMMA and depth == 1:
                args.append([])
                j += 1
                continue
            args[-1].append(tokens[j])
            j += 1
        if depth != 0:
            line, col = position(text, lp.start)
            raise InvalidQuery(f"Syntax error: unclosed parenthesis of {a.text}.{b.text} at [{line}:{col}]")
        end = tokens[j].end + 1
        placeholder = f"{PLACEHOLDER_PREFIX}{len(calls)}"
        call = TableFunctionCall(name=f"{a.text}.{b.text}".upper(), placeholder=placeholder)
        for arg in args:
            if not arg:
                continue
            raw = text[arg[0].start : arg[-1].end + 1]
            call.args.append(raw)
            head = arg[0].token_type
            if head == TokenType.MODEL:
                call.model = resolve(_ident_parts(arg[1:]), "model")
            elif head == TokenType.TABLE:
                call.table = resolve(_ident_parts(arg[1:]), "table")
                call.query = "SELECT * FROM `{}`".format(".".join(call.table))
            elif head == TokenType.L_PAREN and arg[-1].token_type == TokenType.R_PAREN:
                call.query = text[arg[0].end + 1 : arg[-1].start]
            elif head == TokenType.STRUCT:
                call.options.update(struct_options(raw))
        span = text[a.start : end]
        pad = "".join("\n" if ch == "\n" else " " for ch in span[len(placeholder) :])
        if len(span) < len(placeholder):  # pragma: no cover - calls are always longer
            pad = ""
        pieces.append(text[last : a.start])
        pieces.append(placeholder + pad)
        last = end
        calls.append(call)
        i = j + 1
    pieces.append(text[last:])
    return "".join(pieces), calls


def cte_names(tree: exp.Expression) -> set[str]:
    return {str(cte.alias).lower() for cte in tree.find_all(exp.CTE)}


# number literals in these are syntax (sample sizes, options, intervals), not FLOAT64 values
_NOT_VALUES = (exp.TableSample, exp.Property, exp.Properties, exp.Interval, exp.Limit, exp.Offset, exp.Fetch)


def rewrite_functions(tree: exp.Expression) -> exp.Expression:
    """BigQuery semantics DuckDB spells differently (DAYOFWEEK is 1 = Sunday in BigQuery)."""

    def fix(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Extract) and isinstance(node.this, exp.Var):
            unit = str(node.this.this).upper()
            if unit == "DAYOFWEEK":
                return exp.Paren(this=exp.Add(this=node.copy(), expression=exp.Literal.number(1)))
            if unit in ("DATE", "TIME", "DATETIME"):
                target = {"DATE": "DATE", "TIME": "TIME", "DATETIME": "TIMESTAMP"}[unit]
                return exp.cast(node.expression.copy(), exp.DataType.build(target))
        if isinstance(node, exp.FarmFingerprint):
            # not FarmHash: DuckDB's 64-bit hash, halved to fit INT64 (deterministic, documented)
            arg = node.expressions[0].copy() if node.expressions else exp.null()
            hashed = exp.Anonymous(this="hash", expressions=[arg])
            half = exp.IntDiv(this=hashed, expression=exp.Literal.number(2))
            return exp.cast(half, exp.DataType.build("BIGINT"))
        if type(node) is exp.StrToTime:  # PARSE_TIMESTAMP: a TIMESTAMP (UTC), not a DATETIME
            return exp.cast(node.copy(), exp.DataType.build("TIMESTAMPTZ"))
        if isinstance(node, exp.TableSample) and str(node.args.get("method") or "").upper() == "SYSTEM":
            node.set("method", exp.var("BERNOULLI"))
        if (
            isinstance(node, exp.Literal)
            and node.is_number
            and not node.is_int
            and node.find_ancestor(*_NOT_VALUES) is None
        ):  # `1.5` is a FLOAT64 in BigQuery; DuckDB would make it a DECIMAL (NUMERIC)
            return exp.cast(node.copy(), exp.DataType.build("DOUBLE"))
        return node

    return tree.transform(fix, copy=False)


def name_anonymous_columns(tree: exp.Expr) -> None:
    """BigQuery names unnamed result columns f0_, f1_, ... (counting only the unnamed ones)."""
    for node in list(tree.find_all(exp.Select)):
        _name_select(node)


def _name_select(node: exp.Select) -> None:
    n = 0
    for i, item in enumerate(list(node.expressions)):
        if isinstance(item, (exp.Alias, exp.Column, exp.Star)) or item.is_star:
            continue
        if isinstance(item, exp.Dot):  # struct.field keeps the field's name
            continue
        node.expressions[i] = exp.alias_(item, f"f{n}_")
        n += 1


# -- positions of names and tokens in the user's text (for errors the SQL engine reports) --------


def _tokens_or_none(text: str, dialect: Any = _DIALECT) -> list[Token] | None:
    try:
        return list(dialect.tokenize(text))
    except TokenError:
        return None


def find_name(text: str, name: str, *, qualifier: str | None = None, call: bool = False) -> int | None:
    """Offset in `text` of the identifier `name` (case-insensitive), never inside a string or comment.

    With `qualifier`, the name must follow `qualifier.`; with `call`, it must be a function name
    (followed by `(`). An unqualified search prefers an occurrence that is not itself qualified.
    """
    tokens = _tokens_or_none(text)
    if not tokens:
        return None
    want = name.lower()
    loose: int | None = None
    for i, tok in enumerate(tokens):
        if tok.token_type == TokenType.STRING or tok.text.lower() != want:
            continue
        prev = tokens[i - 1] if i else None
        after_dot = prev is not None and prev.token_type == TokenType.DOT
        if call:
            if i + 1 < len(tokens) and tokens[i + 1].token_type == TokenType.L_PAREN:
                return tok.start
            continue
        if qualifier is not None:
            if after_dot and i >= 2 and tokens[i - 2].text.lower() == qualifier.lower():
                return tok.start
            continue
        if not after_dot:
            return tok.start
        loose = tok.start if loose is None else loose
    return loose


def map_translated_offset(original: str, translated: str, offset: int) -> int | None:
    """Where the token at `offset` of the translated (DuckDB) SQL stands in the original text.

    Tokens are matched by text and by order: the k-th occurrence of a token in the translated
    SQL is the k-th in the original when both have it equally often, or the only one when the
    original has it once. Anything else is unknown (None): the translation moved or renamed it.
    """
    from sqlglot.dialects.duckdb import DuckDB

    out_tokens = _tokens_or_none(translated, DuckDB())
    in_tokens = _tokens_or_none(original)
    if not out_tokens or not in_tokens:
        return None
    hit = next((t for t in out_tokens if t.start <= offset <= t.end), None)
    if hit is None:
        hit = next((t for t in out_tokens if t.start >= offset), None)
    if hit is None or hit.token_type == TokenType.STRING:
        return None
    key = hit.text.upper()
    before = sum(1 for t in out_tokens if t.text.upper() == key and t.start < hit.start)
    same_out = sum(1 for t in out_tokens if t.text.upper() == key)
    same_in = [t for t in in_tokens if t.text.upper() == key and t.token_type != TokenType.STRING]
    if len(same_in) == same_out:
        return same_in[before].start
    if len(same_in) == 1:
        return same_in[0].start
    return None


def at(script: str, offset: int | None) -> str:
    """` at [line:col]` for an offset in the whole script, or "" when the offset is unknown."""
    if offset is None:
        return ""
    line, col = position(script, offset)
    return f" at [{line}:{col}]"
