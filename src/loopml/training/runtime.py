"""Where a job runs: the interpreter, working directory, base environment and argv.

Container jobs run in the environment of an image built by `loopml images build`
(`images.resolve(uri) -> ImageRuntime`). Python-package jobs run in the environment of the
prebuilt executor image plus the user's sdist, installed into an env cached by hash through the
EnvManager. The image and env services are duck-typed to the contract in BRIEF (they live in
`loopml.envs`); when none is configured the server's own interpreter is used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from loopml.artifacts import ArtifactStore
from loopml.errors import FailedPrecondition, InvalidArgument
from loopml.training.spec import WorkerPool

log = logging.getLogger(__name__)


@dataclass
class Launch:
    """Everything needed to start the job's process."""

    argv: list[str]
    cwd: Path | None  # None: the job's own scratch directory
    env: dict[str, str] = field(default_factory=dict)
    bin_dirs: list[str] = field(default_factory=list)
    docker: Any = None
    """A `DockerRun` (image, command, args, mounts) when the Docker engine runs the image; the
    runner fills in the environment and runs `docker run` instead of `argv`."""
    engine: Any = None
    """The `DockerEngine` for `docker`."""


def _rt_attr(runtime: Any, name: str, default: Any) -> Any:
    value = getattr(runtime, name, default)
    return default if value is None else value


def _which(program: str, bin_dirs: list[str]) -> str:
    if "/" in program:
        return program
    for d in bin_dirs:
        candidate = Path(d) / program
        if candidate.exists():
            return str(candidate)
    return shutil.which(program) or program


def check_package_uris(store: ArtifactStore, uris: list[str]) -> list[Path]:
    """Package URIs must be objects inside the store; anything else is a 400."""
    paths = []
    for uri in uris:
        if not uri.startswith(("gs://", "s3://")):
            raise InvalidArgument(
                f"packageUris entry {uri!r} is not a gs:// URI: upload the sdist to a bucket first "
                "(e.g. `gsutil cp dist/pkg.tar.gz gs://bucket/code/` against loopml)."
            )
        path = store.fetch(uri)  # from the object store into the local cache, when there is one
        if not path.is_file():
            raise InvalidArgument(f"packageUris entry {uri!r} does not exist in the store.")
        paths.append(path)
    return paths


