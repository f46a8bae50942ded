"""What it takes to run a process "in" an image on the host: `ImageRuntime`.

A container sees its image's files at `/`; a host process sees the snapshot at `root`. Absolute
paths the image uses (`WORKDIR /app`, `CMD ["python", "/app/main.py"]`, `ENV PYTHONPATH=/app`)
are rewritten to the snapshot when their first component exists there; `python`/`python3` and
`/usr/local/bin/python*` become the image's venv interpreter; other commands are looked up on a
PATH that starts with the venv's `bin`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Container paths that are never rewritten into the snapshot (they mean the host's).
_SYSTEM_DIRS = {"bin", "dev", "etc", "lib", "lib64", "proc", "sbin", "sys", "tmp", "usr", "var", "run"}
_PYTHON_NAMES = {"python", "python3"}
# The server's own virtualenv must not leak into an image's processes.
_DROP_VARS = (
    "VIRTUAL_ENV",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONNOUSERSITE",
    "__PYVENV_LAUNCHER__",
)


@dataclass
class ImageRuntime:
    uri: str
    root: Path
    workdir: Path
    python: Path
    bin_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    exposed_ports: list[int] = field(default_factory=list)
    digest: str | None = None
    prebuilt: str | None = None
    """For prebuilt Vertex images: "sklearn", "xgboost", "tensorflow", "pytorch" or "python"."""
    container_workdir: str = "/"
    env_dir: Path | None = None
    labels: dict[str, str] = field(default_factory=dict)
    requirements: list[str] = field(default_factory=list)
    """What the env was built from; with `local_packages`, pass to `EnvManager.ensure` (plus more
    packages, e.g. a job's sdist) to build a derived env with the same content."""
    local_packages: list[Path] = field(default_factory=list)
    python_request: str | None = None

    # -- paths -----------------------------------------------------------------------------
    def host_path(self, value: str) -> str:
        """A container path (`/app/main.py`) as the snapshot path, when it lives in the snapshot."""
        if not value.startswith("/") or value.startswith("//"):
            return value
        parts = [p for p in value.split("/") if p]
        if not parts or parts[0] in _SYSTEM_DIRS or ".." in parts:
            return value
        if (self.root / parts[0]).exists():
            return str(self.root.joinpath(*parts)) + ("/" if value.endswith("/") else "")
        return value

    def _host_path_list(self, value: str) -> str:
        return ":".join(self.host_path(p) for p in value.split(":"))

    # -- command ---------------------------------------------------------------------------
    def argv(
        self, command_override: Sequence[str] | None = None, args_override: Sequence[str] | None = None
    ) -> list[str]:
        """The process to start, with Vertex `containerSpec.command`/`args` semantics.

        command + args → both; command only → command (the image CMD is dropped, as in
        Kubernetes); args only → ENTRYPOINT + args; neither → ENTRYPOINT + CMD.
        """
        if command_override:
            argv = list(command_override) + list(args_override or [])
        elif args_override:
            argv = list(self.entrypoint) + list(args_override)
        else:
            argv = list(self.entrypoint) + list(self.cmd)
        if not argv:
            raise ValueError(f"Image {self.uri} has no ENTRYPOINT or CMD and no command was given.")
        return [self._executable(argv[0]), *(self.host_path(a) for a in argv[1:])]

    def _executable(self, name: str) -> str:
        base = os.path.basename(name)
        looks_python = base in _PYTHON_NAMES or (base.startswith("python3.") and base[8:].isdigit())
        if looks_python and (("/" not in name) or name.startswith(("/usr/", "/opt/", "/bin/"))):
            return str(self.python)
        if "/" in name:
            if name.startswith(("/usr/local/bin/", "/usr/bin/")) and (self.bin_dir / base).exists():
                return str(self.bin_dir / base)
            return self.host_path(name)
        found = shutil.which(name, path=self._search_path())
        return found or name

    def _search_path(self) -> str:
        parts = [str(self.bin_dir)]
        if "PATH" in self.env:
            parts += [self.host_path(p) for p in self.env["PATH"].split(":") if p]
        parts += os.environ.get("PATH", "").split(":")
        seen: list[str] = []
        for p in parts:
            if p and p not in seen:
                seen.append(p)
        return ":".join(seen)

    def process_env(self, extra: Mapping[str, str] | None = None, *, inherit: bool = True) -> dict[str, str]:
        """Environment for a process in this image: host basics, the venv, the image ENV, then `extra`."""
        out = (
            dict(os.environ)
            if inherit
            else {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "TZ")}
        )
        for name in _DROP_VARS:
            out.pop(name, None)
        for name, value in self.env.items():
            if name == "PATH":
                continue
            out[name] = self._host_path_list(value) if name.endswith("PATH") else self.host_path(value)
        out["PATH"] = self._search_path()
        if self.env_dir is not None:
            out["VIRTUAL_ENV"] = str(self.env_dir)
        out["PYTHONUNBUFFERED"] = "1"
        if extra:
            out.update({k: str(v) for k, v in extra.items()})
        return out

    def describe(self) -> dict[str, object]:
        return {
            "uri": self.uri,
            "digest": f"sha256:{self.digest}" if self.digest else None,
            "prebuilt": self.prebuilt,
            "root": str(self.root),
            "workdir": str(self.workdir),
            "python": str(self.python),
            "env": self.env,
            "entrypoint": self.entrypoint,
            "cmd": self.cmd,
            "exposedPorts": self.exposed_ports,
        }
