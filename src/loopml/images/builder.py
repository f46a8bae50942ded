"""Building an image from a Dockerfile without Docker: a snapshot of the context plus an env.

Instructions run in order against a snapshot directory (`root/`): WORKDIR creates directories,
COPY/ADD copy from the context (honouring `.dockerignore`), ENV/ARG/LABEL/EXPOSE/ENTRYPOINT/CMD
fill the config, and `RUN pip install …` adds to the environment's requirements (read at that
point, so `COPY requirements.txt .` before `RUN pip install -r requirements.txt` works). Other
RUN commands are refused with the line number, or, with `allow_unsupported`, run in the snapshot
after the environment is built.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loopml.errors import InvalidArgument
from loopml.images.contextfiles import DockerIgnore, copy_into, safe_join
from loopml.images.dockerfile import Instruction, parse, parse_assignments, split_words, substitute
from loopml.images.runcmd import RunPlan, plan_run

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
_IGNORED = {"HEALTHCHECK", "VOLUME", "STOPSIGNAL", "SHELL", "ONBUILD", "MAINTAINER"}
_TARBALLS = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


@dataclass
class BuildState:
    """Everything the instructions accumulate; becomes image.json."""

    base: str = ""
    python: str | None = None
    workdir: str = "/"
    env: dict[str, str] = field(default_factory=dict)
    args: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    cmd_from_base: bool = False
    exposed_ports: list[int] = field(default_factory=list)
    env_lines: list[str] = field(default_factory=list)
    env_packages: list[str] = field(default_factory=list)  # relative to the image dir
    deferred: list[tuple[int, str, str]] = field(default_factory=list)  # (line, workdir, command)
    warnings: list[str] = field(default_factory=list)
    user: str | None = None

    def variables(self) -> dict[str, str]:
        return {**self.args, **self.env}

    def config(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "python_requested": self.python,
            "workdir": self.workdir,
            "env": self.env,
            "labels": self.labels,
            "entrypoint": self.entrypoint,
            "cmd": self.cmd,
            "exposed_ports": self.exposed_ports,
            "user": self.user,
            "env_requirements": self.env_lines,
            "env_packages": self.env_packages,
            "warnings": self.warnings,
        }


# A function the builder calls for a FROM line that names an image in the catalog or a prebuilt
# one: returns (config dict, root dir or None, pkgs dir or None), or None for an unknown image.
BaseLookup = Callable[[str], tuple[dict[str, Any], Path | None, Path | None] | None]


class DockerfileBuild:
    def __init__(
        self,
        context: Path,
        dockerfile_text: str,
        build_dir: Path,
        *,
        build_args: dict[str, str] | None = None,
        allow_unsupported: bool = False,
        base_lookup: BaseLookup | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.context = context.resolve()
        self.instructions = parse(dockerfile_text)
        self.build_dir = build_dir
        self.root = build_dir / "root"
        self.pkgs = build_dir / "pkgs"
        self.build_args = dict(build_args or {})
        self.allow_unsupported = allow_unsupported
        self.base_lookup = base_lookup
        self.progress = progress or (lambda _line: None)
        self.ignore = DockerIgnore.load(self.context)
        self.state = BuildState()
        self._used_build_args: set[str] = set()

    def warn(self, ins: Instruction | None, message: str) -> None:
        text = f"{ins.where()}: {message}" if ins else message
        self.state.warnings.append(text)
        log.warning("%s", text)
        self.progress(f"warning: {text}")

    def run(self) -> BuildState:
        self.root.mkdir(parents=True)
        self.pkgs.mkdir()
        if not self.instructions:
            raise InvalidArgument("The Dockerfile is empty.")
        seen_from = False
        for ins in self.instructions:
            if ins.keyword == "ARG" and not seen_from:
                self._arg(ins)
                continue
            if ins.keyword == "FROM":
                if seen_from:
                    raise InvalidArgument(
                        f"{ins.where()}: multi-stage builds (a second FROM) are not supported; "
                        "use one stage (loopml installs Python requirements, not build toolchains)."
                    )
                seen_from = True
                self._from(ins)
                continue
            if not seen_from:
                raise InvalidArgument(f"{ins.where()}: the Dockerfile must start with FROM (after ARGs).")
            handler = getattr(self, f"_{ins.keyword.lower()}", None)
            if ins.keyword in _IGNORED:
                self.warn(ins, f"{ins.keyword} is ignored (no container runtime).")
            elif handler is None:
                raise InvalidArgument(f"{ins.where()}: unknown instruction {ins.keyword}.")
            else:
                handler(ins)
        if not seen_from:
            raise InvalidArgument("The Dockerfile has no FROM instruction.")
        unused = set(self.build_args) - self._used_build_args
        if unused:
            self.warn(None, f"build args not used by the Dockerfile: {', '.join(sorted(unused))}")
        return self.state

    # -- instructions ----------------------------------------------------------------------
    def _arg(self, ins: Instruction) -> None:
        for name, default in parse_assignments(ins, self.state.variables()):
            if name in self.build_args:
                self.state.args[name] = self.build_args[name]
                self._used_build_args.add(name)
            elif "=" in ins.text or name not in self.state.args:
                self.state.args[name] = default

    def _from(self, ins: Instruction) -> None:
        from loopml.images.prebuilt import python_version_of_base

        words = split_words(ins, self.state.args)
        if len(words) == 3 and words[1].upper() == "AS":
            self.warn(ins, f"stage name {words[2]!r} ignored (single-stage build).")
        elif len(words) != 1:
            raise InvalidArgument(f"{ins.where()}: FROM takes one image (FROM IMAGE [AS NAME]).")
        image = words[0]
        self.state.base = image
        if "platform" in ins.flags:
            self.warn(ins, "--platform is ignored.")
        version = python_version_of_base(image)
        if version is not None or image.split(":")[0] in ("python", "docker.io/library/python"):
            self.state.python = version
            return
        found = self.base_lookup(image) if self.base_lookup else None
        if found is not None:
            config, root, pkgs = found
            self._inherit(config, root, pkgs)
            return
        if not self.allow_unsupported:
            raise InvalidArgument(
                f"{ins.where()}: base image {image!r} is not supported. loopml images are Python "
                "environments: use python:3.X[-slim], a prebuilt Vertex image, or an image built with "
                "`loopml images build` (or pass --allow-unsupported to use the host's Python)."
            )
        self.warn(ins, f"base image {image!r} is unknown; using the host's Python.")

    def _inherit(self, config: dict[str, Any], root: Path | None, pkgs: Path | None) -> None:
        st = self.state
        st.python = config.get("python_requested")
        st.workdir = config.get("workdir") or "/"
        st.env = dict(config.get("env") or {})
        st.labels = dict(config.get("labels") or {})
        st.entrypoint = list(config.get("entrypoint") or [])
        st.cmd = list(config.get("cmd") or [])
        st.cmd_from_base = bool(st.cmd)
        st.exposed_ports = list(config.get("exposed_ports") or [])
        st.env_lines = list(config.get("env_requirements") or [])
        st.env_packages = list(config.get("env_packages") or [])
        if root is not None and root.is_dir():
            shutil.rmtree(self.root)
            shutil.copytree(root, self.root, symlinks=True)
        if pkgs is not None and pkgs.is_dir():
            shutil.rmtree(self.pkgs)
            shutil.copytree(pkgs, self.pkgs, symlinks=True)

    def _workdir(self, ins: Instruction) -> None:
        value = substitute(ins.text.strip(), self.state.variables())
        if not value:
            raise InvalidArgument(f"{ins.where()}: WORKDIR needs a path.")
        new = value if value.startswith("/") else os.path.join(self.state.workdir, value)
        self.state.workdir = os.path.normpath(new)
        safe_join(self.root, self.state.workdir, ins).mkdir(parents=True, exist_ok=True)

    def _env(self, ins: Instruction) -> None:
        for name, value in parse_assignments(ins, self.state.variables()):
            self.state.env[name] = value

    def _label(self, ins: Instruction) -> None:
        for name, value in parse_assignments(ins, self.state.variables()):
            self.state.labels[name] = value

    def _user(self, ins: Instruction) -> None:
        self.state.user = ins.text.strip()
        self.warn(ins, "USER is ignored: processes run as the loopml server's user.")

    def _expose(self, ins: Instruction) -> None:
        for word in split_words(ins, self.state.variables()):
            port = word.split("/")[0]
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise InvalidArgument(f"{ins.where()}: invalid port {word!r}.")
            if int(port) not in self.state.exposed_ports:
                self.state.exposed_ports.append(int(port))

    def _command(self, ins: Instruction) -> list[str]:
        if ins.exec_form is not None:
            return list(ins.exec_form)
        text = ins.text.strip()
        return ["/bin/sh", "-c", text] if text else []

    def _entrypoint(self, ins: Instruction) -> None:
        self.state.entrypoint = self._command(ins)
        if self.state.cmd_from_base:
            self.state.cmd = []
            self.state.cmd_from_base = False

    def _cmd(self, ins: Instruction) -> None:
        self.state.cmd = self._command(ins)
        self.state.cmd_from_base = False

    def _copy(self, ins: Instruction) -> None:
        self._copy_or_add(ins, is_add=False)

    def _add(self, ins: Instruction) -> None:
        self._copy_or_add(ins, is_add=True)

    def _copy_or_add(self, ins: Instruction, *, is_add: bool) -> None:
        if "from" in ins.flags:
            raise InvalidArgument(
                f"{ins.where()}: COPY --from (multi-stage builds) is not supported; copy from the context."
            )
        for flag in ("chown", "chmod", "link"):
            if flag in ins.flags:
                self.warn(ins, f"--{flag} is ignored (files keep the builder's owner and modes).")
        words = split_words(ins, self.state.variables())
        if len(words) < 2:
            raise InvalidArgument(f"{ins.where()}: {ins.keyword} needs a source and a destination.")
        sources, dest = words[:-1], words[-1]
        for src in sources:
            if "://" in src:
                raise InvalidArgument(
                    f"{ins.where()}: {ins.keyword} from a URL is not supported (no network at build time); "
                    "download the file into the build context."
                )
        dest_path = dest if dest.startswith("/") else os.path.join(self.state.workdir, dest)
        extract = is_add and len(sources) == 1 and sources[0].endswith(_TARBALLS)
        if extract:
            target = safe_join(self.root, dest_path, ins)
            target.mkdir(parents=True, exist_ok=True)
            src_path = safe_join(self.context, sources[0], ins)
            with tarfile.open(src_path) as tar:
                tar.extractall(target, filter="data")
            return
        copy_into(self.context, sources, self.root, dest_path, dest.endswith("/"), self.ignore, ins)

    def _run(self, ins: Instruction) -> None:
        if "mount" in ins.flags or "network" in ins.flags or "security" in ins.flags:
            self.warn(ins, "RUN --mount/--network/--security flags are ignored.")
        command = " ".join(ins.exec_form) if ins.exec_form is not None else ins.text
        command = substitute(command, self.state.variables())
        plan: RunPlan = plan_run(command, ins, self.root, self.state.workdir, self.pkgs)
        for warning in plan.warnings:
            self.warn(ins, warning)
        self.state.env_lines.extend(line for line in plan.requirements if line not in self.state.env_lines)
        self.state.env_packages.extend(p for p in plan.packages if p not in self.state.env_packages)
        for mkdir in plan.mkdirs:
            mkdir.mkdir(parents=True, exist_ok=True)
        for cmd in plan.chmods:
            subprocess.run(cmd, check=False, capture_output=True)
        if plan.unsupported:
            if not self.allow_unsupported:
                raise InvalidArgument(
                    f"{ins.where()}: {plan.unsupported}. loopml builds Python environments without a "
                    "container: install system packages on the host, or pass --allow-unsupported to run "
                    "the command in the image snapshot after the environment is built."
                )
            self.warn(
                ins, f"{plan.unsupported}; it will run on the host in the snapshot (--allow-unsupported)."
            )
            self.state.deferred.append((ins.line, self.state.workdir, plan.deferred))
