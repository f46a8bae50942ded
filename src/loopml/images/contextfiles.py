"""The build context: `.dockerignore` matching and COPY/ADD semantics into the snapshot."""

from __future__ import annotations

import glob
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from loopml.errors import InvalidArgument
from loopml.images.dockerfile import Instruction


def safe_join(base: Path, path: str, ins: Instruction | None = None) -> Path:
    """`path` (absolute = from `base`) inside `base`; refuses `..` escapes and NUL bytes."""
    where = f"{ins.where()}: " if ins else ""
    if "\x00" in path:
        raise InvalidArgument(f"{where}path contains a NUL byte.")
    if not path.startswith("/"):
        rel = os.path.normpath(path)
        if rel == ".." or rel.startswith("../"):
            raise InvalidArgument(f"{where}path {path!r} escapes the build context.")
    norm = os.path.normpath("/" + path.lstrip("/"))
    parts = [p for p in norm.split("/") if p]
    if ".." in parts:
        raise InvalidArgument(f"{where}path {path!r} escapes the build context.")
    target = base.joinpath(*parts) if parts else base
    if target.exists() and not target.resolve().is_relative_to(base.resolve()):
        raise InvalidArgument(f"{where}path {path!r} leads outside the build context (symlink).")
    return target


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
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
        elif c == "[":
            j = pattern.find("]", i)
            if j == -1:
                out += re.escape(c)
            else:
                out += "[" + pattern[i + 1 : j].replace("!", "^", 1) + "]"
                i = j
        else:
            out += re.escape(c)
        i += 1
    return re.compile("^" + out + "$")


class DockerIgnore:
    def __init__(self, patterns: Sequence[str]) -> None:
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        for raw in patterns:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            if negate:
                line = line[1:].strip()
            line = os.path.normpath(line.lstrip("/"))
            if line == ".":
                continue
            self.rules.append((negate, _pattern_regex(line)))

    @classmethod
    def load(cls, context: Path) -> DockerIgnore:
        path = context / ".dockerignore"
        return cls(path.read_text().splitlines() if path.is_file() else [])

    def ignored(self, rel: str) -> bool:
        """True when a context-relative path (or one of its parent directories) is excluded."""
        if not self.rules:
            return False
        parts = rel.strip("/").split("/")
        excluded = False
        for negate, rx in self.rules:
            for n in range(1, len(parts) + 1):
                if rx.match("/".join(parts[:n])):
                    excluded = not negate
                    break
        return excluded


def copy_into(
    context: Path,
    sources: Sequence[str],
    root: Path,
    dest: str,
    dest_is_dir: bool,
    ignore: DockerIgnore,
    ins: Instruction,
) -> None:
    """COPY semantics: a directory's contents go into dest; files go to dest or dest/<name>."""
    matched: list[Path] = []
    for src in sources:
        safe_join(context, src, ins)
        pattern = os.path.normpath(src.lstrip("/"))
        if glob.has_magic(pattern):
            found = sorted(glob.glob(pattern, root_dir=context))
            found = [f for f in found if not ignore.ignored(f)]
        else:
            found = (
                [pattern]
                if (context / pattern).exists() and (pattern == "." or not ignore.ignored(pattern))
                else []
            )
        if not found:
            raise InvalidArgument(f"{ins.where()}: {src!r} not found in the build context {context}.")
        matched.extend(context / f for f in found)
    multiple = len(matched) > 1 or any(glob.has_magic(s) for s in sources)
    target = safe_join(root, dest, ins)
    into_dir = dest_is_dir or multiple or target.is_dir()
    for src_path in matched:
        rel = src_path.resolve().relative_to(context.resolve()).as_posix() if src_path != context else "."
        if src_path.is_dir():
            _copy_tree(src_path, target, context, ignore)
        else:
            out = target / src_path.name if into_dir else target
            out.parent.mkdir(parents=True, exist_ok=True)
            if out.is_dir():
                raise InvalidArgument(f"{ins.where()}: cannot copy file {rel!r} over directory {dest!r}.")
            shutil.copy2(src_path, out)


def _copy_tree(src: Path, target: Path, context: Path, ignore: DockerIgnore) -> None:
    target.mkdir(parents=True, exist_ok=True)
    ctx = context.resolve()
    for dirpath, dirnames, filenames in os.walk(src):
        here = Path(dirpath)
        rel_dir = here.resolve().relative_to(ctx).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = [
            d for d in sorted(dirnames) if not ignore.ignored(rel_dir + d) or _has_exception(ignore)
        ]
        out_dir = target / here.relative_to(src)
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in filenames:
            if ignore.ignored(rel_dir + name):
                continue
            shutil.copy2(here / name, out_dir / name)


def _has_exception(ignore: DockerIgnore) -> bool:
    return any(negate for negate, _ in ignore.rules)
