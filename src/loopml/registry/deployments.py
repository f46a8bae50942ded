"""DeployedModel requests: validation, enum normalisation, JSON rendering and serving specs."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopml.errors import InvalidArgument
from loopml.metadata.tables import DeployedModelRow, EndpointRow
from loopml.refs import INTEGER_RE, parent_name, rfc3339
from loopml.serving.spec import DeployedModelSpec, EndpointSpec

log = logging.getLogger(__name__)

DEPLOYED_MODEL_ID_RE = re.compile(r"^[0-9]{1,10}\Z")
DEFAULT_MACHINE_TYPE = "n1-standard-2"
DEFAULT_CPU_TARGET = 60
CPU_METRIC = "aiplatform.googleapis.com/prediction/online/cpu/utilization"

ACCELERATOR_TYPES = {
    0: "ACCELERATOR_TYPE_UNSPECIFIED",
    1: "NVIDIA_TESLA_K80",
    2: "NVIDIA_TESLA_P100",
    3: "NVIDIA_TESLA_V100",
    4: "NVIDIA_TESLA_P4",
    5: "NVIDIA_TESLA_T4",
    6: "TPU_V2",
    7: "TPU_V3",
    8: "NVIDIA_TESLA_A100",
    9: "NVIDIA_A100_80GB",
    10: "TPU_V4_POD",
    11: "NVIDIA_L4",
    12: "TPU_V5_LITEPOD",
    13: "NVIDIA_H100_80GB",
}

# Fields of DeployedModel kept verbatim; everything else unknown is refused.
PASS_THROUGH = {
    "explanationSpec",
    "disableExplanations",
    "serviceAccount",
    "disableContainerLogging",
    "enableAccessLogging",
    "privateEndpoints",
    "sharedResources",
    "fasterDeploymentConfig",
    "systemLabels",
    "checkpointId",
    "speculativeDecodingSpec",
}
OUTPUT_ONLY = {"createTime", "status", "modelVersionId", "privateEndpoints"}


def as_int(value: Any, field: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """An int32/int64 field (numbers, integral floats and decimal strings accepted)."""
    if isinstance(value, bool):
        raise InvalidArgument(f"{field} must be an integer, got {value!r}.")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    elif isinstance(value, str) and INTEGER_RE.fullmatch(value.strip()):
        value = int(value.strip())
    if not isinstance(value, int):
        raise InvalidArgument(f"{field} must be an integer, got {value!r}.")
    if minimum is not None and value < minimum:
        raise InvalidArgument(f"{field} must be at least {minimum}, got {value}.")
    if maximum is not None and value > maximum:
        raise InvalidArgument(f"{field} must be at most {maximum}, got {value}.")
    return value


BATCH_SIZE_LABEL = "loopml-max-batch-size"
BATCH_WAIT_LABEL = "loopml-batch-wait-ms"
MAX_BATCH_SIZE = 1024
MAX_BATCH_WAIT_MS = 10_000


def batching(
    labels: Any, field: str = "deployedModel.systemLabels", *, strict: bool = True
) -> dict[str, Any]:
    """Per-deployment micro-batching from `systemLabels` (a string map the Vertex SDK passes on).

    `loopml-max-batch-size` (1..1024 requests per replica call) and `loopml-batch-wait-ms`
    (0..10000, decimals allowed: how long a worker waits to fill a batch) become the runtime's
    `maxBatchSize` / `batchWaitSeconds`; other `loopml-*` keys are refused (a typo would
    otherwise be silently ignored). Returns {} when neither is set.

    `strict=False` is for labels already stored with a deployed model (a row written before
    these labels were checked may hold anything): a bad label is logged and ignored, never raised,
    so the deployment still replays.
    """
    if labels is None:
        return {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        if strict:
            raise InvalidArgument(f"{field} must be a map of strings to strings.")
        if not isinstance(labels, dict):
            log.warning("ignoring stored %s: not a map of strings", field)
            return {}
    out: dict[str, Any] = {}
    for key, raw in labels.items():
        if not isinstance(key, str) or not key.startswith("loopml-"):
            continue
        try:
            out.update(_batching_label(key, raw, f"{field}[{key!r}]"))
        except InvalidArgument as exc:
            if strict:
                raise
            log.warning("ignoring stored label: %s", exc.message)
    return out


def _batching_label(key: str, raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, str):
        raise InvalidArgument(f"{where} must be a string, got {raw!r}.")
    if key == BATCH_SIZE_LABEL:
        value = raw.strip()
        if not INTEGER_RE.fullmatch(value) or not 1 <= int(value) <= MAX_BATCH_SIZE:
            raise InvalidArgument(f"{where} must be an integer from 1 to {MAX_BATCH_SIZE}, got {raw!r}.")
        return {"maxBatchSize": int(value)}
    if key == BATCH_WAIT_LABEL:
        try:
            ms = float(raw) if raw.isascii() else float("nan")  # float('１') would be 1.0
        except ValueError:
            ms = float("nan")
        if not 0 <= ms <= MAX_BATCH_WAIT_MS:  # NaN fails too
            raise InvalidArgument(
                f"{where} must be a number of milliseconds from 0 to {MAX_BATCH_WAIT_MS}, got {raw!r}."
            )
        return {"batchWaitSeconds": ms / 1000.0}
    raise InvalidArgument(f"{where}: unknown loopml label; use {BATCH_SIZE_LABEL!r} or {BATCH_WAIT_LABEL!r}.")


def machine_spec(value: Any, field: str) -> dict[str, Any]:
    if value is None:
        return {"machineType": DEFAULT_MACHINE_TYPE}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{field} must be an object.")
    spec = dict(value)
    mt = spec.get("machineType") or DEFAULT_MACHINE_TYPE
    if not isinstance(mt, str):
        raise InvalidArgument(f"{field}.machineType must be a string.")
    spec["machineType"] = mt
    acc = spec.get("acceleratorType")
    if isinstance(acc, int) and not isinstance(acc, bool):
        spec["acceleratorType"] = ACCELERATOR_TYPES.get(acc, str(acc))
    elif acc is not None and not isinstance(acc, str):
        raise InvalidArgument(f"{field}.acceleratorType must be an enum name or number.")
    if spec.get("acceleratorType") == "ACCELERATOR_TYPE_UNSPECIFIED":
        spec.pop("acceleratorType")
    if "acceleratorCount" in spec:
        spec["acceleratorCount"] = as_int(spec["acceleratorCount"], f"{field}.acceleratorCount", minimum=0)
    return spec


def metric_specs(value: Any, field: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidArgument(f"{field} must be a list of {{metricName, target}} objects.")
    out = []
    for i, item in enumerate(value):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("metricName"), str)
            or not item["metricName"]
        ):
            raise InvalidArgument(f"{field}[{i}].metricName is required (a string).")
        target = item.get("target") or DEFAULT_CPU_TARGET
        out.append(
            {
                "metricName": item["metricName"],
                "target": as_int(target, f"{field}[{i}].target", minimum=1, maximum=100),
            }
        )
    return out


def replica_bounds(value: dict[str, Any], field: str) -> tuple[int, int]:
    low = as_int(value.get("minReplicaCount", 1), f"{field}.minReplicaCount", minimum=1)
    high_raw = value.get("maxReplicaCount")
    high = low if high_raw in (None, 0, "0") else as_int(high_raw, f"{field}.maxReplicaCount", minimum=1)
    if high < low:
        raise InvalidArgument(f"{field}.maxReplicaCount ({high}) must be at least minReplicaCount ({low}).")
    return low, high


def resources(dm: dict[str, Any], supported: list[str]) -> dict[str, Any]:
    """`{"dedicatedResources": {...}}` or `{"automaticResources": {...}}`, validated and normalised."""
    given = [
        k for k in ("dedicatedResources", "automaticResources", "sharedResources") if dm.get(k) is not None
    ]
    if len(given) > 1:
        raise InvalidArgument(f"deployedModel: set only one of {', '.join(given)}.")
    if given == ["sharedResources"]:
        raise InvalidArgument(
            "deployedModel.sharedResources (deployment resource pools) is not supported by loopml."
        )
    if given == ["automaticResources"]:
        if "AUTOMATIC_RESOURCES" not in supported:
            raise InvalidArgument(
                "deployedModel.automaticResources: this model supports only dedicatedResources."
            )
        auto = dm["automaticResources"]
        if not isinstance(auto, dict):
            raise InvalidArgument("deployedModel.automaticResources must be an object.")
        low, high = replica_bounds(auto, "deployedModel.automaticResources")
        return {"automaticResources": {"minReplicaCount": low, "maxReplicaCount": high}}
    ded = dm.get("dedicatedResources")
    if ded is None:
        ded = {}
    if not isinstance(ded, dict):
        raise InvalidArgument("deployedModel.dedicatedResources must be an object.")
    field = "deployedModel.dedicatedResources"
    out = dict(ded)
    out["machineSpec"] = machine_spec(ded.get("machineSpec"), f"{field}.machineSpec")
    out["minReplicaCount"], out["maxReplicaCount"] = replica_bounds(ded, field)
    if ded.get("requiredReplicaCount") not in (None, 0):
        out["requiredReplicaCount"] = as_int(
            ded["requiredReplicaCount"], f"{field}.requiredReplicaCount", minimum=0
        )
    specs = metric_specs(ded.get("autoscalingMetricSpecs"), f"{field}.autoscalingMetricSpecs")
    if specs:
        out["autoscalingMetricSpecs"] = specs
    else:
        out.pop("autoscalingMetricSpecs", None)
    if "spot" in out and not isinstance(out["spot"], bool):
        raise InvalidArgument(f"{field}.spot must be a boolean.")
    return {"dedicatedResources": out}


def bounds_of(res: dict[str, Any]) -> tuple[int, int, list[dict[str, Any]], str]:
    """(min, max, autoscaling specs, machine type) of stored resources."""
    if "automaticResources" in res:
        a = res["automaticResources"]
        return int(a["minReplicaCount"]), int(a["maxReplicaCount"]), [], DEFAULT_MACHINE_TYPE
    d = res.get("dedicatedResources", {})
    return (
        int(d.get("minReplicaCount", 1)),
        int(d.get("maxReplicaCount", d.get("minReplicaCount", 1))),
        list(d.get("autoscalingMetricSpecs") or []),
        str((d.get("machineSpec") or {}).get("machineType") or DEFAULT_MACHINE_TYPE),
    )


def endpoint_name(row: EndpointRow) -> str:
    return f"{parent_name(row.project, row.location)}/endpoints/{row.endpoint_id}"


@dataclass(frozen=True)
class VersionInfo:
    model_name: str
    version_id: str
    display_name: str
    framework: str
    snapshot_path: str
    artifact_uri: str
    container_spec: dict[str, Any]


def version_info(dm: DeployedModelRow) -> VersionInfo:
    v = dm.model_version
    m = v.model
    return VersionInfo(
        model_name=f"{parent_name(m.project, m.location)}/models/{m.model_id}",
        version_id=v.version_id,
        display_name=v.display_name,
        framework=v.framework,
        snapshot_path=v.snapshot_path,
        artifact_uri=v.artifact_uri,
        container_spec=dict(v.container_spec or {}),
    )


def stored_batching(dm: DeployedModelRow, framework: str | None) -> dict[str, Any]:
    """Batching from a stored deployed model's labels, checked leniently (see `batching`).

    :deployModel checks the labels strictly; rows stored by an older version were not checked,
    and one bad label must not stop the endpoint from replaying after a restart. A custom
    container never batches (its labels are refused at :deployModel).
    """
    labels = (dm.extra or {}).get("systemLabels")
    where = f"systemLabels of deployed model {dm.deployed_model_id}"
    if framework == "custom-container":
        if batching(labels, where, strict=False):
            log.warning("ignoring batching labels of %s: a custom container does not batch", where)
        return {}
    return batching(labels, where, strict=False)


def deployed_model_spec(endpoint: EndpointRow, dm: DeployedModelRow) -> DeployedModelSpec:
    info = version_info(dm)
    low, high, specs, machine = bounds_of(dm.resources)
    return DeployedModelSpec(
        endpoint_name=endpoint_name(endpoint),
        endpoint_id=endpoint.endpoint_id,
        deployed_model_id=dm.deployed_model_id,
        model_name=info.model_name,
        model_version_id=info.version_id,
        model_display_name=info.display_name,
        framework=info.framework,
        artifact_dir=Path(info.snapshot_path) if info.snapshot_path else None,
        artifact_uri=info.artifact_uri,
        container_spec=info.container_spec,
        min_replicas=low,
        max_replicas=high,
        autoscaling_metric_specs=specs,
        machine_type=machine,
        extra={
            "displayName": dm.display_name,
            **dict(dm.extra or {}),
            **dict(dm.resources or {}),
            **stored_batching(dm, info.framework),
        },
    )


def endpoint_spec(endpoint: EndpointRow, split: dict[str, int] | None = None) -> EndpointSpec:
    return EndpointSpec(
        endpoint_name=endpoint_name(endpoint),
        endpoint_id=endpoint.endpoint_id,
        display_name=endpoint.display_name,
        traffic_split=dict(endpoint.traffic_split if split is None else split),
        logging_config=dict(endpoint.logging_config or {}),
    )


def deployed_model_json(dm: DeployedModelRow, status: dict[str, Any]) -> dict[str, Any]:
    info = version_info(dm)
    body: dict[str, Any] = dict(dm.extra or {})
    body.update(dm.resources or {})
    body.update(
        {
            "id": dm.deployed_model_id,
            "model": info.model_name,
            "modelVersionId": info.version_id,
            "displayName": dm.display_name,
            "createTime": rfc3339(dm.create_time),
            "status": status,
        }
    )
    return body
