"""One deployed model at run time: its replicas, its request queue, and the workers between them.

Requests are queued per deployed model; each ready replica runs `depth` worker coroutines that
take up to `max_batch` queued requests at a time and send them in one frame. Requests that arrive
while every replica is busy therefore coalesce into the next batch (adaptive micro-batching with
no added wait), and an idle replica always takes the next request (least-outstanding balancing).
A request whose replica dies mid-flight is put back at the head of the queue and retried on
another replica (predict is idempotent); the dead replica is restarted in the background.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from typing import Any

from loopml.serving.handler import error_body
from loopml.serving.replicas import JSON_CT, Replica, ReplicaDied
from loopml.serving.spec import DeployedModelSpec

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
MAX_QUEUE = 20_000


class Pending:
    __slots__ = ("attempts", "body", "ctype", "enqueued", "future", "kind")

    def __init__(self, kind: int, body: bytes, ctype: str, future: asyncio.Future[Any]) -> None:
        self.kind = kind
        self.body = body
        self.ctype = ctype
        self.future = future
        self.attempts = 0
        self.enqueued = time.monotonic()


def _reply_error(p: Pending, status: int, code: str, message: str) -> None:
    if not p.future.done():
        p.future.set_result((status, error_body(status, code, message), JSON_CT))


class DeployedRuntime:
    def __init__(self, spec: DeployedModelSpec, on_dead: Callable[[DeployedRuntime, Replica], None]) -> None:
        self.spec = spec
        self.replicas: list[Replica] = []
        self.queue: collections.deque[Pending] = collections.deque()
        self._idle: collections.deque[asyncio.Future[None]] = collections.deque()
        self._on_dead = on_dead
        self._workers: dict[str, list[asyncio.Task[None]]] = {}
        self._pending_start: list[Replica] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.requests_total = 0
        self.batch_wait_s = float(spec.extra.get("batchWaitSeconds", 0.0) or 0.0)
        self.max_batch_override = int(spec.extra.get("maxBatchSize", 0) or 0)
        self.metrics: Any = None  # bound per-deployment metric children, set by the service
        self.factory: Any = None  # (replica_id, log_path) -> Replica, set by the service
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.last_request_total = 0
        self.last_start_failure = 0.0
        self.stopping = False

    @property
    def deployed_model_id(self) -> str:
        return self.spec.deployed_model_id

    def ready_count(self) -> int:
        return sum(1 for r in self.replicas if r.state == "ready")

    def inflight(self) -> int:
        return sum(r.inflight for r in self.replicas)

    # -- replica lifecycle (any thread) ------------------------------------------------------
    def replica_ready(self, replica: Replica) -> None:
        """Start workers for a replica that passed its health check (thread-safe)."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                self._start_workers(replica)
            else:
                loop.call_soon_threadsafe(self._start_workers, replica)
        else:
            self._pending_start.append(replica)

    def _start_workers(self, replica: Replica) -> None:
        if replica.state != "ready" or replica.replica_id in self._workers:
            return
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self._worker(replica)) for _ in range(replica.depth)]
        self._workers[replica.replica_id] = tasks
        # Wake idle workers of other replicas too: queued items may be waiting.
        self._wake_all()

    def bind_loop(self) -> None:
        """Called on the router loop before the first request is queued."""
        self.loop = asyncio.get_running_loop()
        pending, self._pending_start = self._pending_start, []
        for replica in pending:
            self._start_workers(replica)

    # -- hot path (router loop) --------------------------------------------------------------
    def submit(self, kind: int, body: bytes, ctype: str) -> asyncio.Future[Any]:
        loop = self.loop
        if loop is None or self._pending_start:
            self.bind_loop()
            loop = self.loop
            assert loop is not None
        fut: asyncio.Future[Any] = loop.create_future()
        p = Pending(kind, body, ctype, fut)
        self.requests_total += 1
        if len(self.queue) >= MAX_QUEUE:
            _reply_error(p, 429, "RESOURCE_EXHAUSTED", "Too many queued requests for this deployed model.")
            return fut
        if not self._workers and not any(r.state in ("starting", "restarting") for r in self.replicas):
            msg = f"Deployed model {self.deployed_model_id} has no running replica."
            _reply_error(p, 503, "UNAVAILABLE", msg)
            return fut
        self.queue.append(p)
        idle = self._idle
        while idle:
            waiter = idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break
        return fut

    def active_count(self) -> int:
        return sum(1 for r in self.replicas if r.state in ("ready", "starting", "restarting", "unhealthy"))

    def fail_queued(self, message: str) -> None:
        while self.queue:
            _reply_error(self.queue.popleft(), 503, "UNAVAILABLE", message)

    def rebind(self) -> None:
        """The router loop changed (tests running several event loops): reconnect lazily."""
        self.loop = None
        self._workers.clear()
        self._idle.clear()
        for r in self.replicas:
            r.close()
            if r.state == "ready":
                self._pending_start.append(r)

    def wake_all(self) -> None:
        self._wake_all()

    def _wake_all(self) -> None:
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(None)

    async def _worker(self, replica: Replica) -> None:
        queue = self.queue
        loop = asyncio.get_running_loop()
        max_batch = self.max_batch_override or replica.max_batch
        generation = replica.generation
        try:
            while replica.state == "ready" and replica.generation == generation:
                if not queue:
                    waiter: asyncio.Future[None] = loop.create_future()
                    self._idle.append(waiter)
                    await waiter
                    continue
                if self.batch_wait_s > 0 and len(queue) < max_batch:
                    await self._fill(replica, generation, max_batch)
                    if not queue:
                        continue
                n = min(len(queue), max_batch)
                if self.metrics is not None:
                    self.metrics.batch_size.observe(n)
                batch = [queue.popleft() for _ in range(n)]
                replica.inflight += n
                try:
                    replies = await replica.call([(p.kind, p.body, p.ctype) for p in batch])
                except ReplicaDied as exc:
                    self._requeue(batch, str(exc))
                    if replica.generation == generation:
                        self._replica_died(replica, str(exc))
                    return
                except Exception as exc:
                    log.exception("replica %s call failed", replica.replica_id)
                    for p in batch:
                        _reply_error(
                            p, 500, "INTERNAL", f"The model server failed: {type(exc).__name__}: {exc}"
                        )
                    continue
                finally:
                    replica.inflight -= n
                replica.served += n
                for p, reply in zip(batch, replies, strict=False):
                    if not p.future.done():
                        p.future.set_result(reply)
        finally:
            tasks = self._workers.get(replica.replica_id)
            current = asyncio.current_task()
            if tasks is not None and current in tasks:
                tasks.remove(current)  # type: ignore[arg-type]
                if not tasks:
                    self._workers.pop(replica.replica_id, None)

    async def _fill(self, replica: Replica, generation: int, max_batch: int) -> None:
        """Wait until `max_batch` requests are queued or `batch_wait_s` has passed.

        Every submit wakes one waiting worker, so a filling worker re-checks the queue as
        requests arrive and takes a full batch at once instead of sleeping out the whole wait.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batch_wait_s
        queue = self.queue
        while (
            queue and len(queue) < max_batch and replica.state == "ready" and replica.generation == generation
        ):
            left = deadline - loop.time()
            if left <= 0:
                return
            waiter: asyncio.Future[None] = loop.create_future()
            self._idle.append(waiter)
            try:
                await asyncio.wait_for(waiter, left)
            except TimeoutError:
                return

    def _requeue(self, batch: list[Pending], reason: str) -> None:
        for p in reversed(batch):
            p.attempts += 1
            if p.attempts >= MAX_ATTEMPTS:
                _reply_error(p, 503, "UNAVAILABLE", f"The model server failed {p.attempts} times: {reason}")
            else:
                self.queue.appendleft(p)
        self._wake_all()

    def _replica_died(self, replica: Replica, reason: str) -> None:
        if replica.state not in ("ready", "unhealthy"):
            return
        log.warning(
            "replica %s of deployed model %s died: %s", replica.replica_id, self.deployed_model_id, reason
        )
        replica.state = "dead"
        replica.close()  # in-flight calls fail with ReplicaDied and requeue their requests
        self._workers.pop(replica.replica_id, None)
        self._wake_all()  # idle workers of the dead replica exit
        if not self.stopping:
            self._on_dead(self, replica)

    def check_replicas(self) -> None:
        """Notice replicas whose process exited (router loop; called by the monitor)."""
        for replica in list(self.replicas):
            if replica.state in ("ready", "unhealthy") and not replica.alive():
                code = replica.proc.returncode if replica.proc else None
                self._replica_died(replica, f"process exited with code {code}")
        if (
            self.queue
            and not self._workers
            and not any(r.state in ("starting", "restarting") for r in self.replicas)
        ):
            while self.queue:
                _reply_error(self.queue.popleft(), 503, "UNAVAILABLE", "No replica is available.")
        elif self.queue and not self._workers:
            now = time.monotonic()
            while self.queue and now - self.queue[0].enqueued > 60.0:
                _reply_error(self.queue.popleft(), 503, "UNAVAILABLE", "No replica became available in 60s.")

    def stop_workers(self, replica: Replica) -> None:
        for task in self._workers.pop(replica.replica_id, []):
            task.cancel()
        self._wake_all()

    def status(self) -> dict[str, Any]:
        return {
            "availableReplicaCount": self.ready_count(),
            "replicaCount": sum(1 for r in self.replicas if r.state not in ("stopped", "failed")),
            "minReplicaCount": self.spec.min_replicas,
            "maxReplicaCount": self.spec.max_replicas,
            "queueDepth": len(self.queue),
            "replicas": [r.status() for r in self.replicas],
        }
