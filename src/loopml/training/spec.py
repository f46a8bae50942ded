"""Job specs as clients send them, normalised to one canonical camelCase form.

The Vertex SDK sends `trainingTaskInputs` as a protobuf Struct with snake_case keys
(`worker_pool_specs`, `machine_spec`, `replica_count` as a float, `base_output_directory.
output_uri_prefix`, `python_package_spec`) while nested messages it built itself keep camelCase
(`containerSpec.imageUri`); REST users and the gapic client send camelCase. `normalise()` turns
either spelling into camelCase everywhere except inside user maps (labels, env values), and
`parse_job_spec()` validates the result into a `JobSpec`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from loopml.errors import InvalidArgument

# Maps whose keys belong to the user and must never be rewritten.
_USER_MAPS = {"labels", "env_vars", "envVars", "metadata", "parameters"}

CUSTOM_TASK_DEFINITION = "gs://google-cloud-aiplatform/schema/trainingjob/definition/custom_task_1.0.0.yaml"

JOB_STATES = [
    "JOB_STATE_UNSPECIFIED",
    "JOB_STATE_QUEUED",
    "JOB_STATE_PENDING",
    "JOB_STATE_RUNNING",
    "JOB_STATE_SUCCEEDED",
    "JOB_STATE_FAILED",
    "JOB_STATE_CANCELLING",
    "JOB_STATE_CANCELLED",
]
TERMINAL_STATES = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"}
ACTIVE_STATES = {"JOB_STATE_QUEUED", "JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_CANCELLING"}


def pipeline_state(job_state: str) -> str:
    """The PipelineState name of a JobState name (same numbers, other prefix)."""
    return "PIPELINE_STATE_" + job_state.removeprefix("JOB_STATE_")


def camel(key: str) -> str:
    if "_" not in key:
        return key
    head, *rest = key.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def normalise(value: Any, *, _key: str = "") -> Any:
    """Rewrite snake_case keys to camelCase recursively, leaving user maps untouched."""
    if isinstance(value, dict):
        if _key in _USER_MAPS:
            return dict(value)
        return {camel(k): normalise(v, _key=k) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise(v, _key=_key) for v in value]
    return value


@dataclass(frozen=True)
class WorkerPool:
    machine_type: str
    replica_count: int
    image_uri: str | None = None  # containerSpec
    command: list[str] = field(default_factory=list)
    executor_image_uri: str | None = None  # pythonPackageSpec
    package_uris: list[str] = field(default_factory=list)
    python_module: str | None = None
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def is_python_package(self) -> bool:
        return self.executor_image_uri is not None


@dataclass(frozen=True)
class JobSpec:
    pools: list[WorkerPool]
    base_output_dir: str | None
    timeout_s: float | None
    service_account: str | None = None

    @property
    def chief(self) -> WorkerPool:
        return self.pools[0]


def parse_replica_count(value: Any, where: str) -> int:
    """`replicaCount` as int, integral float (the SDK's Struct) or a digit string ("1", GCPC)."""
    count: int | None = None
    if isinstance(value, bool):
        count = None
    elif isinstance(value, int):
        count = value
    elif isinstance(value, float) and value.is_integer():
        count = int(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*\d+(\.0+)?\s*", value):
        count = int(float(value))
    if count is None or count < 0:
        raise InvalidArgument(f"{where}.replicaCount must be a non-negative integer, got {value!r}.")
    return count


def parse_duration(value: Any, where: str) -> float:
    """A protobuf Duration: "3600s", "1.5s" or a number of seconds."""
    if isinstance(value, bool):
        raise InvalidArgument(f"{where} must be a duration like '3600s', got {value!r}.")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*\d+(\.\d+)?s\s*", value):
        seconds = float(value.strip()[:-1])
    else:
        raise InvalidArgument(f"{where} must be a duration like '3600s', got {value!r}.")
    if seconds <= 0:
        raise InvalidArgument(f"{where} must be positive, got {value!r}.")
    return seconds


def _str_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str | int | float) for v in value):
        raise InvalidArgument(f"{where} must be a list of strings.")
    return [str(v) for v in value]


def _env(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, list):
        raise InvalidArgument(f"{where} must be a list of {{name, value}} objects.")
    out: dict[str, str] = {}
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise InvalidArgument(f"{where}[{i}] must be an object with a non-empty 'name'.")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", item["name"]):
            raise InvalidArgument(f"{where}[{i}].name {item['name']!r} is not a valid variable name.")
        raw = item.get("value", "")
        out[item["name"]] = "" if raw is None else str(raw)
    return out


