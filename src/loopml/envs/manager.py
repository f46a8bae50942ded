"""Isolated virtual environments built from requirements, cached by the hash of their content.

Layout under the manager's root (`$LOOPML_HOME/envs`):

    <digest>/                 a finished venv (bin/python, lib/...), never modified afterwards
    <digest>/loopml-env.json  what it contains: spec, `pip freeze`, build time; written last
    .locks/<digest>.lock      flock held while building, so two builds of one digest never race
    .tmp-<digest>-<rand>/     a build in progress; renamed to <digest> when it succeeds

With uv (the default) the venv is created `--relocatable`, so it is built in a temporary directory
and renamed into place; uv's package cache hard-links wheels, so a second environment with the
scientific stack takes seconds. Without uv, `python -m venv` + pip build in place under the lock
and the metadata file marks completion.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from loopml.envs.pythons import find_uv, resolve_python
from loopml.envs.spec import EnvSpec, build_spec
from loopml.errors import FailedPrecondition, InvalidArgument, NotFound

log = logging.getLogger(__name__)

META = "loopml-env.json"
Progress = Callable[[str], None]
_BUILD_TIMEOUT_S = 1800.0


class EnvBuildError(FailedPrecondition):
    """The installer failed; the message ends with the tail of its output."""


class EnvManager:
    def __init__(
        self,
        root: Path,
        *,
        cache_dir: Path | None = None,
        use_uv: bool = True,
        offline: bool = False,
    ) -> None:
        self.root = root.expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / ".locks").mkdir(exist_ok=True)
        self.cache_dir = cache_dir
        self.offline = offline
        self.uv = find_uv() if use_uv else None
        self._pythons: dict[str, tuple[str, str, str | None]] = {}

    # -- specs -----------------------------------------------------------------------------
    def spec(
        self,
        requirements: Sequence[str] = (),
        *,
        requirement_files: Sequence[Path] = (),
        local_packages: Sequence[Path] = (),
        python: str | None = None,
        base_dir: Path | None = None,
    ) -> EnvSpec:
        """Normalise what an environment should contain; `python` is a version ("3.10") or a path."""
        key = python or ""
        if key not in self._pythons:  # `uv python find` takes a second: once per request
            self._pythons[key] = resolve_python(python, self.uv)
        path, version, warning = self._pythons[key]
        if warning:
            log.warning("%s", warning)
        return build_spec(
            version,
            requirements,
            requirement_files=requirement_files,
            local_packages=local_packages,
            base_dir=base_dir,
            python=path,
        )

    def ensure(
        self,
        requirements: Sequence[str] = (),
        *,
        requirement_files: Sequence[Path] = (),
        local_packages: Sequence[Path] = (),
        python: str | None = None,
        progress: Progress | None = None,
    ) -> Path:
        """The venv directory for these requirements: reused when cached, else built now."""
        spec = self.spec(
            requirements, requirement_files=requirement_files, local_packages=local_packages, python=python
        )
        return self.ensure_spec(spec, progress=progress)

    def ensure_spec(self, spec: EnvSpec, *, progress: Progress | None = None) -> Path:
        digest = spec.digest
        final = self.root / digest
        if (final / META).is_file():
            self._touch(final)
            return final
        with self._lock(digest):
            if (final / META).is_file():  # built by someone else while we waited
                self._touch(final)
                return final
            if final.exists():  # an interrupted in-place (pip) build
                shutil.rmtree(final)
            self._build(spec, final, progress)
        return final

    # -- queries ---------------------------------------------------------------------------
    @staticmethod
    def python_path(env_dir: Path) -> Path:
        return env_dir / "bin" / "python"

    @staticmethod
    def bin_dir(env_dir: Path) -> Path:
        return env_dir / "bin"

    def get(self, digest: str) -> dict[str, object]:
        meta = self.root / digest / META
        if "/" in digest or not meta.is_file():
            raise NotFound(f"No environment {digest!r}.")
        info: dict[str, object] = json.loads(meta.read_text())
        info["path"] = str(self.root / digest)
        info["last_used"] = self._last_used(self.root / digest)
        return info

    def list_envs(self) -> list[dict[str, object]]:
        out = []
        for child in sorted(self.root.iterdir()):
            if not child.name.startswith(".") and (child / META).is_file():
                out.append(self.get(child.name))
        return out

    def delete(self, digest: str) -> None:
        self.get(digest)
        with self._lock(digest):
            shutil.rmtree(self.root / digest, ignore_errors=True)

    def gc(self, keep_days: float = 30.0, in_use: Iterable[str] = ()) -> list[str]:
        """Delete environments not used for `keep_days` and not in `in_use`; stale temp dirs too."""
        keep = set(in_use)
        cutoff = time.time() - keep_days * 86400
        removed = []
        for child in sorted(self.root.iterdir()):
            if child.name.startswith(".tmp-"):
                if child.stat().st_mtime < time.time() - 3600:
                    shutil.rmtree(child, ignore_errors=True)
                continue
            if child.name.startswith(".") or child.name in keep or not child.is_dir():
                continue
            if self._last_used(child) < cutoff:
                with self._lock(child.name):
                    shutil.rmtree(child, ignore_errors=True)
                removed.append(child.name)
        return removed

    # -- building --------------------------------------------------------------------------
    def _build(self, spec: EnvSpec, final: Path, progress: Progress | None) -> None:
        started = time.monotonic()
        python = spec.python or sys.executable
        work = self.root / f".tmp-{spec.digest}-{secrets.token_hex(4)}" if self.uv else final
        try:
            work.parent.mkdir(parents=True, exist_ok=True)
            if self.uv:
                self._run([self.uv, "venv", "--relocatable", "--python", python, str(work)], progress)
            else:
                self._run([python, "-m", "venv", str(work)], progress)
            (work / "loopml-requirements.txt").write_text(spec.requirements_text())
            if spec.constraints:
                (work / "loopml-constraints.txt").write_text("\n".join(spec.constraints) + "\n")
            has_content = bool(spec.requirements or spec.local_packages)
            if has_content:
                self._run(self._install_cmd(work, spec), progress)
            freeze = self._freeze(work)
            meta = {
                "digest": spec.digest,
                "spec": spec.describe(),
                "python": python,
                "installer": "uv" if self.uv else "pip",
                "freeze": freeze,
                "created": time.time(),
                "build_seconds": round(time.monotonic() - started, 3),
            }
            tmp_meta = work / f".{META}.tmp"
            tmp_meta.write_text(json.dumps(meta, indent=2))
            if self.uv:
                os.replace(tmp_meta, work / META)
                os.rename(work, final)
            else:
                os.replace(tmp_meta, work / META)
            self._touch(final)
            log.info("built env %s in %.1fs (%d packages)", spec.digest, meta["build_seconds"], len(freeze))
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise

    def _install_cmd(self, work: Path, spec: EnvSpec) -> list[str]:
        req = str(work / "loopml-requirements.txt")
        cons = ["-c", str(work / "loopml-constraints.txt")] if spec.constraints else []
        if self.uv:
            cmd = [self.uv, "pip", "install", "--python", str(work / "bin" / "python"), "-r", req, *cons]
            if self.offline:
                cmd.append("--offline")
            return cmd
        cmd = [str(work / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-r", req]
        return cmd + cons + (["--no-index"] if self.offline else [])

    def _freeze(self, work: Path) -> list[str]:
        if self.uv:
            cmd = [self.uv, "pip", "freeze", "--python", str(work / "bin" / "python")]
        else:
            cmd = [str(work / "bin" / "python"), "-m", "pip", "freeze", "--all"]
        out = subprocess.run(cmd, capture_output=True, text=True, env=self._env(), timeout=120)
        return [line for line in out.stdout.splitlines() if line.strip()]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("VIRTUAL_ENV", None)
        env.pop("PYTHONHOME", None)
        if self.cache_dir is not None:
            env["UV_CACHE_DIR"] = str(self.cache_dir)
        # pip's index settings (environment only) carry over to uv.
        for pip_var, uv_var in (
            ("PIP_INDEX_URL", "UV_INDEX_URL"),
            ("PIP_EXTRA_INDEX_URL", "UV_EXTRA_INDEX_URL"),
            ("PIP_FIND_LINKS", "UV_FIND_LINKS"),
        ):
            if env.get(pip_var) and not env.get(uv_var):
                env[uv_var] = env[pip_var]
        env.setdefault("UV_NO_PROGRESS", "1")
        env.setdefault("UV_PYTHON_DOWNLOADS", "never")
        return env

    def _run(self, cmd: list[str], progress: Progress | None) -> None:
        tail: deque[str] = deque(maxlen=25)
        log.debug("running %s", cmd)
        with subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self._env(), bufsize=1
        ) as proc:
            assert proc.stdout is not None
            deadline = time.monotonic() + _BUILD_TIMEOUT_S
            for line in proc.stdout:
                line = line.rstrip()
                if line:
                    tail.append(line)
                    if progress:
                        progress(line)
                if time.monotonic() > deadline:
                    proc.kill()
                    tail.append(f"(killed after {_BUILD_TIMEOUT_S:.0f}s)")
                    break
            rc = proc.wait()
        if rc != 0:
            what = "creating the environment" if "venv" in cmd[1:3] else "installing requirements"
            raise EnvBuildError(
                f"Environment build failed while {what} (exit {rc}). Installer output (last lines):\n"
                + "\n".join(tail)
            )

    # -- helpers ---------------------------------------------------------------------------
    @contextmanager
    def _lock(self, digest: str) -> Iterator[None]:
        if not digest or "/" in digest or digest.startswith("."):
            raise InvalidArgument(f"Invalid environment digest {digest!r}.")
        with open(self.root / ".locks" / f"{digest}.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @staticmethod
    def _touch(env_dir: Path) -> None:
        try:
            (env_dir / ".last-used").touch()
        except OSError:
            pass

    @staticmethod
    def _last_used(env_dir: Path) -> float:
        for name in (".last-used", META):
            try:
                return (env_dir / name).stat().st_mtime
            except OSError:
                continue
        return 0.0
