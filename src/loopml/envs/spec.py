"""What an environment contains, normalised and hashed.

An `EnvSpec` is the content of an environment: requirement lines (PEP 508 specifiers, URLs),
installer options that may appear in a requirements file (`--index-url`, `--find-links`, ...),
constraint lines, local packages (directories, sdists, wheels) and the Python version. Its
`digest` is a hash of all of that, with requirement names normalised (PEP 503), lines sorted and
deduplicated, and local packages hashed by their file contents, so two requests for the same
content share one cached environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from loopml.errors import InvalidArgument

_NAME_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(.*)$", re.S)
_SKIP_DIRS = {
    ".git",
    "__pycache__",
    ".venv",
    "venv",
    "build",
    "dist",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    "node_modules",
    ".tox",
}
# Options that may appear inside a requirements file and that uv and pip both understand.
_PASSTHROUGH_OPTIONS = {
    "-i",
    "--index-url",
    "--extra-index-url",
    "-f",
    "--find-links",
    "--no-index",
    "--pre",
    "--no-binary",
    "--only-binary",
    "--prefer-binary",
}
_LOCAL_SUFFIXES = (".tar.gz", ".tgz", ".zip", ".whl", ".tar.bz2")


def canonical_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def normalise_requirement(line: str) -> str:
    """`Scikit_Learn >= 1.2 ; python_version<'3.12'` → `scikit-learn>=1.2;python_version<'3.12'`."""
    line = line.strip()
    m = _NAME_RE.match(line)
    if not m or "://" in line:
        return " ".join(line.split())
    name, rest = m.group(1), m.group(2)
    if rest.strip().startswith("@"):  # name @ url
        return f"{canonical_name(name)} @ {rest.strip()[1:].strip()}"
    return canonical_name(name) + "".join(rest.split())


def hash_path(path: Path) -> str:
    """Content hash of a file, or of every file below a directory (paths and bytes)."""
    digest = hashlib.sha256()
    if path.is_file():
        digest.update(path.read_bytes())
        return digest.hexdigest()
    if not path.is_dir():
        raise InvalidArgument(f"Local package {path} does not exist.")
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info"))
        for name in sorted(filenames):
            if name.endswith((".pyc", ".pyo")):
                continue
            full = Path(dirpath) / name
            digest.update(full.relative_to(path).as_posix().encode() + b"\0")
            digest.update(full.read_bytes() if not full.is_symlink() else os.readlink(full).encode())
            digest.update(b"\0")
    return digest.hexdigest()


def looks_local(line: str) -> bool:
    if line.startswith(("file:", "./", "../", "/", "~")) or line in (".", ".."):
        return True
    return line.endswith(_LOCAL_SUFFIXES) and "://" not in line and "@" not in line


@dataclass
class EnvSpec:
    python_version: str
    requirements: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)
    constraints: list[str] = field(default_factory=list)
    local_packages: list[tuple[Path, str]] = field(default_factory=list)
    python: str | None = None  # interpreter path to build with (not part of the digest)

    @property
    def digest(self) -> str:
        payload = {
            "v": 1,
            "python": self.python_version,
            "requirements": sorted(set(self.requirements)),
            "options": self.options,
            "constraints": sorted(set(self.constraints)),
            "local": sorted({(p.name, h) for p, h in self.local_packages}),
        }
        raw = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(raw).hexdigest()[:24]

    def requirements_text(self) -> str:
        """The requirements file handed to the installer (local packages as absolute paths)."""
        lines = list(self.options)
        lines += sorted(set(self.requirements))
        lines += [str(p) for p, _ in self.local_packages]
        return "\n".join(lines) + "\n"

    def describe(self) -> dict[str, object]:
        return {
            "python_version": self.python_version,
            "requirements": sorted(set(self.requirements)),
            "options": self.options,
            "constraints": sorted(set(self.constraints)),
            "local_packages": [{"name": p.name, "sha256": h} for p, h in self.local_packages],
        }


class SpecBuilder:
    """Accumulates requirement lines, requirement files and local packages into an `EnvSpec`."""

    def __init__(self, python_version: str, python: str | None = None) -> None:
        self.spec = EnvSpec(python_version=python_version, python=python)
        self._seen_files: set[Path] = set()

    def add_requirements(self, lines: Iterable[str], base_dir: Path | None = None, origin: str = "") -> None:
        tokens = iter(self._logical_lines(lines))
        for line in tokens:
            self._add_line(line, base_dir or Path.cwd(), origin)

    def add_requirement_file(self, path: Path) -> None:
        path = path.expanduser().resolve()
        if path in self._seen_files:
            return
        if not path.is_file():
            raise InvalidArgument(f"Requirements file {path} does not exist.")
        self._seen_files.add(path)
        self.add_requirements(path.read_text().splitlines(), path.parent, origin=str(path))

    def add_local_package(self, path: Path) -> None:
        path = path.expanduser().resolve()
        if not path.exists():
            raise InvalidArgument(f"Local package {path} does not exist.")
        if path.is_dir() and not any(
            (path / f).exists() for f in ("pyproject.toml", "setup.py", "setup.cfg")
        ):
            raise InvalidArgument(
                f"{path} is not a Python package (no pyproject.toml, setup.py or setup.cfg)."
            )
        entry = (path, hash_path(path))
        if entry not in self.spec.local_packages:
            self.spec.local_packages.append(entry)

    @staticmethod
    def _logical_lines(lines: Iterable[str]) -> list[str]:
        out: list[str] = []
        pending = ""
        for raw in lines:
            line = raw.rstrip("\n")
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            line = pending + line
            pending = ""
            if line.lstrip().startswith("#"):
                continue
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            if line:
                out.append(line)
        if pending.strip():
            out.append(pending.strip())
        return out

    def _add_line(self, line: str, base_dir: Path, origin: str) -> None:
        where = f" (in {origin})" if origin else ""
        if line.startswith("-"):
            opt, _, value = line.partition(" ")
            if "=" in opt and opt.startswith("--"):
                opt, _, value = opt.partition("=")
            value = value.strip()
            if opt in ("-r", "--requirement"):
                self.add_requirement_file(_local_path(value, base_dir))
            elif opt in ("-c", "--constraint"):
                cpath = _local_path(value, base_dir)
                if not cpath.is_file():
                    raise InvalidArgument(f"Constraints file {cpath} does not exist{where}.")
                cb = SpecBuilder(self.spec.python_version)
                cb.add_requirements(cpath.read_text().splitlines(), cpath.parent)
                self.spec.constraints.extend(cb.spec.requirements)
            elif opt in ("-e", "--editable"):
                self.add_local_package(_local_path(value, base_dir))
            elif opt in _PASSTHROUGH_OPTIONS:
                option = f"{opt} {value}".strip()
                if option not in self.spec.options:
                    self.spec.options.append(option)
            else:
                raise InvalidArgument(f"Unsupported requirements option {opt!r}{where}.")
            return
        if looks_local(line):
            self.add_local_package(_local_path(line, base_dir))
            return
        if "\x00" in line or "\n" in line:
            raise InvalidArgument(f"Invalid requirement {line!r}{where}.")
        self.spec.requirements.append(normalise_requirement(line))


def _local_path(value: str, base_dir: Path) -> Path:
    if value.startswith("file:"):
        value = unquote(urlparse(value).path)
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base_dir / path)


def build_spec(
    python_version: str,
    requirements: Sequence[str] = (),
    *,
    requirement_files: Sequence[Path] = (),
    local_packages: Sequence[Path] = (),
    base_dir: Path | None = None,
    python: str | None = None,
) -> EnvSpec:
    builder = SpecBuilder(python_version, python)
    builder.add_requirements(requirements, base_dir)
    for f in requirement_files:
        builder.add_requirement_file(Path(f))
    for p in local_packages:
        builder.add_local_package(Path(p))
    return builder.spec
