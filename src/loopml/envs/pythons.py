"""Finding the installer (uv) and a Python interpreter for an environment.

An image that says `FROM python:3.9-slim` asks for Python 3.9. If the host's interpreter has that
version, it is used; otherwise an interpreter uv already knows about (`uv python find`, never a
download) is used; otherwise the host's interpreter is used and a warning says so.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

from loopml.errors import InvalidArgument

_VERSION_RE = re.compile(r"^3(\.\d+){0,2}\Z")


def find_uv() -> str | None:
    """The uv executable: next to this interpreter (the `uv` wheel), the `uv` package, or PATH."""
    local = Path(os.path.abspath(sys.executable)).parent / "uv"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        pass
    return shutil.which("uv")


def host_python_version() -> str:
    return f"{platform.python_implementation().lower()}-{platform.python_version()}"


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def resolve_python(request: str | None, uv: str | None) -> tuple[str, str, str | None]:
    """(interpreter path, "cpython-X.Y.Z", warning or None) for a version request or a path."""
    host = os.path.abspath(sys.executable)
    host_mm = _major_minor(platform.python_version())
    if not request:
        return host, host_python_version(), None
    if not _VERSION_RE.match(request):
        path = Path(request)
        if not path.is_file():
            raise InvalidArgument(f"Python {request!r} is neither a version like 3.11 nor an interpreter.")
        return str(path), _version_of(str(path)), None
    if _major_minor(request) == host_mm:
        return host, host_python_version(), None
    if uv:
        found = subprocess.run(
            [uv, "python", "find", "--no-python-downloads", request],
            capture_output=True,
            text=True,
            timeout=30,
        )
        found_path = found.stdout.strip()
        if found.returncode == 0 and found_path:
            return found_path, _version_of(found_path), None
    warning = (
        f"Python {request} was requested but is not installed here (and nothing is downloaded); "
        f"using the host's Python {platform.python_version()} instead."
    )
    return host, host_python_version(), warning


def _version_of(python: str) -> str:
    out = subprocess.run(
        [
            python,
            "-c",
            "import platform;print(platform.python_implementation().lower()+'-'+platform.python_version())",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if out.returncode != 0:
        raise InvalidArgument(f"{python} is not a working Python interpreter: {out.stderr.strip()[-300:]}")
    return out.stdout.strip()
