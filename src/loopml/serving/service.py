"""The serving runtime (`platform.services["serving"]`): implements `ServingBackend`.

`deploy()`/`undeploy()`/`update()` are blocking and thread-safe; call them from a worker thread
(`await asyncio.to_thread(serving.deploy, spec)`), never directly on the server's event loop:
starting a replica takes a while and undeploy waits for in-flight requests. The hot path
(`dispatch`, the ASGI fast path in `loopml.serving.asgi`, `predict`) runs on the server's event
loop and only reads in-memory routing state.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import random
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from loopml.errors import FailedPrecondition, LoopmlError, from_json
from loopml.serving.autoscaler import Stabiliser
from loopml.serving.factories import FactoryMixin
from loopml.serving.metrics import ServingMetrics
from loopml.serving.protocol import KIND_EXPLAIN, KIND_PREDICT
from loopml.serving.replicas import Replica, Spawner
from loopml.serving.router import Answer, Router
from loopml.serving.runtime import DeployedRuntime
from loopml.serving.scaling import ScalingMixin
from loopml.serving.spec import DeployedModelSpec, EndpointSpec

if TYPE_CHECKING:
    from loopml.platform import Platform

log = logging.getLogger(__name__)
access_log = logging.getLogger("loopml.access")


def _freeze_heap() -> None:
    """Move everything allocated so far out of the cyclic GC's reach (`gc.freeze()`).

    A full collection of the server's start-up heap (~160k objects) takes ~90 ms, a pause that
    lands on whatever predictions are in flight: it was the whole p99 at concurrency 32. Frozen
    objects are still freed by reference counting; only cycle detection skips them. Garbage
    cycles are collected first so they are not frozen (cheap after the first call).
    """
    gc.collect()
    gc.freeze()


class ServingService(FactoryMixin, ScalingMixin):
    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.settings = platform.settings
        self.artifacts = platform.artifacts
        self.metrics = ServingMetrics()
        self.router = Router()
        self.logs_dir = self.settings.resolved_home() / "logs" / "replicas"
        self._lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._sock_dir: Path | None = None
        self._seq: dict[str, int] = {}
        self._stabilisers: dict[str, Stabiliser] = {}
        self._busy: set[str] = set()  # deployed models with a scale operation running
        self._closed = False
        self._spawner = Spawner()
        self._rand = random.random
        self._access_buffer: Any = None

    # -- lifecycle hooks ---------------------------------------------------------------------
    async def start(self) -> None:
        self._bind_loop()
        self._setup_access_log()
        _freeze_heap()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._monitor_loop()))
        self._tasks.append(loop.create_task(self._autoscale_loop()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await asyncio.to_thread(self.close)
        gc.unfreeze()  # let the final collection see everything again
        buffer = self._access_buffer
        if buffer is not None:
            access_log.removeHandler(buffer)
            buffer.close()  # flushes
            if buffer.target is not None:
                buffer.target.close()
            access_log.propagate = True
            self._access_buffer = None

    def close(self) -> None:
        """Stop every replica (blocking)."""
        self._closed = True
        with self._lock:
            runtimes = list(self.router.runtimes.values())
            self.router.runtimes.clear()
            self.router.rebuild()
        for rt in runtimes:
            self._stop_runtime(rt, drain_s=2.0)
        self._spawner.close()
        if self._sock_dir is not None:
            shutil.rmtree(self._sock_dir, ignore_errors=True)

    def _setup_access_log(self) -> None:
        """Unless an entry point configured `loopml.access`, buffer its lines into logs/access.log."""
        if access_log.handlers:
            return
        import logging.handlers

        self.logs_dir.parent.mkdir(parents=True, exist_ok=True)
        target = logging.FileHandler(self.logs_dir.parent / "access.log", encoding="utf-8")
        target.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        buffer = logging.handlers.MemoryHandler(capacity=256, flushLevel=logging.ERROR, target=target)
        access_log.addHandler(buffer)
        access_log.propagate = False
        access_log.setLevel(logging.INFO)
        self._access_buffer = buffer

    def flush_access_log(self) -> None:
        if self._access_buffer is not None:
            self._access_buffer.flush()

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            old = self._loop
            self._loop = loop
            if old is not None:
                for rt in self.router.runtimes.values():
                    rt.rebind()
        return loop

    # -- ServingBackend ------------------------------------------------------------------------
    def deploy(self, spec: DeployedModelSpec) -> None:
        with self._lock:
            existing = self.router.runtimes.get(spec.deployed_model_id)
        if existing is not None:
            self.update(spec)
            return
        self._check_artifacts(spec)
        rt = DeployedRuntime(spec, self._on_replica_dead)
        rt.factory = self._replica_factory(spec)
        rt.metrics = self.metrics.bind(spec.endpoint_id, spec.deployed_model_id)
        rt.raw_headers = [
            (b"x-vertex-ai-endpoint-id", spec.endpoint_id.encode()),
            (b"x-vertex-ai-deployed-model-id", spec.deployed_model_id.encode()),
            (b"x-vertex-ai-model", spec.model_name.encode()),
            (b"x-vertex-ai-model-version-id", spec.model_version_id.encode()),
        ]
        n = max(1, spec.min_replicas)
        replicas = [self._new_replica(rt) for _ in range(n)]
        rt.replicas = list(replicas)
        errors: list[LoopmlError] = []

        def start(r: Replica) -> None:
            try:
                r.start()
            except LoopmlError as exc:
                errors.append(exc)
            except Exception as exc:
                errors.append(FailedPrecondition(f"Replica {r.replica_id} failed to start: {exc}"))

        threads = [threading.Thread(target=start, args=(r,), daemon=True) for r in replicas[1:]]
        for t in threads:
            t.start()
        start(replicas[0])
        for t in threads:
            t.join()
        ready = [r for r in replicas if r.state == "ready"]
        if not ready or self._closed:
            for r in replicas:
                r.stop(timeout=2.0)
            self._cleanup_storage(spec)
            raise errors[0] if errors else FailedPrecondition("The serving runtime is shutting down.")
        rt.replicas = ready
        if errors:
            rt.last_start_failure = time.monotonic()
        for exc in errors:
            log.warning("deployed model %s: a replica failed to start: %s", spec.deployed_model_id, exc)
        with self._lock:
            self.router.runtimes[spec.deployed_model_id] = rt
            self._stabilisers[spec.deployed_model_id] = Stabiliser(self.settings.autoscale_window_s)
            self.router.rebuild(spec.endpoint_name)
        for r in ready:
            rt.replica_ready(r)
        _freeze_heap()
        log.info(
            "deployed model %s (%s %s@%s) on %s: %d replica(s) ready",
            spec.deployed_model_id,
            spec.framework,
            spec.model_name,
            spec.model_version_id,
            spec.endpoint_name,
            len(ready),
        )

    def undeploy(self, deployed_model_id: str) -> None:
        with self._lock:
            rt = self.router.runtimes.pop(deployed_model_id, None)
            self._stabilisers.pop(deployed_model_id, None)
            if rt is None:
                return
            self.router.rebuild(rt.spec.endpoint_name)
        self._stop_runtime(rt, drain_s=30.0)
        self.metrics.forget(rt.spec.endpoint_id, deployed_model_id, rt.metrics)
        log.info("undeployed model %s from %s", deployed_model_id, rt.spec.endpoint_name)

    def update(self, spec: DeployedModelSpec) -> None:
        with self._lock:
            rt = self.router.runtimes.get(spec.deployed_model_id)
            if rt is None:
                raise FailedPrecondition(f"Deployed model {spec.deployed_model_id} is not running.")
            rt.spec = dataclasses.replace(
                rt.spec,
                **{
                    "min_replicas": spec.min_replicas,
                    "max_replicas": spec.max_replicas,
                    "autoscaling_metric_specs": spec.autoscaling_metric_specs,
                    "extra": spec.extra,
                },
            )
            self._stabilisers[spec.deployed_model_id] = Stabiliser(self.settings.autoscale_window_s)
        count = rt.active_count()
        low, high = max(1, spec.min_replicas), max(spec.max_replicas, spec.min_replicas, 1)
        if count < low or count > high:
            self._scale_to(rt, min(max(count, low), high), reason="replica bounds changed")
        log.info(
            "deployed model %s updated: replicas [%d, %d], metrics %s",
            spec.deployed_model_id,
            low,
            high,
            spec.autoscaling_metric_specs or "cpu 60%",
        )

    def set_endpoint(self, endpoint: EndpointSpec) -> None:
        from loopml.serving.router import EndpointRoute

        route = EndpointRoute(endpoint)
        with self._lock:
            route.rebuild(self.router.runtimes)
            self.router.routes[endpoint.endpoint_name] = route

    def remove_endpoint(self, endpoint_name: str) -> None:
        with self._lock:
            self.router.routes.pop(endpoint_name, None)

    def status(self, deployed_model_id: str) -> dict[str, Any]:
        rt = self.router.runtimes.get(deployed_model_id)
        if rt is None:
            return {"availableReplicaCount": 0, "replicaCount": 0, "replicas": [], "state": "NOT_DEPLOYED"}
        return rt.status()

    def endpoint_spec(self, endpoint_name: str) -> EndpointSpec | None:
        route = self.router.routes.get(endpoint_name)
        return route.spec if route else None

    # -- the hot path --------------------------------------------------------------------------
    async def dispatch(self, endpoint_name: str, kind: int, body: bytes, ctype: str, raw: bool) -> Answer:
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._bind_loop()
        rt, err = self.router.choose(endpoint_name, body, kind, raw)
        if err is not None:
            return err
        status, rbody, rctype = await rt.submit(kind, body, ctype)
        return status, rbody, rctype, rt

    def record(
        self,
        endpoint_name: str,
        rt: DeployedRuntime | None,
        status: int,
        started: float,
        body: bytes,
        rbody: bytes,
        verb: str,
    ) -> None:
        """Metrics, access log and the request-log hook, after the response went out."""
        elapsed = time.perf_counter() - started
        if rt is not None:
            m = rt.metrics
            m.requests.inc()
            m.latency.observe(elapsed)
            if status >= 400:
                m.error(status)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                "%s:%s %s %d %.2fms",
                endpoint_name.rsplit("/", 1)[-1],
                verb,
                rt.deployed_model_id if rt else "-",
                status,
                elapsed * 1000.0,
            )
        if rt is not None and status == 200 and verb != "explain":
            route = self.router.routes.get(endpoint_name)
            if route is not None and route.log_rate > 0 and self._rand() < route.log_rate:
                self._submit_request_log(route.spec, rt.deployed_model_id, body, rbody)

    def _submit_request_log(self, spec: EndpointSpec, dm_id: str, body: bytes, rbody: bytes) -> None:
        sink = self.platform.services.get("request_log")
        if sink is None:
            return
        try:
            sink.submit(spec, dm_id, body, rbody)
        except Exception:
            log.exception("request log submit failed for %s", spec.endpoint_name)

    async def predict(
        self,
        endpoint_name: str,
        instances: list[Any],
        parameters: dict[str, Any] | None = None,
        deployed_model_id: str | None = None,
    ) -> dict[str, Any]:
        """Vertex predict response for in-process callers; raises LoopmlError like the API would."""
        body: dict[str, Any] = {"instances": instances}
        if parameters is not None:
            body["parameters"] = parameters
        if deployed_model_id is not None:
            body["deployedModelId"] = deployed_model_id
        data = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
        coro = self.dispatch(endpoint_name, KIND_PREDICT, data, "application/json", False)
        status, rbody, _, _rt = await self._on_router_loop(coro)
        result = orjson.loads(rbody)
        if status != 200:
            raise from_json(status, result)
        return result  # type: ignore[no-any-return]

    async def explain(
        self,
        endpoint_name: str,
        instances: list[Any],
        parameters: dict[str, Any] | None = None,
        deployed_model_id: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"instances": instances, "parameters": parameters or {}}
        if deployed_model_id is not None:
            body["deployedModelId"] = deployed_model_id
        coro = self.dispatch(endpoint_name, KIND_EXPLAIN, orjson.dumps(body), "application/json", False)
        status, rbody, _, _ = await self._on_router_loop(coro)
        result = orjson.loads(rbody)
        if status != 200:
            raise from_json(status, result)
        return result  # type: ignore[no-any-return]

    async def _on_router_loop(self, coro: Any) -> Any:
        loop = self._loop
        running = asyncio.get_running_loop()
        if loop is None or loop.is_closed() or loop is running or not loop.is_running():
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    # -- replicas ------------------------------------------------------------------------------

    def _new_replica(self, rt: DeployedRuntime) -> Replica:
        dm_id = rt.deployed_model_id
        with self._lock:
            n = self._seq.get(dm_id, 0)
            self._seq[dm_id] = n + 1
        rid = f"{dm_id}-r{n}"
        replica: Replica = rt.factory(rid, self.logs_dir / f"{rid}.log")
        replica.spawner = self._spawner
        return replica