def _pool(raw: Any, index: int) -> WorkerPool | None:
    where = f"workerPoolSpecs[{index}]"
    if raw in (None, {}):
        return None  # an empty pool is a placeholder (distributed jobs leave gaps)
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{where} must be an object.")
    machine = raw.get("machineSpec") or {}
    if not isinstance(machine, dict):
        raise InvalidArgument(f"{where}.machineSpec must be an object.")
    machine_type = str(machine.get("machineType") or "n1-standard-4")
    replicas = parse_replica_count(raw.get("replicaCount", 1), where)
    container, package = raw.get("containerSpec"), raw.get("pythonPackageSpec")
    if bool(container) == bool(package):
        raise InvalidArgument(f"{where} needs exactly one of containerSpec or pythonPackageSpec.")
    if container:
        if not isinstance(container, dict) or not isinstance(container.get("imageUri"), str):
            raise InvalidArgument(f"{where}.containerSpec.imageUri is required.")
        return WorkerPool(
            machine_type=machine_type,
            replica_count=replicas,
            image_uri=container["imageUri"].strip(),
            command=_str_list(container.get("command"), f"{where}.containerSpec.command"),
            args=_str_list(container.get("args"), f"{where}.containerSpec.args"),
            env=_env(container.get("env"), f"{where}.containerSpec.env"),
        )
    if not isinstance(package, dict):
        raise InvalidArgument(f"{where}.pythonPackageSpec must be an object.")
    executor = package.get("executorImageUri")
    module = package.get("pythonModule")
    uris = _str_list(package.get("packageUris"), f"{where}.pythonPackageSpec.packageUris")
    if not isinstance(executor, str) or not executor:
        raise InvalidArgument(f"{where}.pythonPackageSpec.executorImageUri is required.")
    if not isinstance(module, str) or not re.fullmatch(r"[A-Za-z_][\w.]*", module):
        raise InvalidArgument(
            f"{where}.pythonPackageSpec.pythonModule must be a module name, got {module!r}."
        )
    if not uris:
        raise InvalidArgument(f"{where}.pythonPackageSpec.packageUris must name at least one package.")
    return WorkerPool(
        machine_type=machine_type,
        replica_count=replicas,
        executor_image_uri=executor.strip(),
        package_uris=uris,
        python_module=module,
        args=_str_list(package.get("args"), f"{where}.pythonPackageSpec.args"),
        env=_env(package.get("env"), f"{where}.pythonPackageSpec.env"),
    )


def parse_job_spec(job_spec: Any) -> JobSpec:
    """Validate a normalised CustomJobSpec (or TrainingPipeline trainingTaskInputs)."""
    if not isinstance(job_spec, dict):
        raise InvalidArgument("jobSpec must be an object.")
    raw_pools = job_spec.get("workerPoolSpecs")
    if not isinstance(raw_pools, list) or not raw_pools:
        raise InvalidArgument("jobSpec.workerPoolSpecs must be a non-empty list.")
    pools = [_pool(p, i) for i, p in enumerate(raw_pools)]
    if pools[0] is None:
        raise InvalidArgument("workerPoolSpecs[0] (the chief pool) must not be empty.")
    if pools[0].replica_count < 1:
        raise InvalidArgument("workerPoolSpecs[0].replicaCount must be at least 1.")
    base = job_spec.get("baseOutputDirectory") or {}
    if not isinstance(base, dict):
        raise InvalidArgument("baseOutputDirectory must be an object {outputUriPrefix}.")
    prefix = base.get("outputUriPrefix")
    if prefix is not None and (not isinstance(prefix, str) or not prefix.startswith(("gs://", "s3://"))):
        raise InvalidArgument(f"baseOutputDirectory.outputUriPrefix must be a gs:// URI, got {prefix!r}.")
    scheduling = job_spec.get("scheduling") or {}
    if not isinstance(scheduling, dict):
        raise InvalidArgument("scheduling must be an object.")
    timeout = scheduling.get("timeout")
    return JobSpec(
        pools=[p for p in pools if p is not None],
        base_output_dir=prefix.rstrip("/") if prefix else None,
        timeout_s=parse_duration(timeout, "scheduling.timeout") if timeout is not None else None,
        service_account=job_spec.get("serviceAccount"),
    )
