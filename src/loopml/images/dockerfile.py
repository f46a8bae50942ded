"""Parsing the Dockerfile subset loopml builds: instructions, line numbers, variables, forms.

`parse(text)` returns `Instruction`s with their first line number, their flags (`--chown=...`),
their arguments as text and, for the exec form (`["a", "b"]`), as a list. `substitute()`
expands `$VAR`, `${VAR}`, `${VAR:-default}` and `${VAR:+alt}` as Docker does.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field

from loopml.errors import InvalidArgument

_VAR_RE = re.compile(
    r"\\\$|\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<op>[-+])(?P<word>[^}]*))?\}|(?P<name>[A-Za-z_][A-Za-z0-9_]*))"
)
_FLAG_RE = re.compile(r"^--([a-z-]+)(?:=(\S*))?\s*")
_EXEC_FORM = {"RUN", "CMD", "ENTRYPOINT", "COPY", "ADD", "VOLUME", "SHELL"}


@dataclass
class Instruction:
    line: int
    keyword: str
    text: str  # the arguments, flags removed, continuation lines joined
    flags: dict[str, str] = field(default_factory=dict)
    exec_form: list[str] | None = None
    original: str = ""

    def where(self) -> str:
        shown = self.original if len(self.original) <= 80 else self.original[:77] + "..."
        return f"Dockerfile line {self.line}: {shown}"


def parse(text: str) -> list[Instruction]:
    out: list[Instruction] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        raw = lines[i]
        start = i + 1
        stripped = raw.strip()
        i += 1
        if not stripped or stripped.startswith("#"):
            continue
        parts = [stripped]
        while parts[-1].endswith("\\") and i < len(lines):
            parts[-1] = parts[-1][:-1]
            nxt = lines[i].strip()
            i += 1
            if nxt.startswith("#"):
                parts.append("\\")  # a comment inside a continuation keeps the continuation going
                continue
            parts.append(nxt)
        joined = " ".join(p for p in parts if p != "\\").strip()
        if joined.endswith("\\"):
            joined = joined[:-1].rstrip()
        keyword, _, rest = joined.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        flags: dict[str, str] = {}
        if keyword in ("COPY", "ADD", "RUN", "FROM"):
            while True:
                m = _FLAG_RE.match(rest)
                if not m:
                    break
                flags[m.group(1)] = m.group(2) or ""
                rest = rest[m.end() :]
        exec_form = None
        if keyword in _EXEC_FORM and rest.startswith("["):
            try:
                value = json.loads(rest)
            except json.JSONDecodeError:
                value = None
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                exec_form = value
        out.append(Instruction(start, keyword, rest, flags, exec_form, joined))
    return out


def substitute(value: str, variables: dict[str, str]) -> str:
    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "\\$":
            return "$"
        name = m.group("braced") or m.group("name")
        current = variables.get(name)
        op = m.group("op")
        if op == "-":
            return current if current else substitute(m.group("word") or "", variables)
        if op == "+":
            return substitute(m.group("word") or "", variables) if current else ""
        return current or ""

    return _VAR_RE.sub(repl, value)


def split_words(ins: Instruction, variables: dict[str, str]) -> list[str]:
    """Arguments of COPY/ADD/EXPOSE-like instructions as words, variables expanded."""
    if ins.exec_form is not None:
        return [substitute(v, variables) for v in ins.exec_form]
    try:
        return [substitute(w, variables) for w in shlex.split(ins.text)]
    except ValueError as exc:
        raise InvalidArgument(f"{ins.where()}: cannot parse the arguments ({exc}).") from exc


def parse_assignments(ins: Instruction, variables: dict[str, str]) -> list[tuple[str, str]]:
    """`ENV A=1 B="two words"`, legacy `ENV A one two`, `LABEL k=v`, `ARG NAME[=default]`."""
    text = ins.text
    try:
        words = shlex.split(text, posix=True)
    except ValueError as exc:
        raise InvalidArgument(f"{ins.where()}: cannot parse ({exc}).") from exc
    if not words:
        raise InvalidArgument(f"{ins.where()}: {ins.keyword} needs arguments.")
    if "=" not in words[0] and ins.keyword in ("ENV", "LABEL"):
        if len(words) < 2:
            raise InvalidArgument(f"{ins.where()}: {ins.keyword} needs a value.")
        name, _, value = text.partition(" ")
        return [(name, substitute(value.strip(), variables))]
    out = []
    for word in words:
        name, eq, value = word.partition("=")
        if not name:
            raise InvalidArgument(f"{ins.where()}: invalid assignment {word!r}.")
        out.append((name, substitute(value, variables) if eq else ""))
    return out


def shell_segments(command: str) -> list[list[str]] | None:
    """Split `a && b; c` into word lists; None when pipes, redirects or `||` make it a real script."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:
        return None
    segments: list[list[str]] = [[]]
    for tok in tokens:
        if tok in ("&&", ";"):
            segments.append([])
        elif tok and set(tok) <= set("|&;<>()"):
            return None
        else:
            segments[-1].append(tok)
    return [s for s in segments if s]
