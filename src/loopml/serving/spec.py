"""What the endpoint service tells the serving runtime.

The endpoint service (registry package) owns the stored state of endpoints and deployed models;
the serving runtime (`loopml.serving`) owns the processes and the hot path. They meet here:
after every committed change the endpoint service calls the `ServingBackend` methods, and at
server start it replays every stored deployment through `deploy()`. The hot path never reads
the metadata database.

Threading (serving runtime, `loopml.serving.service.ServingService`): `deploy`, `undeploy` and
`update` block (they start processes, wait for health checks and drain in-flight requests) and
are thread-safe; call them from a worker thread (`await asyncio.to_thread(backend.deploy, spec)`),
not on the server's event loop. `set_endpoint`, `remove_endpoint` and `status` are cheap and may
be called anywhere. `deploy` of an already running deployed model id behaves as `update`.

Fields read from `DeployedModelSpec.extra` by the runtime (all optional):
`maxBatchSize` (int, cap on requests coalesced into one replica call; default 64 for the
built-in servers, 1 for custom containers) and `batchWaitSeconds` (float, longest time a replica
worker waits for a batch to fill; default 0 = adaptive batching with no added latency). The
registry derives both from the deployed model's `systemLabels` (`loopml-max-batch-size`,
`loopml-batch-wait-ms`; see `loopml.registry.deployments.batching`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class DeployedModelSpec:
    endpoint_name: str  # projects/p/locations/l/endpoints/e
    endpoint_id: str
    deployed_model_id: str
    model_name: str  # projects/p/locations/l/models/m (no version suffix)
    model_version_id: str
    model_display_name: str
    framework: str  # sklearn | xgboost | bqml-kmeans | bqml | python | custom-container | ...
    artifact_dir: Path | None  # immutable snapshot of the artifacts inside the store
    artifact_uri: str  # as given at upload (gs://...)
    container_spec: dict[str, Any] = field(default_factory=dict)
    min_replicas: int = 1
    max_replicas: int = 1
    autoscaling_metric_specs: list[dict[str, Any]] = field(default_factory=list)
    machine_type: str = "n1-standard-2"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EndpointSpec:
    endpoint_name: str
    endpoint_id: str
    display_name: str
    traffic_split: dict[str, int]
    logging_config: dict[str, Any] = field(default_factory=dict)


class ServingBackend(Protocol):
    def deploy(self, spec: DeployedModelSpec) -> None:
        """Start replicas; return when at least one is healthy, raise a LoopmlError otherwise."""

    def undeploy(self, deployed_model_id: str) -> None:
        """Drain (in-flight requests finish) and stop the replicas."""

    def update(self, spec: DeployedModelSpec) -> None:
        """Apply new replica bounds / autoscaling metric specs live (mutateDeployedModel)."""

    def set_endpoint(self, endpoint: EndpointSpec) -> None:
        """Create or replace an endpoint's routing state (traffic split, logging config)."""

    def remove_endpoint(self, endpoint_name: str) -> None: ...

    def status(self, deployed_model_id: str) -> dict[str, Any]:
        """`{"availableReplicaCount": n, "replicaCount", "minReplicaCount", "maxReplicaCount",
        "queueDepth", "replicas": [{"id", "kind", "state", "pid", "restarts", "inflight", "served",
        "log"}]}`; a deployed model that is not running gives availableReplicaCount 0 and
        `"state": "NOT_DEPLOYED"`."""
        ...
