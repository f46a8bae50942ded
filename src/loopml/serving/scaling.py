"""Replica supervision for the serving service: restarts, scale up/down, drain, autoscaling loop."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from loopml.errors import LoopmlError
from loopml.serving.autoscaler import CPU_METRIC, REQUEST_COUNT_METRIC, Stabiliser, decide, metric_targets
from loopml.serving.containers import ContainerReplica

if TYPE_CHECKING:
    from loopml.serving.replicas import Replica
    from loopml.serving.runtime import DeployedRuntime

log = logging.getLogger("loopml.serving.autoscaler")
sup_log = logging.getLogger("loopml.serving.supervisor")


class ScalingMixin:
    # Provided by ServingService.
    router: Any
    settings: Any
    metrics: Any
    _lock: threading.RLock
    _loop: asyncio.AbstractEventLoop | None
    _busy: set[str]
    _closed: bool
    _stabilisers: dict[str, Stabiliser]

    def _new_replica(self, rt: DeployedRuntime) -> Replica:
        raise NotImplementedError

    def _cleanup_storage(self, spec: Any) -> None:
        raise NotImplementedError

    def flush_access_log(self) -> None:
        raise NotImplementedError

    def _call_in_loop(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            fn(*args)
        else:
            loop.call_soon_threadsafe(fn, *args)

    def _is_live(self, rt: DeployedRuntime) -> bool:
        return not self._closed and self.router.runtimes.get(rt.deployed_model_id) is rt

    # -- restart -------------------------------------------------------------------------------
    def _on_replica_dead(self, rt: DeployedRuntime, replica: Replica) -> None:
        replica.state = "restarting"
        threading.Thread(
            target=self._restart, args=(rt, replica), daemon=True, name=f"restart-{replica.replica_id}"
        ).start()

    def _restart(self, rt: DeployedRuntime, replica: Replica) -> None:
        delay = 0.5
        while self._is_live(rt) and replica.state == "restarting":
            replica.restarts += 1
            sup_log.warning(
                "restarting replica %s (restart #%d, log %s)",
                replica.replica_id,
                replica.restarts,
                replica.log_path,
            )
            try:
                replica.stop(timeout=2.0)
                replica.start()
            except LoopmlError as exc:
                sup_log.error("replica %s failed to restart: %s", replica.replica_id, exc.message)
                replica.state = "restarting"
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            if not self._is_live(rt):
                replica.stop(timeout=2.0)
                return
            rt.replica_ready(replica)
            return

    # -- scale ---------------------------------------------------------------------------------
    def _scale_to(self, rt: DeployedRuntime, desired: int, reason: str) -> None:
        """Blocking: start or drain replicas until `desired` are active."""
        dm_id = rt.deployed_model_id
        with self._lock:
            if dm_id in self._busy:
                return
            self._busy.add(dm_id)
        try:
            current = rt.active_count()
            if desired > current:
                log.info("deployed model %s: scaling up %d → %d (%s)", dm_id, current, desired, reason)
                new = [self._new_replica(rt) for _ in range(desired - current)]
                rt.replicas.extend(new)
                for r in new:
                    try:
                        r.start()
                    except LoopmlError as exc:
                        log.error("deployed model %s: new replica failed: %s", dm_id, exc.message)
                        rt.replicas.remove(r)
                        rt.last_start_failure = time.monotonic()
                        continue
                    if not self._is_live(rt):
                        r.stop(timeout=2.0)
                        continue
                    rt.replica_ready(r)
            elif desired < current:
                log.info("deployed model %s: scaling down %d → %d (%s)", dm_id, current, desired, reason)
                ready = [r for r in rt.replicas if r.state == "ready"]
                victims = sorted(ready, key=lambda r: (r.inflight, -r.generation))[: current - desired]
                for r in victims:
                    self._drain_and_stop(rt, r, 30.0)
                    rt.replicas.remove(r)
        finally:
            with self._lock:
                self._busy.discard(dm_id)

    def _drain_and_stop(self, rt: DeployedRuntime, replica: Replica, drain_s: float) -> None:
        replica.state = "draining"
        self._call_in_loop(rt.wake_all)
        deadline = time.monotonic() + drain_s
        while replica.inflight > 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        replica.stop()
        self._call_in_loop(rt.wake_all)

    def _stop_runtime(self, rt: DeployedRuntime, drain_s: float) -> None:
        """Drain (queued and in-flight requests finish) and stop every replica of a runtime."""
        on_loop = False
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            pass
        deadline = time.monotonic() + drain_s
        if not on_loop:
            while (rt.queue or rt.inflight() > 0) and time.monotonic() < deadline:
                time.sleep(0.01)
        rt.stopping = True
        for r in list(rt.replicas):
            r.state = "draining"
        self._call_in_loop(rt.fail_queued, "The deployed model was undeployed.")
        for r in list(rt.replicas):
            r.stop(timeout=5.0)
        self._call_in_loop(rt.wake_all)
        self._cleanup_storage(rt.spec)

    # -- background loops (router loop) --------------------------------------------------------
    async def _monitor_loop(self) -> None:
        last_probe = 0.0
        while True:
            await asyncio.sleep(0.5)
            try:
                self.flush_access_log()
                now = time.monotonic()
                probe = now - last_probe >= 10.0
                if probe:
                    last_probe = now
                for rt in list(self.router.runtimes.values()):
                    rt.check_replicas()
                    low = max(1, rt.spec.min_replicas)
                    if (
                        rt.active_count() < low
                        and rt.deployed_model_id not in self._busy
                        and now - rt.last_start_failure > 10.0
                    ):
                        asyncio.get_running_loop().run_in_executor(
                            None, self._scale_to, rt, low, "below the minimum replica count"
                        )
                    for r in rt.replicas:
                        if not isinstance(r, ContainerReplica):
                            continue
                        # Vertex: 4 failed probes take a replica out of traffic (not restarted);
                        # a passing probe puts it back.
                        if r.state == "ready" and r.health_failures >= 4:
                            sup_log.warning("replica %s failed 4 health checks: no traffic", r.replica_id)
                            r.state = "unhealthy"
                            rt.wake_all()
                        elif r.state == "unhealthy" and r.health_failures == 0:
                            sup_log.info("replica %s is healthy again", r.replica_id)
                            r.state = "ready"
                            rt.replica_ready(r)
                        if probe and r.state in ("ready", "unhealthy"):
                            asyncio.get_running_loop().run_in_executor(None, r.check_health)
            except Exception:
                sup_log.exception("replica monitor cycle failed")

    async def _autoscale_loop(self) -> None:
        cycle = max(0.05, float(self.settings.autoscale_cycle_s))
        while True:
            await asyncio.sleep(cycle)
            try:
                self.autoscale_once(cycle)
            except Exception:
                log.exception("autoscaler cycle failed")

    def autoscale_once(self, elapsed_s: float) -> None:
        """One autoscaler cycle over every deployed model (router loop)."""
        for rt in list(self.router.runtimes.values()):
            spec = rt.spec
            low = max(1, spec.min_replicas)
            high = max(spec.max_replicas, low)
            ready = [r for r in rt.replicas if r.state == "ready"]
            cpu = sum(r.cpu_percent() for r in ready) / len(ready) if ready else 0.0
            total = rt.requests_total
            delta = total - rt.last_request_total
            rt.last_request_total = total
            current = rt.active_count()
            per_replica_rpm = delta / max(elapsed_s, 1e-6) * 60.0 / max(current, 1)
            self.metrics.cpu.labels(spec.endpoint_id, rt.deployed_model_id).set(cpu)
            if high == low:
                continue
            targets = metric_targets(spec.autoscaling_metric_specs)
            inputs = {CPU_METRIC: cpu, REQUEST_COUNT_METRIC: per_replica_rpm}
            stab = self._stabilisers.setdefault(
                rt.deployed_model_id, Stabiliser(float(self.settings.autoscale_window_s))
            )
            d = decide(current, inputs, targets, stab, low, high)
            self.metrics.target_replicas.labels(spec.endpoint_id, rt.deployed_model_id).set(d.desired)
            log.info(
                "autoscale %s: replicas=%d cpu=%.1f%% rpm/replica=%.1f targets=%s recommendations=%s "
                "window_max=%d → desired=%d [min %d, max %d]",
                rt.deployed_model_id,
                current,
                cpu,
                per_replica_rpm,
                targets,
                d.recommendations,
                d.window_max,
                d.desired,
                low,
                high,
            )
            if d.desired != current and rt.deployed_model_id not in self._busy:
                asyncio.get_running_loop().run_in_executor(None, self._scale_to, rt, d.desired, "autoscaler")
