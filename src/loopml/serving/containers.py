"""Custom serving containers run as host processes with the Vertex container contract.

The process is started from the image runtime (IMG's `ImageRuntime`: its venv `bin` first on
PATH, workdir, ENV, entrypoint + cmd) or from `containerSpec.command/args`, with the `AIP_*`
variables of vertex-api.md §8 (platform values win over the image's ENV and `containerSpec.env`).
It is health-checked over HTTP before it gets traffic; predict and rawPredict are forwarded over
keep-alive HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from pathlib import Path
from typing import Any

import orjson

from loopml.errors import FailedPrecondition
from loopml.serving.handler import error_body
from loopml.serving.protocol import KIND_EXPLAIN, KIND_RAW
from loopml.serving.replicas import JSON_CT, Item, Replica, ReplicaDied, Reply

log = logging.getLogger(__name__)


def free_port(preferred: int | None = None) -> int:
    """`preferred` when nothing listens on it, else any free port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        if preferred:
            try:
                s.bind(("0.0.0.0", preferred))
                return preferred
            except OSError:
                pass
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rewrite_port(argv: list[str], old: int, new: int) -> list[str]:
    """Point common server flags (`--port 8080`, `-b 0.0.0.0:8080`, shell forms) at another port.

    Used when the declared container port is taken on this host (e.g. by the loopml server on
    8080): uvicorn/gunicorn/flask command lines that hard-code it follow AIP_HTTP_PORT instead.
    """
    if old == new:
        return list(argv)
    o, n = str(old), str(new)
    flag_re = re.compile(rf"((?:--port|-p)[ =]|(?:--bind|-b)[ =]\S*:)({o})\b")
    out: list[str] = []
    for i, token in enumerate(argv):
        prev = argv[i - 1] if i else ""
        if prev in ("--port", "-p") and token == o:
            token = n
        elif (prev in ("--bind", "-b") and token.endswith(":" + o)) or (
            token.startswith(("--port=", "--bind=")) and token.endswith(("=" + o, ":" + o))
        ):
            token = token[: -len(o)] + n
        elif " " in token:  # a shell form: sh -c "uvicorn main:app --port 8080"
            token = flag_re.sub(lambda m: m.group(1) + n, token)
        out.append(token)
    return out


