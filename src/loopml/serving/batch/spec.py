"""The BatchPredictionJob request: validation and a normalised, typed view of it.

Everything a client can get wrong is checked here, before anything is stored, and reported as an
InvalidArgument naming the field (vertex-api.md §12).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from loopml.errors import InvalidArgument, Unimplemented
from loopml.refs import PROJECT_RE

DATASET_RE = re.compile(r"^[A-Za-z0-9_]{1,1024}\Z")
TABLE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,1023}\Z")
INPUT_FORMATS = ("jsonl", "csv", "bigquery")
UNSUPPORTED_INPUT_FORMATS = ("tf-record", "tf-record-gzip", "file-list")
OUTPUT_FORMATS = ("jsonl", "bigquery")
DEFAULT_BATCH_SIZE = 64
DEFAULT_MAX_REPLICAS = 10


@dataclass(frozen=True)
class BqRef:
    project: str
    dataset: str | None = None
    table: str | None = None

    def uri(self) -> str:
        return "bq://" + ".".join(p for p in (self.project, self.dataset, self.table) if p)


def parse_bq_uri(uri: Any, what: str, *, need_table: bool = False) -> BqRef:
    """`bq://project[.dataset[.table]]` with every part validated."""
    if not isinstance(uri, str) or not uri.startswith("bq://"):
        raise InvalidArgument(f"{what} must be a BigQuery URI like bq://project.dataset.table, got {uri!r}.")
    parts = uri[len("bq://") :].split(".")
    if not 1 <= len(parts) <= 3 or any(not p for p in parts):
        raise InvalidArgument(f"{what} {uri!r} is not of the form bq://project[.dataset[.table]].")
    if need_table and len(parts) != 3:
        raise InvalidArgument(f"{what} {uri!r} must name a table: bq://project.dataset.table.")
    if not PROJECT_RE.match(parts[0]):
        raise InvalidArgument(f"{what} {uri!r}: invalid project {parts[0]!r}.")
    if len(parts) > 1 and not DATASET_RE.match(parts[1]):
        raise InvalidArgument(f"{what} {uri!r}: invalid dataset {parts[1]!r} (letters, digits, _).")
    if len(parts) > 2 and not TABLE_RE.match(parts[2]):
        raise InvalidArgument(f"{what} {uri!r}: invalid table {parts[2]!r}.")
    return BqRef(parts[0], parts[1] if len(parts) > 1 else None, parts[2] if len(parts) > 2 else None)


def _str_list(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidArgument(f"{what} must be a list of non-empty strings.")
    return list(value)


def _positive_int(value: Any, what: str, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{what} must be an integer, got {value!r}.") from None
    if number < 0 or (isinstance(value, float) and value != number):
        raise InvalidArgument(f"{what} must be a non-negative integer, got {value!r}.")
    return number or default


@dataclass(frozen=True)
class JobSpec:
    display_name: str
    model: str
    instances_format: str
    gcs_uris: list[str] = field(default_factory=list)
    bq_source: BqRef | None = None
    instance_type: str | None = None
    key_field: str | None = None
    included_fields: list[str] = field(default_factory=list)
    excluded_fields: list[str] = field(default_factory=list)
    predictions_format: str = "jsonl"
    gcs_output_prefix: str | None = None
    bq_destination: BqRef | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    starting_replica_count: int = 1
    max_replica_count: int = DEFAULT_MAX_REPLICAS
    model_parameters: Any = None


def parse_job(body: Any) -> JobSpec:
    """Validate a BatchPredictionJob body (Vertex JSON) into a JobSpec."""
    if not isinstance(body, dict):
        raise InvalidArgument("The request body must be a BatchPredictionJob JSON object.")
    display_name = body.get("displayName")
    if not isinstance(display_name, str) or not display_name.strip():
        raise InvalidArgument("displayName is required.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidArgument("model is required (projects/p/locations/l/models/m[@version|@alias]).")

    input_config = body.get("inputConfig")
    if not isinstance(input_config, dict):
        raise InvalidArgument("inputConfig is required.")
    fmt = input_config.get("instancesFormat")
    if fmt in UNSUPPORTED_INPUT_FORMATS:
        raise Unimplemented(
            f"inputConfig.instancesFormat {fmt!r} is not supported by loopml; use jsonl, csv or bigquery."
        )
    if fmt not in INPUT_FORMATS:
        raise InvalidArgument(
            f"inputConfig.instancesFormat must be one of {', '.join(INPUT_FORMATS)}, got {fmt!r}."
        )
    gcs_uris: list[str] = []
    bq_source = None
    if fmt == "bigquery":
        source = input_config.get("bigquerySource") or {}
        bq_source = parse_bq_uri(
            source.get("inputUri"), "inputConfig.bigquerySource.inputUri", need_table=True
        )
    else:
        source = input_config.get("gcsSource") or {}
        gcs_uris = _str_list(source.get("uris"), "inputConfig.gcsSource.uris")
        if not gcs_uris:
            raise InvalidArgument(f"inputConfig.gcsSource.uris is required for instancesFormat {fmt!r}.")
        for uri in gcs_uris:
            if not uri.startswith(("gs://", "s3://")):
                raise InvalidArgument(f"inputConfig.gcsSource.uris: {uri!r} is not a gs:// URI.")

    instance_config = body.get("instanceConfig") or {}
    if not isinstance(instance_config, dict):
        raise InvalidArgument("instanceConfig must be an object.")
    instance_type = instance_config.get("instanceType") or None
    if instance_type not in (None, "object", "array"):
        raise InvalidArgument(
            f"instanceConfig.instanceType must be 'object' or 'array', got {instance_type!r}."
        )
    key_field = instance_config.get("keyField") or None
    if key_field is not None and not isinstance(key_field, str):
        raise InvalidArgument("instanceConfig.keyField must be a string.")
    included = _str_list(instance_config.get("includedFields"), "instanceConfig.includedFields")
    excluded = _str_list(instance_config.get("excludedFields"), "instanceConfig.excludedFields")
    if included and excluded:
        raise InvalidArgument("instanceConfig.includedFields and excludedFields cannot both be set.")
    if key_field and key_field in excluded:
        raise InvalidArgument(f"instanceConfig.keyField {key_field!r} cannot also be excluded.")

    output_config = body.get("outputConfig")
    if not isinstance(output_config, dict):
        raise InvalidArgument("outputConfig is required.")
    out_fmt = output_config.get("predictionsFormat")
    if out_fmt not in OUTPUT_FORMATS:
        raise InvalidArgument(
            f"outputConfig.predictionsFormat must be one of {', '.join(OUTPUT_FORMATS)}, got {out_fmt!r}."
        )
    gcs_prefix = None
    bq_dest = None
    if out_fmt == "bigquery":
        dest = output_config.get("bigqueryDestination") or {}
        bq_dest = parse_bq_uri(dest.get("outputUri"), "outputConfig.bigqueryDestination.outputUri")
        if bq_dest.table:
            raise InvalidArgument(
                "outputConfig.bigqueryDestination.outputUri must be bq://project or bq://project.dataset; "
                "the table name is generated."
            )
    else:
        dest = output_config.get("gcsDestination") or {}
        gcs_prefix = dest.get("outputUriPrefix")
        if not isinstance(gcs_prefix, str) or not gcs_prefix.startswith(("gs://", "s3://")):
            raise InvalidArgument("outputConfig.gcsDestination.outputUriPrefix must be a gs:// URI.")

    tuning = body.get("manualBatchTuningParameters") or {}
    batch_size = _positive_int(
        tuning.get("batchSize"), "manualBatchTuningParameters.batchSize", DEFAULT_BATCH_SIZE
    )
    resources = body.get("dedicatedResources") or {}
    if not isinstance(resources, dict):
        raise InvalidArgument("dedicatedResources must be an object.")
    starting = _positive_int(
        resources.get("startingReplicaCount"), "dedicatedResources.startingReplicaCount", 1
    )
    max_replicas = _positive_int(
        resources.get("maxReplicaCount"), "dedicatedResources.maxReplicaCount", DEFAULT_MAX_REPLICAS
    )
    if starting > max_replicas:
        raise InvalidArgument("dedicatedResources.startingReplicaCount cannot exceed maxReplicaCount.")
    return JobSpec(
        display_name=display_name,
        model=model,
        instances_format=fmt,
        gcs_uris=gcs_uris,
        bq_source=bq_source,
        instance_type=instance_type,
        key_field=key_field,
        included_fields=included,
        excluded_fields=excluded,
        predictions_format=out_fmt,
        gcs_output_prefix=gcs_prefix,
        bq_destination=bq_dest,
        batch_size=batch_size,
        starting_replica_count=starting,
        max_replica_count=max_replicas,
        model_parameters=body.get("modelParameters"),
    )


def sanitize_name(text: str) -> str:
    """A BigQuery-dataset-compatible rendering of a display name (other characters become `_`)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", text)[:900] or "model"
