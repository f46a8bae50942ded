"""Prometheus metrics of the serving runtime, on a registry owned by the service (no globals)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REPLICA_STATES = ("ready", "starting", "restarting", "unhealthy", "draining", "dead")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("endpoint", "deployed_model")
        self.requests = Counter(
            "loopml_predict_requests", "Prediction requests answered", labels, registry=self.registry
        )
        self.errors = Counter(
            "loopml_predict_errors",
            "Prediction requests answered with an error",
            (*labels, "code"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "loopml_predict_latency_seconds",
            "Time from request body to response, in the router",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.replicas = Gauge(
            "loopml_replicas", "Replicas by state", (*labels, "state"), registry=self.registry
        )
        self.queue_depth = Gauge(
            "loopml_queue_depth", "Requests waiting for a replica", labels, registry=self.registry
        )
        self.target_replicas = Gauge(
            "loopml_autoscaler_target_replicas",
            "Replica count the autoscaler decided",
            labels,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "loopml_predict_batch_size",
            "Requests coalesced into one replica call (count: calls, sum: requests)",
            labels,
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.cpu = Gauge(
            "loopml_replica_cpu_utilization",
            "Mean CPU utilisation of the replicas (percent of a core)",
            labels,
            registry=self.registry,
        )

    def bind(self, endpoint_id: str, deployed_model_id: str) -> BoundMetrics:
        return BoundMetrics(self, endpoint_id, deployed_model_id)

    def refresh(self, runtimes: list[Any]) -> None:
        """Update gauges from the runtimes (called at scrape time)."""
        for rt in runtimes:
            key = (rt.spec.endpoint_id, rt.deployed_model_id)
            self.queue_depth.labels(*key).set(len(rt.queue))
            counts = dict.fromkeys(REPLICA_STATES, 0)
            for r in rt.replicas:
                if r.state in counts:
                    counts[r.state] += 1
            for state, n in counts.items():
                self.replicas.labels(*key, state).set(n)

    def forget(self, endpoint_id: str, deployed_model_id: str, bound: BoundMetrics | None = None) -> None:
        """Drop an undeployed model's series."""
        key = (endpoint_id, deployed_model_id)
        removals: list[tuple[Any, tuple[str, ...]]] = [
            (m, key)
            for m in (
                self.requests,
                self.latency,
                self.batch_size,
                self.queue_depth,
                self.target_replicas,
                self.cpu,
            )
        ]
        removals += [(self.replicas, (*key, state)) for state in REPLICA_STATES]
        if bound is not None:
            removals += [(self.errors, (*key, str(code))) for code in bound.error_codes()]
        for metric, labels in removals:
            try:
                metric.remove(*labels)
            except KeyError:
                pass


class BoundMetrics:
    """Label children resolved once at deploy time, so the hot path only increments."""

    __slots__ = ("_base", "_errors", "_labels", "batch_size", "latency", "requests")

    def __init__(self, metrics: ServingMetrics, endpoint_id: str, deployed_model_id: str) -> None:
        self._base = metrics
        self._labels = (endpoint_id, deployed_model_id)
        self.requests = metrics.requests.labels(endpoint_id, deployed_model_id)
        self.latency = metrics.latency.labels(endpoint_id, deployed_model_id)
        self.batch_size = metrics.batch_size.labels(endpoint_id, deployed_model_id)
        self._errors: dict[int, Any] = {}

    def error_codes(self) -> list[int]:
        return list(self._errors)

    def error(self, status: int) -> None:
        child = self._errors.get(status)
        if child is None:
            child = self._errors[status] = self._base.errors.labels(*self._labels, str(status))
        child.inc()