def listening_ports(pid: int) -> list[int]:
    """TCP ports a process (or any of its children) listens on."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return []
    ports: list[int] = []
    for proc in procs:
        try:
            conns = proc.net_connections(kind="tcp")
        except psutil.Error:
            continue
        ports.extend(c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN)
    return sorted(set(ports))


class ContainerReplica(Replica):
    kind = "custom-container"
    max_batch = 1
    depth = 8

    def __init__(
        self,
        replica_id: str,
        log_path: Path,
        start_timeout: float,
        *,
        argv: list[str],
        env: dict[str, str],
        cwd: Path | None,
        predict_route: str,
        health_route: str,
        meta: dict[str, str],
        preferred_port: int | None = None,
    ) -> None:
        super().__init__(replica_id, log_path, start_timeout)
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.predict_route = predict_route
        self.health_route = health_route
        self.port = 0
        self.preferred_port = preferred_port
        self._client: Any = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        tail = orjson.dumps(meta)
        self._tail = b"," + tail[1:]
        self._dm_id = meta["deployedModelId"]
        self.health_failures = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        # Vertex gives the first containerSpec port (default 8080); take it when it is free here,
        # else any free port. A server that ignores AIP_HTTP_PORT and listens elsewhere is found
        # by looking at the ports its process tree listens on.
        self.port = free_port(self.preferred_port)
        self.state = "starting"
        self.close()
        if self._start_at_port():
            return
        # The port was free when chosen but taken before the server bound it (another replica or
        # process got there first): once more, on another free port.
        taken = self.port
        self.port = free_port()
        log.warning(
            "replica %s: port %d was taken meanwhile; retrying on %d", self.replica_id, taken, self.port
        )
        self._note(f"port {taken} was taken before the server bound it; retrying on port {self.port}")
        if not self._start_at_port():
            raise self.fail_start(self._exited_message())

    def _note(self, text: str) -> None:
        try:
            with open(self.log_path, "a", encoding="utf-8") as out:
                out.write(f"--- loopml: {text}\n")
        except OSError:
            pass

    def _exited_message(self) -> str:
        code = self.proc.returncode if self.proc else None
        return (
            f"Custom container replica {self.replica_id} exited with code {code} before its "
            f"health route {self.health_route} answered."
        )

    def _start_at_port(self) -> bool:
        """Launch on `self.port` and wait until healthy: True. False when the process exited
        because that port was taken (its output says "address already in use"); any other
        failure raises (nothing left running)."""
        import httpx

        env = dict(self.env, AIP_HTTP_PORT=str(self.port))
        argv = self.argv
        if self.preferred_port and self.port != self.preferred_port:
            argv = rewrite_port(argv, self.preferred_port, self.port)
        try:
            offset = self.log_path.stat().st_size
        except OSError:
            offset = 0
        self._launch(argv, env)
        deadline = time.monotonic() + self.start_timeout
        last = "no answer yet"
        with httpx.Client(timeout=10.0) as client:
            while time.monotonic() < deadline:
                if not self.alive():
                    if self._port_taken(offset):
                        return False
                    raise self.fail_start(self._exited_message())
                try:
                    r = client.get(self.base_url + self.health_route)
                    if r.status_code == 200:
                        self.state = "ready"
                        self.info = {"port": self.port, "healthRoute": self.health_route}
                        return True
                    last = f"HTTP {r.status_code}"
                except httpx.HTTPError as exc:
                    last = type(exc).__name__
                    if isinstance(exc, httpx.ConnectError) and self.proc is not None:
                        ports = listening_ports(self.proc.pid)
                        if ports and self.port not in ports:
                            log.info(
                                "replica %s listens on port %d, not AIP_HTTP_PORT %d",
                                self.replica_id,
                                ports[0],
                                self.port,
                            )
                            self.port = ports[0]
                            continue
                time.sleep(0.1)
        raise self.fail_start(
            f"Custom container replica {self.replica_id} did not become healthy within "
            f"{self.start_timeout:.0f}s (GET {self.health_route} on port {self.port}: {last})."
        )

    def _port_taken(self, offset: int) -> bool:
        """Whether the output of this launch (the log from `offset`) reports a bind failure."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                text = f.read(256 * 1024).decode(errors="replace").lower()
        except OSError:
            return False
        return "address already in use" in text or "eaddrinuse" in text

    def _launch(self, argv: list[str], env: dict[str, str]) -> None:
        """Start the server process (a Docker replica starts `docker run` instead)."""
        self._spawn(argv, env, self.cwd)

    def check_health(self) -> bool:
        """One health probe (blocking); used by the monitor every few seconds."""
        import httpx

        try:
            ok = httpx.get(self.base_url + self.health_route, timeout=10.0).status_code == 200
        except httpx.HTTPError:
            ok = False
        self.health_failures = 0 if ok else self.health_failures + 1
        return ok

    def _http(self) -> Any:
        import httpx

        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = httpx.AsyncClient(
                base_url=self.base_url,
                timeout=httpx.Timeout(300.0, connect=5.0),
                limits=httpx.Limits(max_connections=self.depth, max_keepalive_connections=self.depth),
            )
            self._client_loop = loop
        return self._client

    async def _one(self, item: Item) -> Reply:
        import httpx

        kind, body, ctype = item
        if kind == KIND_EXPLAIN:
            msg = f"Deployed model {self._dm_id} is a custom container; :explain is not supported for it."
            return 400, error_body(400, "FAILED_PRECONDITION", msg), JSON_CT
        try:
            r = await self._http().post(self.predict_route, content=body, headers={"content-type": ctype})
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            raise ReplicaDied(f"custom container {self.replica_id}: {type(exc).__name__}: {exc}") from exc
        except httpx.TimeoutException as exc:
            return 503, error_body(503, "UNAVAILABLE", f"The model server timed out: {exc}"), JSON_CT
        content = r.content
        rtype = r.headers.get("content-type", JSON_CT)
        if kind == KIND_RAW or r.status_code != 200:
            return r.status_code, content, rtype
        try:
            data = orjson.loads(content)
        except orjson.JSONDecodeError:
            msg = "The custom container's predict route did not return JSON."
            return 500, error_body(500, "INTERNAL", msg), JSON_CT
        if not isinstance(data, dict):
            data = {"predictions": data}
        body_out = orjson.dumps(data)
        body_out = body_out[:-1] + (self._tail if len(body_out) > 2 else self._tail[1:])
        return 200, body_out, JSON_CT

    async def call(self, items: list[Item]) -> list[Reply]:
        if len(items) == 1:
            return [await self._one(items[0])]
        return list(await asyncio.gather(*(self._one(i) for i in items)))

    def close(self) -> None:
        client, loop = self._client, self._client_loop
        self._client = None
        if client is not None and loop is not None and not loop.is_closed():
            try:
                asyncio.run_coroutine_threadsafe(client.aclose(), loop)
            except RuntimeError:
                pass


