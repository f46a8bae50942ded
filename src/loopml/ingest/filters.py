"""Small, safe expressions: Pub/Sub subscription filters and loopml's inference mappings.

Grammar (case-insensitive keywords):
    expr    := or
    or      := and ("OR" and)*
    and     := unary ("AND" unary)*
    unary   := "NOT" unary | "-" unary | primary
    primary := "(" expr ")" | "hasPrefix" "(" path "," string ")" | path ":" name
             | operand (("=" | "!=" | "<" | "<=" | ">" | ">=") operand)?
    operand := path | string | number | true | false | null
    path    := name ("." name | "[" integer "]")*

`attributes.k = "v"`, `attributes:k`, `NOT attributes.k = "v"`, `event = "purchase"`,
`prediction.nearest_centroid_id[0] == 1` (`==` is accepted for `=`). Paths are looked up in a
dict environment; a missing path is None (so `x = "v"` is false and `x != "v"` is true).
Nothing is ever evaluated with `eval`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loopml.errors import InvalidArgument

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<num>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)
      | (?P<op>==|!=|<=|>=|=|<|>|\(|\)|,|:|\[|\]|\.|-)
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*|`[^`]+`)
    )""",
    re.VERBOSE,
)

Node = Callable[[dict[str, Any]], Any]
_MISSING = None


@dataclass(frozen=True)
class Path:
    parts: tuple[str | int, ...]

    def get(self, env: Any) -> Any:
        value = env
        for part in self.parts:
            if isinstance(part, int):
                if isinstance(value, list) and -len(value) <= part < len(value):
                    value = value[part]
                else:
                    return _MISSING
            elif isinstance(value, dict) and part in value:
                value = value[part]
            else:
                return _MISSING
        return value

    def __str__(self) -> str:
        return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in self.parts).lstrip(".")


def parse_path(text: str) -> Path:
    parser = _Parser(text)
    path = parser.path()
    parser.expect_end()
    return path


def _compare(op: str, left: Any, right: Any) -> bool:
    if op == "=":
        return bool(_equal(left, right))
    if op == "!=":
        return not _equal(left, right)
    if left is None or right is None:
        return False
    try:
        if isinstance(left, str) != isinstance(right, str):
            left, right = float(left), float(right)
        if op == "<":
            return bool(left < right)
        if op == "<=":
            return bool(left <= right)
        if op == ">":
            return bool(left > right)
        return bool(left >= right)
    except (TypeError, ValueError):
        return False


def _equal(left: Any, right: Any) -> bool:
    if isinstance(left, bool) or isinstance(right, bool):
        return left is right or (left == right and type(left) is type(right))
    if isinstance(left, int | float) and isinstance(right, int | float):
        return float(left) == float(right)
    return bool(left == right)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        text = text.rstrip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                raise InvalidArgument(f"Invalid expression {self.text!r}: unexpected text at {text[pos:]!r}.")
            kind = m.lastgroup or ""
            self.tokens.append((kind, m.group(kind)))
            pos = m.end()
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise InvalidArgument(f"Invalid expression {self.text!r}: it ends too early.")
        self.i += 1
        return tok

    def accept(self, value: str) -> bool:
        tok = self.peek()
        if tok is not None and tok[1].upper() == value.upper() and tok[0] in ("op", "name"):
            self.i += 1
            return True
        return False

    def expect(self, value: str) -> None:
        if not self.accept(value):
            got = self.peek()
            raise InvalidArgument(
                f"Invalid expression {self.text!r}: expected {value!r}, got {got[1] if got else 'the end'!r}."
            )

    def expect_end(self) -> None:
        if self.peek() is not None:
            raise InvalidArgument(f"Invalid expression {self.text!r}: unexpected {self.peek()[1]!r}.")  # type: ignore[index]

    def expr(self) -> Node:
        left = self.and_()
        while self.accept("OR"):
            right = self.and_()
            left = (lambda a, b: lambda env: bool(a(env)) or bool(b(env)))(left, right)
        return left

    def and_(self) -> Node:
        left = self.unary()
        while self.accept("AND"):
            right = self.unary()
            left = (lambda a, b: lambda env: bool(a(env)) and bool(b(env)))(left, right)
        return left

    def unary(self) -> Node:
        if self.accept("NOT"):
            inner = self.unary()
            return lambda env: not inner(env)
        return self.primary()

    def primary(self) -> Node:
        if self.accept("("):
            node = self.expr()
            self.expect(")")
            return node
        tok = self.peek()
        if tok and tok[0] == "name" and tok[1].lower() == "hasprefix":
            self.take()
            self.expect("(")
            path = self.path()
            self.expect(",")
            prefix = self.literal()
            self.expect(")")
            return lambda env: isinstance(v := path.get(env), str) and v.startswith(str(prefix))
        left = self.operand()
        tok = self.peek()
        if tok and tok[1] == ":" and isinstance(left, Path):
            self.take()
            key = self.take()[1].strip("`\"'")
            return lambda env: isinstance(m := left.get(env), dict) and key in m
        if tok and tok[1] in ("=", "==", "!=", "<", "<=", ">", ">="):
            op = "=" if tok[1] == "==" else tok[1]
            self.take()
            right = self.operand()
            lf, rf = _getter(left), _getter(right)
            return lambda env: _compare(op, lf(env), rf(env))
        return _getter(left)

    def operand(self) -> Any:
        tok = self.peek()
        if tok and tok[0] == "name" and tok[1].lower() not in ("true", "false", "null"):
            return self.path()
        return _Literal(self.literal())

    def literal(self) -> Any:
        kind, text = self.take()
        if kind == "str":
            body = text[1:-1]
            return re.sub(r"\\(.)", r"\1", body)
        if kind == "num":
            return float(text) if any(c in text for c in ".eE") else int(text)
        if kind == "op" and text == "-":
            value = self.literal()
            if not isinstance(value, int | float):
                raise InvalidArgument(f"Invalid expression {self.text!r}: '-' must precede a number.")
            return -value
        if kind == "name" and text.lower() in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[text.lower()]
        raise InvalidArgument(f"Invalid expression {self.text!r}: expected a value, got {text!r}.")

    def path(self) -> Path:
        kind, text = self.take()
        if kind != "name":
            raise InvalidArgument(f"Invalid expression {self.text!r}: expected a field name, got {text!r}.")
        parts: list[str | int] = [text.strip("`")]
        while True:
            if self.accept("."):
                kind, text = self.take()
                if kind != "name":
                    raise InvalidArgument(f"Invalid expression {self.text!r}: bad field name {text!r}.")
                parts.append(text.strip("`"))
            elif self.accept("["):
                sign = -1 if self.accept("-") else 1
                kind, text = self.take()
                if kind != "num" or not text.isdigit():
                    raise InvalidArgument(f"Invalid expression {self.text!r}: index must be an integer.")
                parts.append(sign * int(text))
                self.expect("]")
            else:
                return Path(tuple(parts))


@dataclass(frozen=True)
class _Literal:
    value: Any


def _getter(operand: Any) -> Node:
    if isinstance(operand, Path):
        return operand.get
    value = operand.value
    return lambda _env: value


def compile_expression(text: str, what: str = "expression") -> Node:
    """Compile an expression to a function of an environment dict; a 400 names `what` on error."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidArgument(f"Invalid {what}: it must be a non-empty string.")
    try:
        parser = _Parser(text)
        node = parser.expr()
        parser.expect_end()
    except InvalidArgument as exc:
        raise InvalidArgument(f"Invalid {what}: {exc.message}") from exc
    return node
