"""A small scanner for the parts of BigQuery ML statements sqlglot does not parse.

It understands exactly what the statement headers need: whitespace and comments (`--`, `#`,
`/* */`), keywords, dotted paths (`p.ds.m`, `` `p.ds.m` ``, `my-project.ds.m`), literals
(strings in every BigQuery quoting form, numbers, TRUE/FALSE/NULL, `[...]` arrays) and balanced
parentheses. Everything after `AS` is handed to the warehouse untouched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from loopml.errors import InvalidQuery

_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER_RE = re.compile(r"[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)")
_SEGMENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class Call:
    """An option value written as a function call, e.g. `HPARAM_RANGE(2, 10)` (kept as text)."""

    name: str
    text: str


class Scanner:
    """A cursor over SQL text; methods consume input or raise InvalidQuery naming the position."""

    def __init__(self, text: str, pos: int = 0) -> None:
        self.text = text
        self.pos = pos

    # -- position and errors ---------------------------------------------------------------
    def error(self, message: str) -> InvalidQuery:
        line = self.text.count("\n", 0, self.pos) + 1
        col = self.pos - (self.text.rfind("\n", 0, self.pos) + 1) + 1
        return InvalidQuery(f"Syntax error: {message} at [{line}:{col}]")

    def at_end(self) -> bool:
        self.skip()
        return self.pos >= len(self.text)

    def skip(self) -> None:
        """Skip whitespace and comments."""
        text, n = self.text, len(self.text)
        while self.pos < n:
            ch = text[self.pos]
            if ch.isspace():
                self.pos += 1
            elif text.startswith("--", self.pos) or ch == "#":
                end = text.find("\n", self.pos)
                self.pos = n if end < 0 else end + 1
            elif text.startswith("/*", self.pos):
                end = text.find("*/", self.pos + 2)
                if end < 0:
                    raise self.error("unterminated comment")
                self.pos = end + 2
            else:
                return

    def peek_char(self) -> str:
        self.skip()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    # -- keywords and punctuation ----------------------------------------------------------
    def peek_word(self) -> str:
        self.skip()
        m = _IDENT_RE.match(self.text, self.pos)
        return m.group(0).upper() if m else ""

    def accept(self, *words: str) -> bool:
        """Consume the keyword sequence if it is next (case-insensitive)."""
        start = self.pos
        for word in words:
            if self.peek_word() != word:
                self.pos = start
                return False
            self.pos += len(word)
        return True

    def expect(self, *words: str) -> None:
        if not self.accept(*words):
            raise self.error(f"expected {' '.join(words)}")

    def accept_char(self, ch: str) -> bool:
        if self.peek_char() == ch:
            self.pos += 1
            return True
        return False

    def expect_char(self, ch: str) -> None:
        if not self.accept_char(ch):
            found = self.peek_char() or "end of input"
            raise self.error(f"expected {ch!r} but got {found!r}")

    def identifier(self) -> str:
        self.skip()
        if self.peek_char() == "`":
            return self._backtick()
        m = _IDENT_RE.match(self.text, self.pos)
        if not m:
            raise self.error("expected an identifier")
        self.pos = m.end()
        return m.group(0)

    def _backtick(self) -> str:
        end = self.text.find("`", self.pos + 1)
        if end < 0:
            raise self.error("unterminated quoted identifier")
        value = self.text[self.pos + 1 : end]
        self.pos = end + 1
        return value

    def path(self) -> list[str]:
        """A dotted name: `a.b.c`, `` `a.b.c` ``, `` `a`.b ``, `my-project.ds.m`."""
        self.skip()
        parts: list[str] = []
        while True:
            if self.pos < len(self.text) and self.text[self.pos] == "`":
                parts.extend(self._backtick().split("."))
            else:
                m = _SEGMENT_RE.match(self.text, self.pos)
                if not m:
                    raise self.error("expected a name")
                parts.append(m.group(0))
                self.pos = m.end()
            if self.pos < len(self.text) and self.text[self.pos] == ".":
                self.pos += 1
                continue
            return parts

    # -- blocks ----------------------------------------------------------------------------
    def balanced(self) -> str:
        """Consume `( ... )` and return the text inside, respecting strings and comments."""
        self.expect_char("(")
        start = self.pos
        depth = 1
        text, n = self.text, len(self.text)
        while self.pos < n:
            ch = text[self.pos]
            if ch in "'\"`":
                if ch == "`":
                    self._backtick()
                else:
                    self.string()
                continue
            if text.startswith("--", self.pos) or ch == "#" or text.startswith("/*", self.pos):
                self.skip()
                continue
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if depth == 0:
                    inner = text[start : self.pos]
                    self.pos += 1
                    return inner
            self.pos += 1
        raise self.error("unbalanced parentheses")

    # -- literals --------------------------------------------------------------------------
    def string(self) -> str:
        """A string literal: '…', "…", '''…''', \"\"\"…\"\"\", with r/b prefixes and escapes."""
        self.skip()
        raw = False
        m = re.match(r"[rRbB]{1,2}(?=['\"])", self.text[self.pos :])
        if m:
            raw = "r" in m.group(0).lower()
            self.pos += len(m.group(0))
        text = self.text
        if self.pos >= len(text) or text[self.pos] not in "'\"":
            raise self.error("expected a string literal")
        quote = text[self.pos]
        triple = text.startswith(quote * 3, self.pos)
        delim = quote * 3 if triple else quote
        self.pos += len(delim)
        out: list[str] = []
        while self.pos < len(text):
            if text.startswith(delim, self.pos):
                self.pos += len(delim)
                return "".join(out)
            ch = text[self.pos]
            if ch == "\\" and self.pos + 1 < len(text):
                nxt = text[self.pos + 1]
                if raw:
                    out.append(ch + nxt)
                else:
                    out.append({"n": "\n", "t": "\t", "r": "\r", "0": "\0"}.get(nxt, nxt))
                self.pos += 2
                continue
            if ch == "\n" and not triple:
                break
            out.append(ch)
            self.pos += 1
        raise self.error("unterminated string literal")

    def literal(self) -> Any:
        """A literal value: string, number, TRUE/FALSE/NULL, `[a, b]` / `ARRAY[...]`, or a Call."""
        ch = self.peek_char()
        if ch in "'\"" or (
            ch in "rRbB" and self.pos + 1 < len(self.text) and self.text[self.pos + 1] in "'\""
        ):
            return self.string()
        if ch == "[":
            return self._array()
        m = _NUMBER_RE.match(self.text, self.pos)
        if m and (ch.isdigit() or ch in "+-."):
            self.pos = m.end()
            token = m.group(0)
            if re.fullmatch(r"[+-]?\d+", token):
                return int(token)
            return float(token)
        word = self.peek_word()
        if word in ("TRUE", "FALSE"):
            self.pos += len(word)
            return word == "TRUE"
        if word == "NULL":
            self.pos += 4
            return None
        if word == "ARRAY":
            self.pos += 5
            self.skip()
            if self.peek_char() == "<":  # ARRAY<STRING>[...]
                end = self.text.find(">", self.pos)
                if end < 0:
                    raise self.error("unterminated ARRAY type")
                self.pos = end + 1
            return self._array()
        if word:
            start = self.pos
            name = self.identifier()
            if self.peek_char() == "(":
                inner = self.balanced()
                return Call(name.upper(), self.text[start : self.pos] if inner is not None else name)
            raise self.error(f"expected a literal value but got {name!r}")
        raise self.error("expected a literal value")

    def _array(self) -> list[Any]:
        self.expect_char("[")
        items: list[Any] = []
        if self.accept_char("]"):
            return items
        while True:
            items.append(self.literal())
            if self.accept_char("]"):
                return items
            self.expect_char(",")


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside parentheses, brackets, strings and comments."""
    parts: list[str] = []
    sc = Scanner(text)
    depth = 0
    start = 0
    n = len(text)
    while sc.pos < n:
        ch = text[sc.pos]
        if ch in "'\"":
            sc.string()
            continue
        if ch == "`":
            sc._backtick()
            continue
        if text.startswith("--", sc.pos) or ch == "#" or text.startswith("/*", sc.pos):
            sc.skip()
            continue
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start : sc.pos])
            start = sc.pos + 1
        sc.pos += 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]
