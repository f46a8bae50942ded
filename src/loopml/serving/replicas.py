"""Replicas as the router sees them: a model-server process, a custom container, or in-process.

Every replica offers the same small surface to the router: `start()` (blocking: spawn and wait
until the health check passes, or raise and leave nothing running), `async call(items)` (send
requests, get `(status, body, content_type)` back; raises `ReplicaDied` if the replica goes away
mid-flight), `alive()`, `stop()`, and its status. Built-in replicas speak the binary frame
protocol over a Unix socket (one persistent connection, requests pipelined); custom containers
speak HTTP (keep-alive, httpx).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from loopml.errors import FailedPrecondition, LoopmlError
from loopml.serving.protocol import (
    HEADER_SIZE,
    TYPE_BATCH,
    TYPE_HEALTH,
    decode_response,
    encode_request,
    frame_length,
)

log = logging.getLogger(__name__)

Item = tuple[int, bytes, str]  # kind, body, content type
Reply = tuple[int, bytes, str]  # status, body, content type
JSON_CT = "application/json"


class Spawner:
    """Starts replica processes from one long-lived thread, tied to the server's life.

    On Linux each child gets `PR_SET_PDEATHSIG` = SIGKILL, so replicas (custom containers too)
    die with the server even when it is SIGKILLed. The signal follows the *thread* that forked,
    so every spawn happens on this one thread, which lives as long as the serving service.
    """

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loopml-spawn")
        self._prctl: Any = None
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                self._prctl = ctypes.CDLL(None, use_errno=True).prctl
            except (OSError, AttributeError):
                self._prctl = None

    def _preexec(self) -> None:
        if self._prctl is not None:
            self._prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        def run() -> subprocess.Popen[bytes]:
            return subprocess.Popen(argv, preexec_fn=self._preexec, **kwargs)

        return self._pool.submit(run).result()

    def close(self) -> None:
        self._pool.shutdown(wait=False)


class ReplicaDied(Exception):
    """The replica went away with requests in flight; they may be retried elsewhere."""


def base_env() -> dict[str, str]:
    """The explicit environment replicas start from (never the server's whole environment)."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ", "SYSTEMROOT", "VIRTUAL_ENV", "PYTHONPATH")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PATH", os.defpath)
    return env


def tail_file(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _FrameProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiters: collections.deque[asyncio.Future[bytes]] = collections.deque()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while len(buf) >= HEADER_SIZE:
            n = frame_length(buf)
            end = HEADER_SIZE + n
            if len(buf) < end:
                return
            payload = bytes(buf[HEADER_SIZE:end])
            del buf[:end]
            if self.waiters:
                fut = self.waiters.popleft()
                if not fut.done():
                    fut.set_result(payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(ReplicaDied(f"connection to replica lost: {exc or 'EOF'}"))


class Replica:
    """Common state and process handling."""

    kind = "process"
    max_batch = 64
    depth = 2  # requests (frames) in flight at once

    def __init__(self, replica_id: str, log_path: Path, start_timeout: float) -> None:
        self.replica_id = replica_id
        self.log_path = log_path
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.state = "starting"
        self.restarts = 0
        self.generation = 0
        self.inflight = 0
        self.served = 0
        self.info: dict[str, Any] = {}
        self.spawner: Spawner | None = None
        self.started_at = 0.0
        self._ps: Any = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _spawn(
        self, argv: list[str], env: dict[str, str], cwd: Path | None = None, *, shown: str | None = None
    ) -> None:
        """Start the process; the log's first line is `shown` (default: the argv)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            shown = " ".join(argv) if shown is None else shown
            out.write(f"--- {stamp} starting replica {self.replica_id}: {shown}\n".encode())
            out.flush()
            try:
                popen: Any = self.spawner.popen if self.spawner is not None else subprocess.Popen
                self.proc = popen(
                    argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
            except OSError as exc:
                raise FailedPrecondition(
                    f"Cannot start replica {self.replica_id} ({argv[0]}): {exc}"
                ) from exc
        self.started_at = time.monotonic()
        self.generation += 1
        self._ps = None

    def cpu_percent(self) -> float:
        """CPU use of the replica process since the last call, in percent of one core."""
        if not self.alive():
            return 0.0
        import psutil

        try:
            if self._ps is None:
                self._ps = psutil.Process(self.pid)
                self._ps.cpu_percent(None)
                return 0.0
            return float(self._ps.cpu_percent(None))
        except psutil.Error:
            return 0.0

    def stop(self, timeout: float = 5.0) -> None:
        self.state = "stopped"
        self.close()
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        """Drop router-side connections (called from any thread)."""

    def start(self) -> None:
        """Spawn and wait until healthy (blocking); raise a LoopmlError and leave nothing running."""
        raise NotImplementedError

    async def call(self, items: list[Item]) -> list[Reply]:
        raise NotImplementedError

    def fail_start(self, message: str) -> LoopmlError:
        self.stop(timeout=2.0)
        self.state = "failed"
        detail = tail_file(self.log_path)
        return FailedPrecondition(f"{message}" + (f"\nReplica log (last lines):\n{detail}" if detail else ""))

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.replica_id,
            "kind": self.kind,
            "state": self.state,
            "pid": self.pid,
            "restarts": self.restarts,
            "inflight": self.inflight,
            "served": self.served,
            "log": str(self.log_path),
        }
        if self.info:
            out["info"] = self.info
        return out


class ProcessReplica(Replica):
    """A `python -m loopml.serving.replica` child speaking frames over a Unix socket."""

    def __init__(
        self, replica_id: str, log_path: Path, start_timeout: float, socket_path: Path, config: dict[str, Any]
    ) -> None:
        super().__init__(replica_id, log_path, start_timeout)
        self.socket_path = socket_path
        self.config = config
        self._proto: _FrameProtocol | None = None
        self._connecting: asyncio.Future[_FrameProtocol] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        config = dict(
            self.config, socket=str(self.socket_path), replica_id=self.replica_id, parent_pid=os.getpid()
        )
        config_path = self.socket_path.with_suffix(".json")
        config_path.write_text(json.dumps(config))
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self.state = "starting"
        python = str(self.config.get("python") or sys.executable)
        env = base_env()
        if python != sys.executable:
            # A layered env sees our site-packages through a .pth, but not the .pth files in
            # them (an editable install of loopml is one): put loopml itself on the path.
            import loopml

            root = str(Path(loopml.__file__).resolve().parent.parent)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        self._spawn([python, "-m", "loopml.serving.replica", "--config", str(config_path)], env)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise self.fail_start(f"Replica {self.replica_id} exited while loading the model.")
            if self.socket_path.exists():
                try:
                    self.info = self._health()
                    self.state = "ready"
                    return
                except OSError:
                    pass
            time.sleep(0.02)
        raise self.fail_start(
            f"Replica {self.replica_id} did not become healthy in {self.start_timeout:.0f}s."
        )

    def _health(self) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10.0)
            s.connect(str(self.socket_path))
            s.sendall(encode_request(TYPE_HEALTH, []))
            header = s.recv(HEADER_SIZE, socket.MSG_WAITALL)
            if len(header) < HEADER_SIZE:
                raise ConnectionError("replica closed the health connection")
            payload = s.recv(frame_length(header), socket.MSG_WAITALL)
            _, items = decode_response(payload)
            return dict(json.loads(items[0][1]))

    async def _connect(self) -> _FrameProtocol:
        if self._proto is not None and not self._proto.closed:
            return self._proto
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        loop = asyncio.get_running_loop()
        self._connecting = loop.create_future()
        try:
            proto = _FrameProtocol()
            await loop.create_unix_connection(lambda: proto, str(self.socket_path))
            self._loop = loop
            self._proto = proto
            self._connecting.set_result(proto)
            return proto
        except OSError as exc:
            err = ReplicaDied(f"cannot connect to replica {self.replica_id}: {exc}")
            self._connecting.set_exception(err)
            self._connecting.exception()  # retrieved: no "never retrieved" warning
            raise err from exc
        finally:
            self._connecting = None

    async def call(self, items: list[Item]) -> list[Reply]:
        proto = self._proto
        if proto is None or proto.closed:
            proto = await self._connect()
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        proto.waiters.append(fut)
        assert proto.transport is not None
        proto.transport.write(encode_request(TYPE_BATCH, [(k, b) for k, b, _ in items]))
        payload = await fut
        _, replies = decode_response(payload)
        return [(status, body, JSON_CT) for status, body in replies]

    def close(self) -> None:
        proto = self._proto
        self._proto = None
        loop = self._loop
        if proto is None or proto.transport is None or loop is None or loop.is_closed():
            return
        transport = proto.transport
        try:
            if _running_loop() is loop:
                transport.abort()
            else:
                loop.call_soon_threadsafe(transport.abort)
        except RuntimeError:
            pass

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.with_suffix(".json").unlink()


class InProcessReplica(Replica):
    """Runs a predictor inside the server (for loaders a child process cannot import)."""

    kind = "in-process"
    depth = 1

    def __init__(self, replica_id: str, log_path: Path, handler_factory: Any) -> None:
        super().__init__(replica_id, log_path, 0.0)
        self._handler_factory = handler_factory
        self._handler: Any = None

    @property
    def pid(self) -> int | None:
        return os.getpid()

    def alive(self) -> bool:
        return self.state not in ("stopped", "failed")

    def start(self) -> None:
        try:
            self._handler = self._handler_factory()
        except LoopmlError:
            self.state = "failed"
            raise
        except Exception as exc:
            self.state = "failed"
            raise FailedPrecondition(f"Loading the model failed: {type(exc).__name__}: {exc}") from exc
        self.state = "ready"

    def cpu_percent(self) -> float:
        return 0.0

    async def call(self, items: list[Item]) -> list[Reply]:
        replies = await asyncio.to_thread(self._handler.handle, [(k, b) for k, b, _ in items])
        return [(status, body, JSON_CT) for status, body in replies]

    def stop(self, timeout: float = 5.0) -> None:
        self.state = "stopped"
        self._handler = None