class RuntimeResolver:
    """Turns a worker pool into a `Launch`, using the image and env services when present."""

    def __init__(self, store: ArtifactStore, services: dict[str, Any] | None = None) -> None:
        self.store = store
        self.services = services if services is not None else {}

    @property
    def images(self) -> Any:
        return self.services.get("images")

    @property
    def envs(self) -> Any:
        return self.services.get("envs")

    def image_runtime(self, uri: str) -> Any:
        if self.images is None:
            return None
        return self.images.resolve(uri)

    def check_image(self, pool: WorkerPool) -> None:
        """Fail early (400) when a container image is unknown: it must be built first."""
        if pool.image_uri is None or self.images is None:
            return
        engine = self._docker_for(pool.image_uri)
        if engine is not None:
            from loopml.images.docker import check_image_ref

            check_image_ref(pool.image_uri)
            engine.check()  # a 400 when the engine is not reachable (docker info's text: log only)
            return
        if self.image_runtime(pool.image_uri) is None:
            raise FailedPrecondition(
                f"Image {pool.image_uri!r} is not known to loopml: build it first with "
                f"`loopml images build <dir> --tag {pool.image_uri}`."
            )

    def launch(self, pool: WorkerPool, logf: TextIO) -> Launch:
        if pool.is_python_package:
            return self._package_launch(pool, logf)
        return self._container_launch(pool)

    # -- containerSpec ---------------------------------------------------------------------
    def _docker_for(self, uri: str) -> Any:
        return self.images.docker_for(uri) if self.images is not None else None

    def _container_launch(self, pool: WorkerPool) -> Launch:
        assert pool.image_uri is not None
        engine = self._docker_for(pool.image_uri)
        if engine is not None:
            from loopml.images.docker import DockerRun

            engine.check()
            # The buckets as the Vertex /gcs/ view, read-write as in a training container; run as
            # the server's uid:gid by default, so what the job writes there the server can delete.
            mounts = [(str(self.store.buckets_dir), "/gcs", False)]
            run = DockerRun(
                pool.image_uri,
                "job",
                list(pool.command),
                list(pool.args),
                mounts=mounts,
                user=engine.job_user,
            )
            return Launch(argv=[], cwd=None, docker=run, engine=engine)
        runtime = self.image_runtime(pool.image_uri)
        if runtime is None:
            if self.images is not None:
                raise FailedPrecondition(f"Image {pool.image_uri!r} is not built (loopml images build).")
            # No image service: the server's interpreter, argv from the spec only.
            argv = [*pool.command, *pool.args]
            if not argv:
                raise FailedPrecondition(f"Image {pool.image_uri!r} is unknown and no command was given.")
            bin_dirs = [str(Path(sys.executable).parent)]
            if argv[0] in ("python", "python3"):
                argv[0] = sys.executable
            return Launch(argv=argv, cwd=None, bin_dirs=bin_dirs)
        if hasattr(runtime, "argv") and callable(runtime.argv):
            try:
                argv = list(runtime.argv(pool.command or None, pool.args or None))
            except ValueError as exc:
                raise FailedPrecondition(str(exc)) from exc
        else:
            argv = self._plain_argv(runtime, pool)
        python = str(_rt_attr(runtime, "python", sys.executable))
        bin_dir = _rt_attr(runtime, "bin_dir", None)
        bin_dirs = [str(bin_dir)] if bin_dir else [str(Path(python).parent)]
        workdir = Path(_rt_attr(runtime, "workdir", None) or _rt_attr(runtime, "root", Path.cwd()))
        return Launch(argv=argv, cwd=workdir, env=self._image_env(runtime), bin_dirs=bin_dirs)

    @staticmethod
    def _image_env(runtime: Any) -> dict[str, str]:
        if hasattr(runtime, "process_env") and callable(runtime.process_env):
            env = runtime.process_env(inherit=False)
        else:
            env = dict(_rt_attr(runtime, "env", {}))
        return {str(k): str(v) for k, v in env.items()}

    @staticmethod
    def _plain_argv(runtime: Any, pool: WorkerPool) -> list[str]:
        """Vertex (Kubernetes) semantics: command replaces ENTRYPOINT, args replace CMD."""
        entrypoint = list(_rt_attr(runtime, "entrypoint", []))
        cmd = list(_rt_attr(runtime, "cmd", []))
        if pool.command:
            argv = [*pool.command, *pool.args]
        else:
            argv = [*entrypoint, *(pool.args if pool.args else cmd)]
        if not argv:
            raise FailedPrecondition(
                f"Image {pool.image_uri!r} has no ENTRYPOINT/CMD and the job gives no command."
            )
        python = str(_rt_attr(runtime, "python", sys.executable))
        if argv[0] in ("python", "python3"):
            argv[0] = python
        else:
            bin_dir = _rt_attr(runtime, "bin_dir", None)
            argv[0] = _which(argv[0], [str(bin_dir)] if bin_dir else [])
        return argv

    # -- pythonPackageSpec -----------------------------------------------------------------
    def _package_launch(self, pool: WorkerPool, logf: TextIO) -> Launch:
        assert pool.executor_image_uri is not None and pool.python_module is not None
        sdists = check_package_uris(self.store, pool.package_uris)
        runtime = self.image_runtime(pool.executor_image_uri)
        base_python = str(_rt_attr(runtime, "python", sys.executable)) if runtime else sys.executable
        env = self._image_env(runtime) if runtime else {}
        python = self._install(base_python, sdists, logf)
        bin_dirs = [str(Path(python).parent)]
        argv = [python, "-m", pool.python_module, *pool.args]
        return Launch(argv=argv, cwd=None, env=env, bin_dirs=bin_dirs)

    def _install(self, base_python: str, sdists: list[Path], logf: TextIO) -> str:
        """A venv layered on the executor's interpreter with the sdists installed, cached by hash."""
        digest = hashlib.sha256(base_python.encode())
        for p in sdists:
            digest.update(hashlib.sha256(p.read_bytes()).digest())
        key = digest.hexdigest()[:24]
        return layered_env(self.store.root / "envs" / "jobs" / key, base_python, sdists, logf)


def layered_env(target: Path, base_python: str, sdists: list[Path], logf: TextIO) -> str:
    """A venv that sees the base interpreter's site-packages (a `.pth`), plus the sdists.

    pip runs with `--python` on the new venv, so dependencies the base already has count as
    installed and only what is missing is fetched. The venv is built next to its final place
    and renamed into it, so a crash never leaves a half-built cached env.
    """
    import json
    import subprocess

    python = target / "bin" / "python"
    if (target / ".complete").exists():
        logf.write(f"[loopml] using cached package environment {target.name}\n")
        logf.flush()
        return str(python)
    work = target.with_name(f".tmp-{target.name}-{os.getpid()}")
    if work.exists():
        shutil.rmtree(work)
    target.parent.mkdir(parents=True, exist_ok=True)
    logf.write(f"[loopml] building package environment {target.name} on {base_python}\n")
    logf.flush()
    probe = subprocess.run(
        [
            base_python,
            "-c",
            "import json, site, sys; print(json.dumps([p for p in sys.path if p.endswith('-packages')]))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    site_dirs = json.loads(probe.stdout)
    subprocess.run(
        [base_python, "-m", "venv", "--without-pip", str(work)],
        check=True,
        stdout=logf,
        stderr=subprocess.STDOUT,
    )
    for purelib in (work / "lib").glob("python*/site-packages"):
        (purelib / "_loopml_base.pth").write_text("\n".join(site_dirs) + "\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(work / "bin" / "python"),
            "install",
            "--no-input",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            *[str(p) for p in sdists],
        ],
        stdout=logf,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PIP_NO_INPUT": "1"},
    )
    if result.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        raise FailedPrecondition(
            f"Installing the python package failed (pip exit {result.returncode}); see the job log."
        )
    (work / ".complete").write_text("ok\n")
    if target.exists():
        shutil.rmtree(work, ignore_errors=True)  # someone else finished first
    else:
        os.replace(work, target)
    return str(python)