def build_container_env(
    spec: Any, runtime: Any, storage_uri: str, predict_route: str, health_route: str, base: dict[str, str]
) -> dict[str, str]:
    """Environment of a custom container: base < image ENV < containerSpec.env < AIP_* values."""
    env = dict(base)
    if runtime is not None:
        env.update({str(k): str(v) for k, v in (runtime.env or {}).items()})
        bin_dir = getattr(runtime, "bin_dir", None)
        if bin_dir:
            env["PATH"] = f"{bin_dir}:{env.get('PATH', '')}".rstrip(":")
    for entry in spec.container_spec.get("env") or []:
        if isinstance(entry, dict) and entry.get("name"):
            env[str(entry["name"])] = str(entry.get("value", ""))
    env.update(
        {
            "AIP_PREDICT_ROUTE": predict_route,
            "AIP_HEALTH_ROUTE": health_route,
            "AIP_STORAGE_URI": storage_uri,
            "AIP_ENDPOINT_ID": spec.endpoint_id,
            "AIP_DEPLOYED_MODEL_ID": spec.deployed_model_id,
            "AIP_MODEL_NAME": spec.deployed_model_id,
            "AIP_VERSION_NAME": spec.model_version_id,
            "AIP_MACHINE_TYPE": spec.machine_type,
            "AIP_ACCELERATOR_TYPE": "",
            "AIP_PROJECT_NUMBER": spec.endpoint_name.split("/")[1] if "/" in spec.endpoint_name else "",
            "AIP_FRAMEWORK": "CUSTOM_CONTAINER",
            "AIP_MODE": "PREDICTION",
            "AIP_MODE_VERSION": "1.0.0",
        }
    )
    return env


def container_argv(spec: Any, runtime: Any) -> tuple[list[str], Path | None]:
    cs = spec.container_spec
    command = [str(x) for x in cs.get("command") or []]
    args = [str(x) for x in cs.get("args") or []]
    if command:
        argv = command + args
    elif runtime is not None:
        argv = list(runtime.entrypoint or []) + (args or list(runtime.cmd or []))
    else:
        argv = args
    if not argv:
        image = cs.get("imageUri", "")
        raise FailedPrecondition(
            f"Cannot start the custom container for {image or 'this model'}: the image is not known "
            "locally (build it with `loopml images build`) and containerSpec has no command."
        )
    cwd = Path(runtime.workdir) if runtime is not None and getattr(runtime, "workdir", None) else None
    return argv, cwd
