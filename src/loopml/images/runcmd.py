"""What a `RUN` line means for a Python environment: pip installs, harmless no-ops, the rest.

`plan_run()` splits `a && b; c`, turns `pip install …` (also `pip3`, `python -m pip`, `uv pip`)
into requirement lines and local packages (copied into the image's `pkgs/` at that point of the
build), handles `mkdir`/`chmod` in the snapshot, skips cache clean-ups and user management with
a warning, and reports anything else as unsupported.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from loopml.envs.spec import SpecBuilder, looks_local
from loopml.errors import InvalidArgument
from loopml.images.contextfiles import safe_join
from loopml.images.dockerfile import Instruction, shell_segments

IMAGE_DIR = "{IMAGE}"
_PIP_FLAGS = {
    "--no-cache-dir", "-U", "--upgrade", "--user", "-q", "--quiet", "-v", "--verbose",
    "--disable-pip-version-check", "--no-warn-script-location", "--force-reinstall",
    "--ignore-installed", "--no-compile", "--compile", "--break-system-packages",
    "--no-build-isolation", "--upgrade-strategy", "--isolated", "--exists-action",
}  # fmt: skip
_PIP_VALUE_OPTS = {"--progress-bar", "--root-user-action", "--timeout", "--retries", "--trusted-host"}
_PIP_PASSTHROUGH = {"-i", "--index-url", "--extra-index-url", "-f", "--find-links"}
_PIP_NOOP = {"cache", "list", "freeze", "show", "check", "config", "--version", "-V", "debug", "help"}
_SYSTEM_PM = {"apt-get", "apt", "apk", "yum", "dnf", "microdnf", "zypper", "conda", "mamba", "brew"}
_USER_CMDS = {"useradd", "adduser", "groupadd", "addgroup", "chown", "usermod"}
_CACHE_RE = re.compile(
    r"^(?:~|/root)/\.cache(?:/.*)?$|^/var/lib/apt/lists(?:/.*)?$|^/tmp/.*$|^/var/cache/.*$"
)
_SKIP_PKG = {"pip"}


@dataclass
class RunPlan:
    requirements: list[str] = field(default_factory=list)
    packages: list[str] = field(default_factory=list)
    mkdirs: list[Path] = field(default_factory=list)
    chmods: list[list[str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    unsupported: str | None = None
    deferred: str = ""  # the unsupported part, as a shell command


class _Planner:
    def __init__(self, ins: Instruction, root: Path, workdir: str, pkgs: Path) -> None:
        self.ins = ins
        self.root = root
        self.workdir = workdir
        self.pkgs = pkgs
        self.plan = RunPlan()

    def container_path(self, value: str, base: str | None = None) -> Path:
        value = os.path.expanduser(value) if value.startswith("~") else value
        path = value if value.startswith("/") else os.path.join(base or self.workdir, value)
        return safe_join(self.root, path, self.ins)

    def add_package(self, path: Path, label: str) -> None:
        if not path.exists():
            raise InvalidArgument(f"{self.ins.where()}: pip install {label!r}: not found in the image.")
        index = len(list(self.pkgs.iterdir())) + 1
        dest = self.pkgs / f"{index:02d}-{path.name}"
        if path.is_dir():
            shutil.copytree(
                path,
                dest,
                ignore=shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", "build", ".venv"),
            )
        else:
            shutil.copy2(path, dest)
        self.plan.packages.append(f"pkgs/{dest.name}")

    def add_requirement_file(self, path: Path, seen: set[Path]) -> None:
        if not path.is_file():
            raise InvalidArgument(f"{self.ins.where()}: requirements file {path.name!r} is not in the image.")
        if path in seen:
            return
        seen.add(path)
        for line in SpecBuilder._logical_lines(path.read_text().splitlines()):
            words = line.split(None, 1)
            opt = words[0].split("=", 1)[0]
            value = (
                words[0].split("=", 1)[1] if "=" in words[0] else words[1] if len(words) > 1 else ""
            ).strip()
            if opt in ("-r", "--requirement"):
                self.add_requirement_file(path.parent / value, seen)
            elif opt in ("-c", "--constraint"):
                cpath = path.parent / value
                if not cpath.is_file():
                    raise InvalidArgument(
                        f"{self.ins.where()}: constraints file {value!r} is not in the image."
                    )
                dest = self.pkgs / f"constraints-{len(list(self.pkgs.iterdir())) + 1:02d}.txt"
                shutil.copy2(cpath, dest)
                self.plan.requirements.append(f"-c {IMAGE_DIR}/pkgs/{dest.name}")
            elif opt in ("-e", "--editable"):
                self.add_package(self.container_path(value), value)
            elif line.startswith("-"):
                self.plan.requirements.append(line)
            elif looks_local(line):
                self.add_package(self.container_path(line), line)
            elif line.split("[")[0].split("=")[0].strip().lower() not in _SKIP_PKG:
                self.plan.requirements.append(line)

    def pip_install(self, args: list[str]) -> None:
        pos = 0

        def value(arg: str, eq: str, inline: str) -> str:
            nonlocal pos
            if eq:
                return inline
            pos += 1
            if pos >= len(args):
                raise InvalidArgument(f"{self.ins.where()}: pip option {arg} needs a value.")
            return args[pos]

        while pos < len(args):
            arg = args[pos]
            opt, eq, inline = arg.partition("=")
            self._pip_arg(arg, opt, functools.partial(value, arg, eq, inline))
            pos += 1

    def _pip_arg(self, arg: str, opt: str, value: Callable[[], str]) -> None:
        if opt in ("-r", "--requirement"):
            self.add_requirement_file(self.container_path(value()), set())
        elif opt in ("-c", "--constraint"):
            self.add_requirement_file_constraint(value())
        elif opt in ("-e", "--editable"):
            v = value()
            self.add_package(self.container_path(v), v)
        elif opt in _PIP_PASSTHROUGH:
            self.plan.requirements.append(f"{opt} {value()}")
        elif opt in _PIP_VALUE_OPTS:
            value()
        elif opt in ("--pre", "--prefer-binary"):
            self.plan.requirements.append(opt)
        elif opt in ("--no-deps", "-t", "--target", "--prefix", "--root"):
            self.plan.warnings.append(f"pip option {opt} is ignored (everything goes into the image's env).")
            if opt != "--no-deps":
                value()
        elif arg in _PIP_FLAGS or opt in _PIP_FLAGS or arg.startswith("-q"):
            return
        elif arg.startswith("-"):
            raise InvalidArgument(f"{self.ins.where()}: unsupported pip option {arg!r}.")
        elif looks_local(arg) or glob_local(arg):
            for match in self.expand_local(arg):
                self.add_package(match, arg)
        elif arg.split("[")[0].split("=")[0].split("<")[0].split(">")[0].strip().lower() in _SKIP_PKG:
            return
        else:
            self.plan.requirements.append(arg)

    def add_requirement_file_constraint(self, value: str) -> None:
        cpath = self.container_path(value)
        if not cpath.is_file():
            raise InvalidArgument(f"{self.ins.where()}: constraints file {value!r} is not in the image.")
        dest = self.pkgs / f"constraints-{len(list(self.pkgs.iterdir())) + 1:02d}.txt"
        shutil.copy2(cpath, dest)
        self.plan.requirements.append(f"-c {IMAGE_DIR}/pkgs/{dest.name}")

    def expand_local(self, arg: str) -> list[Path]:
        base = self.container_path(os.path.dirname(arg) or ".")
        pattern = os.path.basename(arg) or "."
        if not any(c in pattern for c in "*?["):
            return [self.container_path(arg)]
        found = sorted(base.glob(pattern))
        if not found:
            raise InvalidArgument(f"{self.ins.where()}: pip install {arg!r}: no matching files in the image.")
        return found

    def segment(self, words: list[str]) -> str | None:
        """Handle one command; returns a reason when it cannot be honoured."""
        while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            words = words[1:]
        if not words:
            return None
        prog = os.path.basename(words[0])
        pip_args: list[str] | None = None
        if re.fullmatch(r"pip(3(\.\d+)?)?", prog):
            pip_args = words[1:]
        elif re.fullmatch(r"python(3(\.\d+)?)?", prog) and words[1:3] == ["-m", "pip"]:
            pip_args = words[3:]
        elif prog == "uv" and words[1:2] == ["pip"]:
            pip_args = words[2:]
        if pip_args is not None:
            if pip_args and pip_args[0] == "install":
                self.pip_install(pip_args[1:])
                return None
            if not pip_args or pip_args[0] in _PIP_NOOP:
                return None
            return f"pip {pip_args[0]} is not supported"
        if prog in _SYSTEM_PM:
            return f"system package manager command {prog!r} cannot run without a container"
        if prog in ("echo", "true", ":", "ls", "pwd"):
            return None
        if prog == "mkdir":
            self.plan.mkdirs += [self.container_path(w) for w in words[1:] if not w.startswith("-")]
            return None
        if prog == "chmod" and len(words) >= 3:
            args = [w for w in words[1:] if w.startswith("-")]
            rest = [w for w in words[1:] if not w.startswith("-")]
            self.plan.chmods.append(
                ["chmod", *args, rest[0], *(str(self.container_path(p)) for p in rest[1:])]
            )
            return None
        if prog in _USER_CMDS:
            self.plan.warnings.append(f"{prog} is ignored (processes run as the loopml server's user).")
            return None
        if prog == "rm" and all(_CACHE_RE.match(w) for w in words[1:] if not w.startswith("-")):
            return None
        return f"RUN command {prog!r} is not supported"


def glob_local(arg: str) -> bool:
    return any(c in arg for c in "*?[") and ("/" in arg or arg.endswith((".whl", ".tar.gz")))


def plan_run(command: str, ins: Instruction, root: Path, workdir: str, pkgs: Path) -> RunPlan:
    planner = _Planner(ins, root, workdir, pkgs)
    segments = shell_segments(command)
    if segments is None:
        planner.plan.unsupported = (
            "RUN with pipes, redirections or `||` is a shell script loopml cannot interpret"
        )
        planner.plan.deferred = command
        return planner.plan
    reasons = []
    deferred = []
    for words in segments:
        reason = planner.segment(words)
        if reason:
            reasons.append(reason)
            deferred.append(shlex.join(words))
    if reasons:
        planner.plan.unsupported = "; ".join(reasons)
        planner.plan.deferred = " && ".join(deferred)
    return planner.plan
