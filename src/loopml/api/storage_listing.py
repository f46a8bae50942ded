"""Listing objects in GCS order: prefixes, delimiters, pages, offsets and `matchGlob`.

Names come from walking the bucket directory (folder placeholders included, temp files of
in-progress writes skipped); pages resume after the last returned key, where a key is a name or
a rolled-up prefix, so a page boundary never splits a prefix.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from loopml.api.storage_backend import _rel
from loopml.artifacts.store import TMP_NAME_RE
from loopml.errors import InvalidArgument

if TYPE_CHECKING:
    from loopml.api.storage_backend import ObjectStore


def walk(store: ObjectStore, root: Path, start: str) -> Iterator[str]:
    if store.rx is not None:  # the object store's listing, not the local cache
        yield from store.rx.names(root.name, start.strip("/"))
        return
    base = root.joinpath(*[p for p in start.split("/") if p]) if start else root
    if not base.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        rel = _rel(root, Path(dirpath))
        prefix = "" if rel == "" else rel + "/"
        if prefix and store._has_placeholder(root.name, prefix):
            yield prefix
        for fname in filenames:
            if not TMP_NAME_RE.match(fname):
                yield prefix + fname


def list_objects(
    store: ObjectStore,
    bucket: str,
    *,
    prefix: str = "",
    delimiter: str = "",
    page_token: str = "",
    max_results: int = 1000,
    start_offset: str = "",
    end_offset: str = "",
    include_trailing_delimiter: bool = False,
    match_glob: str = "",
) -> tuple[list[str], list[str], str | None]:
    """(object names, prefixes, next page token) in GCS order."""
    root = store.bucket_dir(bucket)
    start_dir = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
    if any(p in ("..", ".") for p in start_dir.split("/")):
        raise InvalidArgument(f"Invalid prefix {prefix!r}.")
    names = sorted(n for n in walk(store, root, start_dir) if n.startswith(prefix))
    if match_glob:
        rx = glob_regex(match_glob)
        names = [n for n in names if rx.match(n)]
    after = _decode_token(page_token) if page_token else ""
    items: list[str] = []
    prefixes: list[str] = []
    count = 0
    last_key = ""
    for name in names:
        if start_offset and name < start_offset:
            continue
        if end_offset and name >= end_offset:
            break
        key = name
        rolled = False
        if delimiter:
            rest = name[len(prefix) :]
            idx = rest.find(delimiter)
            if idx >= 0:
                key = prefix + rest[: idx + len(delimiter)]
                rolled = True
        if after and key <= after:
            continue
        if key == last_key:
            continue
        if count >= max_results:
            return items, prefixes, _encode_token(last_key)
        if rolled:
            prefixes.append(key)
            if include_trailing_delimiter and name == key:
                items.append(name)
        else:
            items.append(name)
        last_key = key
        count += 1
    return items, prefixes, None


def glob_regex(pattern: str) -> re.Pattern[str]:
    """`matchGlob` syntax: `*` (not `/`), `**` (anything), `?`, `[abc]`, `{a,b}`."""
    out = ""
    i = 0
    depth = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[" and "]" in pattern[i + 1 :]:
            j = pattern.index("]", i + 1)
            out += "[" + pattern[i + 1 : j].replace("\\", "\\\\") + "]"
            i = j
        elif c == "{":
            out += "(?:"
            depth += 1
        elif c == "}" and depth:
            out += ")"
            depth -= 1
        elif c == "," and depth:
            out += "|"
        else:
            out += re.escape(c)
        i += 1
    if depth:
        raise InvalidArgument(f"Invalid matchGlob {pattern!r}: unbalanced braces.")
    try:
        return re.compile(out + r"\Z", re.S)
    except re.error as exc:
        raise InvalidArgument(f"Invalid matchGlob {pattern!r}: {exc}.") from None


def _encode_token(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode()


def _decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument(f"Invalid pageToken {token!r}.") from None
