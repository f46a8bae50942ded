"""Running images with a Docker engine: `LOOPML_CONTAINER_ENGINE=docker`.

With the default engine (`loopml`) every image runs as a host process (`ImageRuntime`). With
`docker`, an image reference that loopml's catalog does not know and that is not a prebuilt
Vertex image (for example one built with `loopml images build --engine docker`, or pulled into
Docker) is run by the docker CLI instead:

    docker run --rm --name loopml-<kind>-<hash>-<id> --network host --label loopml.home=<hash>
        [--user UID:GID (jobs)] [-e NAME ...] [-v HOST:CONTAINER[:ro] ...] [--entrypoint COMMAND0] IMAGE [ARGS ...]

The container's variables are passed by name only (`-e NAME`): their values are in the
environment of the `docker run` process, where the docker CLI reads them, so they never appear
on a command line (`ps`), in a log or in an error message.

The container shares the host's network, so `AIP_HTTP_PORT` is a port chosen free on the host
and the emulator variables that point at the server's `127.0.0.1` URL work unchanged. The
`docker run` process is the supervised child (its output is the job's or replica's log); the
container is stopped with `docker stop`/`docker rm -f` by name. Every container carries the
label `loopml.home=<hash of LOOPML_HOME>`, so a server removes the ones a previous (killed)
server of the same home left behind, and never touches anyone else's.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from loopml.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger(__name__)

ENGINES = ("loopml", "docker")
HOME_LABEL = "loopml.home"
KIND_LABEL = "loopml.kind"
_NAME_BAD = re.compile(r"[^a-zA-Z0-9_.-]")
_ENV_NAME = re.compile(r"^[^=\s\x00]+\Z")
# A Docker image reference: [host[:port]/]path[:tag][@digest]. Never starting with '-' (the
# docker CLI would take it for an option, e.g. --privileged).
_IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:-]*(?:@sha256:[a-f0-9]{64})?\Z")
_USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(?::[A-Za-z0-9_][A-Za-z0-9_.-]*)?\Z")
# What the docker CLI itself needs from the server's environment (never the containers' env).
_CLIENT_VARS = ("PATH", "HOME", "USER", "LANG", "LC_ALL", "TMPDIR", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME")
# Variables the docker CLI (a Go program) reads itself besides those: a container variable of
# such a name cannot travel in the CLI's environment and is passed as `-e K=V` instead.
_CLIENT_READS = frozenset(
    {"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "SSH_AUTH_SOCK"}
    | {"GODEBUG", "GOGC", "GOMAXPROCS", "GOMEMLIMIT", "GOTRACEBACK"}
)


def _read_by_client(name: str) -> bool:
    upper = name.upper()
    return name in _CLIENT_VARS or upper.startswith("DOCKER_") or upper in _CLIENT_READS


def check_engine_name(name: str) -> str:
    if name not in ENGINES:
        raise InvalidArgument(f"LOOPML_CONTAINER_ENGINE must be one of {', '.join(ENGINES)}, not {name!r}.")
    return name


def check_image_ref(image: str) -> str:
    """An image reference docker will read as an image (InvalidArgument otherwise)."""
    if not isinstance(image, str) or len(image) > 512 or not _IMAGE_RE.match(image):
        raise InvalidArgument(
            f"Image reference {image!r} is not a Docker image name ([HOST/]NAME[:TAG][@sha256:DIGEST])."
        )
    return image


def job_user(setting: str | None) -> str | None:
    """`docker run --user` of job containers from LOOPML_DOCKER_USER: unset = the server's own
    uid:gid (what a job writes under the /gcs mount stays the server's to replace or delete);
    empty = no --user (the image's USER, often root); else USER[:GROUP] as given."""
    if setting is None:
        return f"{os.getuid()}:{os.getgid()}"
    setting = setting.strip()
    if not setting:
        return None
    if not _USER_RE.match(setting):
        raise InvalidArgument(f"LOOPML_DOCKER_USER must be USER[:GROUP] (names or ids), not {setting!r}.")
    return setting


def home_hash(home: Path) -> str:
    """The value of the `loopml.home` label: which server home a container belongs to."""
    return hashlib.sha256(str(Path(home).expanduser().resolve()).encode()).hexdigest()[:16]


def container_name(kind: str, ident: str) -> str:
    """`loopml-<kind>-<id>`, with characters Docker refuses in names replaced by `-`."""
    return _NAME_BAD.sub("-", f"loopml-{kind}-{ident}")


@dataclass
class DockerRun:
    """One container to run: the image, Vertex `command`/`args`, its environment and mounts."""

    image: str
    kind: str  # "job" or "replica"
    command: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    mounts: list[tuple[str, str, bool]] = field(default_factory=list)  # host, container, read-only
    user: str | None = None  # `--user`; None: the image's USER


@dataclass
class DockerCommand:
    """A `docker run` to start: its argv, the docker CLI's environment (which holds the values
    of the container variables passed by name), and the command line as logs show it."""

    argv: list[str]
    env: dict[str, str]
    shown: str


class DockerEngine:
    """The docker CLI, as loopml uses it: check, run, stop, and clean up by label."""

    def __init__(
        self,
        home: Path,
        binary: str = "docker",
        *,
        check_ttl_s: float = 30.0,
        failure_ttl_s: float = 5.0,
        info_timeout_s: float = 5.0,
        user: str | None = None,
    ) -> None:
        self.label_value = home_hash(home)
        self.job_user = user
        """`--user` of job containers (`job_user(LOOPML_DOCKER_USER)`); replicas run as the image says."""
        self._binary = binary
        self._check_ttl_s = check_ttl_s
        self._failure_ttl_s = failure_ttl_s
        self._info_timeout_s = info_timeout_s
        self._checked_at = 0.0
        self._failed: tuple[float, str] | None = None  # (when, the client's message) of the last failure
        self._lock = threading.Lock()

    @property
    def label(self) -> str:
        return f"{HOME_LABEL}={self.label_value}"

    def name(self, kind: str, ident: str) -> str:
        """`loopml-<kind>-<home hash[:12]>-<id>`: the home is in the name, so two servers (two
        LOOPML_HOMEs) on one engine never take, or `docker rm -f`, each other's containers."""
        return container_name(kind, f"{self.label_value[:12]}-{ident}")

    # -- the CLI -------------------------------------------------------------------------------
    def binary(self) -> str:
        found = shutil.which(self._binary)
        if not found:
            raise FailedPrecondition(
                "LOOPML_CONTAINER_ENGINE=docker, but the docker CLI was not found on the server's PATH."
            )
        return found

    @staticmethod
    def client_env() -> dict[str, str]:
        """The docker CLI's own environment: PATH/HOME and its DOCKER_* settings, nothing else."""
        env = {k: v for k, v in os.environ.items() if k in _CLIENT_VARS or k.startswith("DOCKER_")}
        env.setdefault("PATH", os.defpath)
        return env

    def _cli(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.binary(), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.client_env(),
            stdin=subprocess.DEVNULL,
        )

    def check(self) -> None:
        """Raise FailedPrecondition (HTTP 400) when the engine is not reachable. The message is a
        fixed one (`docker info`'s own text, which can name DOCKER_HOST or a context, goes to
        the server log). A success is remembered for `check_ttl_s`, a failure for
        `failure_ttl_s`, so callers waiting while the engine is down do not each wait for a
        `docker info` of their own (at most `info_timeout_s`)."""
        with self._lock:
            now = time.monotonic()
            if now - self._checked_at < self._check_ttl_s:
                return
            if self._failed is not None and now - self._failed[0] < self._failure_ttl_s:
                raise FailedPrecondition(self._failed[1])
            try:
                self._probe()
            except FailedPrecondition as exc:
                self._failed = (time.monotonic(), exc.message)
                raise
            self._failed = None
            self._checked_at = time.monotonic()

    def _probe(self) -> None:
        limit = self._info_timeout_s
        try:
            proc = self._cli("info", timeout=limit)
        except subprocess.TimeoutExpired:
            log.warning("docker engine check: `docker info` did not finish within %gs", limit)
            raise FailedPrecondition(
                "LOOPML_CONTAINER_ENGINE=docker, but the Docker engine does not answer: "
                f"`docker info` did not finish within {limit:g}s."
            ) from None
        except OSError as exc:
            log.warning("docker engine check: cannot run `docker info`: %s", exc)
            raise FailedPrecondition(
                "LOOPML_CONTAINER_ENGINE=docker, but the docker CLI cannot be run; "
                "the server log has the error."
            ) from None
        if proc.returncode != 0:
            lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
            log.warning(
                "docker engine check: `docker info` exited with status %d: %s",
                proc.returncode,
                " | ".join(lines[-5:]),
            )
            raise FailedPrecondition(
                "LOOPML_CONTAINER_ENGINE=docker, but the Docker engine is not reachable: "
                f"`docker info` failed with exit status {proc.returncode}; the server log has its error."
            )

    # -- run -----------------------------------------------------------------------------------
    def run_command(self, name: str, run: DockerRun) -> DockerCommand:
        """The exact `docker run` command line for a container (Vertex command/args semantics:
        command replaces ENTRYPOINT and drops CMD; args alone replace CMD) and the environment
        to run it in. Container variables are passed by name (`-e NAME`), their values in the
        CLI's environment; only a name the CLI reads itself (DOCKER_*, HOME, proxies…) is passed
        as `-e NAME=VALUE`. `shown` (for logs) has the variable names only."""
        check_image_ref(run.image)
        argv = [self.binary(), "run", "--rm", "--name", name, "--network", "host"]
        argv += ["--label", self.label, "--label", f"{KIND_LABEL}={run.kind}"]
        if run.user is not None:
            if not _USER_RE.match(run.user):
                raise InvalidArgument(f"Cannot run a container as user {run.user!r}: USER[:GROUP] expected.")
            argv += ["--user", run.user]
        shown = list(argv)
        env = self.client_env()
        by_name: dict[str, str] = {}
        for key, value in run.env.items():
            if not _ENV_NAME.match(key):
                raise InvalidArgument(f"Environment variable name {key!r} cannot be passed to a container.")
            if _read_by_client(key):
                argv += ["-e", f"{key}={value}"]
            else:
                argv += ["-e", key]
                by_name[key] = str(value)
            shown += ["-e", key]
        env.update(by_name)
        rest: list[str] = []
        for host, target, read_only in run.mounts:
            if not os.path.isabs(host) or not os.path.isabs(target) or ":" in host + target:
                raise InvalidArgument(f"Cannot mount {host!r} at {target!r}: absolute paths without ':'.")
            rest += ["-v", f"{host}:{target}" + (":ro" if read_only else "")]
        tail: list[str]
        if run.command:
            rest += ["--entrypoint", run.command[0]]
            tail = [*run.command[1:], *run.args]
        else:
            tail = list(run.args)
        rest += [run.image, *tail]
        return DockerCommand(argv=[*argv, *rest], env=env, shown=" ".join([*shown, *rest]))

    # -- stop and clean up -------------------------------------------------------------------
    def stop(self, name: str, timeout_s: float = 5.0) -> None:
        """`docker stop -t N` (SIGTERM, then SIGKILL after N s), then `remove_until_gone` (the
        container may not have been started with --rm's cleanup yet, or may have been created
        only now by a `docker run` stopped just after it started). Errors are logged only."""
        grace = max(0, round(timeout_s))
        try:
            proc = self._cli("stop", "-t", str(grace), name, timeout=grace + 30.0)
        except (subprocess.TimeoutExpired, FailedPrecondition, OSError) as exc:
            log.warning("docker stop %s failed: %s", name, exc)
        else:
            if proc.returncode != 0 and "no such container" not in proc.stderr.lower():
                log.warning("docker stop %s: %s", name, proc.stderr.strip()[-300:])
        self.remove_until_gone(name)

    def remove(self, name: str) -> None:
        """`docker rm -f NAME`, quietly (a container of that name may not exist)."""
        try:
            proc = self._cli("rm", "-f", name)
        except (subprocess.TimeoutExpired, FailedPrecondition, OSError) as exc:
            log.warning("docker rm -f %s failed: %s", name, exc)
            return
        if proc.returncode != 0 and "no such container" not in proc.stderr.lower():
            log.warning("docker rm -f %s: %s", name, proc.stderr.strip()[-300:])

    def listed(self, name: str) -> bool | None:
        """Whether `docker ps -a` lists a container of exactly this name (None: cannot tell)."""
        try:
            proc = self._cli("ps", "-a", "--filter", f"name={name}", "--format", "{{.Names}}")
        except (subprocess.TimeoutExpired, FailedPrecondition, OSError) as exc:
            log.warning("docker ps for %s failed: %s", name, exc)
            return None
        if proc.returncode != 0:
            log.warning("docker ps for %s: %s", name, proc.stderr.strip()[-300:])
            return None
        return name in (line.strip() for line in proc.stdout.splitlines())

    def remove_until_gone(self, name: str, attempts: int = 5, pause_s: float = 0.5) -> bool:
        """`docker rm -f NAME` until `docker ps -a` no longer lists it, at most `attempts` times.

        A `docker run` cancelled right after it started can have its container created by the
        daemon only after a first `rm -f`; repeating closes that window. False (and a warning)
        when the container is still there or the engine cannot say."""
        for attempt in range(attempts):
            self.remove(name)
            if self.listed(name) is False:
                return True
            if attempt + 1 < attempts:
                time.sleep(pause_s)
        log.warning("container %s may still exist after %d `docker rm -f`", name, attempts)
        return False

    def containers(self) -> list[str]:
        """Names of this home's containers, running or not."""
        proc = self._cli("ps", "-a", "--filter", f"label={self.label}", "--format", "{{.Names}}")
        if proc.returncode != 0:
            raise FailedPrecondition(f"`docker ps` failed: {proc.stderr.strip()[-300:]}")
        return [line.strip() for line in proc.stdout.splitlines() if line.strip()]

    async def cleanup_hook(self) -> None:
        """Server start/stop hook: `remove_leftovers` in a worker thread (it runs the docker CLI),
        never failing the server and never blocking the event loop."""
        await asyncio.to_thread(self.remove_leftovers)

    def remove_leftovers(self) -> list[str]:
        """Remove every container of this home (start and stop hook of the server)."""
        try:
            self.check()
            names = self.containers()
        except (FailedPrecondition, subprocess.TimeoutExpired, OSError) as exc:
            message = getattr(exc, "message", str(exc))
            log.warning("cannot look for leftover loopml containers: %s", message)
            return []
        for name in names:
            log.warning("removing leftover container %s", name)
            self.remove(name)
        return names


def env_for_container(env: Mapping[str, str], drop: Sequence[str] = ()) -> dict[str, str]:
    """A container's environment: no host PATH (the image has its own), nothing in `drop`."""
    return {k: str(v) for k, v in env.items() if k != "PATH" and k not in drop}
