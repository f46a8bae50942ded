"""Validation of Pub/Sub-shaped topic and subscription resources (400s that name the field)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from loopml.errors import InvalidArgument
from loopml.ingest.filters import Node, Path, compile_expression, parse_path
from loopml.refs import PROJECT_RE, check

NAME_RE = re.compile(r"^(?!goog)[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}\Z")
DATASET_RE = re.compile(r"^[A-Za-z0-9_]{1,1024}\Z")
TABLE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\- ]{0,1023}\Z")
ENDPOINT_RE = re.compile(r"^projects/([^/]+)/locations/([^/]+)/endpoints/([^/]+)\Z")
_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)s\Z")

_KNOWN = {
    "name",
    "topic",
    "ackDeadlineSeconds",
    "pushConfig",
    "bigqueryConfig",
    "retryPolicy",
    "filter",
    "labels",
    "loopmlInferenceConfig",
    "messageRetentionDuration",
    "retainAckedMessages",
    "enableMessageOrdering",
    "expirationPolicy",
    "deadLetterPolicy",
    "enableExactlyOnceDelivery",
    "detached",
    "state",
}


def check_project(project: str) -> str:
    return check(PROJECT_RE, project, "project")


def check_name(name: str, kind: str) -> str:
    if not NAME_RE.match(name or ""):
        raise InvalidArgument(
            f"Invalid {kind} name {name!r}: it must start with a letter, be 3 to 255 characters of "
            "letters, digits, '-', '_', '.', '~', '+' or '%', and not start with 'goog'."
        )
    return name


def parse_topic_name(text: Any, default_project: str) -> tuple[str, str]:
    """`projects/p/topics/t` (or a bare `t` in the default project) → (project, topic)."""
    if not isinstance(text, str) or not text:
        raise InvalidArgument("Invalid field 'topic': it must be 'projects/{project}/topics/{topic}'.")
    parts = text.split("/")
    if len(parts) == 4 and parts[0] == "projects" and parts[2] == "topics":
        return check_project(parts[1]), check_name(parts[3], "topic")
    if len(parts) == 1:
        return default_project, check_name(text, "topic")
    raise InvalidArgument(
        f"Invalid field 'topic' {text!r}: it must be 'projects/{{project}}/topics/{{topic}}'."
    )


def parse_duration(value: Any, what: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and _DURATION_RE.match(value):
        seconds = float(value[:-1])
    else:
        raise InvalidArgument(f"Invalid field {what!r} {value!r}: use a duration like '10s' or '1.5s'.")
    if not 0 <= seconds <= 600:
        raise InvalidArgument(f"Invalid field {what!r}: {seconds}s is outside 0s..600s.")
    return seconds


def fmt_duration(seconds: float) -> str:
    return f"{int(seconds)}s" if seconds == int(seconds) else f"{seconds}s"


@dataclass(frozen=True)
class TableRef:
    project: str
    dataset: str
    table: str

    @classmethod
    def parse(cls, text: Any, what: str) -> TableRef:
        if not isinstance(text, str):
            raise InvalidArgument(f"Invalid field {what!r}: it must be a string 'project.dataset.table'.")
        head, sep, rest = text.partition(":")
        parts = [head, *rest.split(".")] if sep else text.split(".")
        if len(parts) != 3 or not all(parts):
            raise InvalidArgument(
                f"Invalid field {what!r} {text!r}: use 'project.dataset.table' or 'project:dataset.table'."
            )
        project, dataset, table = parts
        if not PROJECT_RE.match(project) or not DATASET_RE.match(dataset) or not TABLE_RE.match(table):
            raise InvalidArgument(f"Invalid field {what!r} {text!r}: bad project, dataset or table name.")
        return cls(project, dataset, table)

    def __str__(self) -> str:
        return f"{self.project}.{self.dataset}.{self.table}"


@dataclass
class InferenceSpec:
    endpoint: str
    filter: Node | None
    instance_fields: dict[str, Path]
    output_table: TableRef
    output_fields: dict[str, Node]
    batch_size: int = 64
    max_attempts: int = 8


@dataclass
class SubscriptionSpec:
    """A validated subscription: its stored JSON and what the workers need."""

    resource: dict[str, Any]
    kind: str  # "pull" | "push" | "bigquery" | "inference"
    ack_deadline: float = 10.0
    min_backoff: float = 10.0
    max_backoff: float = 600.0
    filter: Node | None = None
    push_endpoint: str = ""
    push_attributes: dict[str, str] = field(default_factory=dict)
    table: TableRef | None = None
    use_table_schema: bool = False
    write_metadata: bool = False
    drop_unknown: bool = False
    inference: InferenceSpec | None = None


def _bool(cfg: dict[str, Any], key: str, what: str) -> bool:
    value = cfg.get(key, False)
    if not isinstance(value, bool):
        raise InvalidArgument(f"Invalid field '{what}.{key}': it must be true or false.")
    return value


def _dict(body: dict[str, Any], key: str, what: str | None = None) -> dict[str, Any]:
    value = body.get(key) or {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"Invalid field {what or key!r}: it must be an object.")
    return value


def parse_subscription(body: Any, name: str, topic: str) -> SubscriptionSpec:
    """Validate a subscription body; `name`/`topic` are full resource names already checked."""
    if not isinstance(body, dict):
        raise InvalidArgument("The subscription body must be a JSON object.")
    unknown = sorted(set(body) - _KNOWN)
    if unknown:
        raise InvalidArgument(f"Unknown subscription field(s): {', '.join(unknown)}.")
    ack = body.get("ackDeadlineSeconds", 10)
    if ack in (None, 0):
        ack = 10
    if not isinstance(ack, int) or isinstance(ack, bool) or not 10 <= ack <= 600:
        raise InvalidArgument(
            f"Invalid field 'ackDeadlineSeconds' {ack!r}: it must be an integer in 10..600."
        )
    retry = _dict(body, "retryPolicy")
    min_b = parse_duration(retry.get("minimumBackoff", "10s"), "retryPolicy.minimumBackoff")
    max_b = parse_duration(retry.get("maximumBackoff", "600s"), "retryPolicy.maximumBackoff")
    if max_b < min_b:
        raise InvalidArgument("Invalid field 'retryPolicy': maximumBackoff is smaller than minimumBackoff.")
    labels = _dict(body, "labels")
    resource: dict[str, Any] = {
        "name": name,
        "topic": topic,
        "ackDeadlineSeconds": ack,
        "labels": labels,
        "messageRetentionDuration": "604800s",
    }
    if retry:
        resource["retryPolicy"] = {
            "minimumBackoff": fmt_duration(min_b),
            "maximumBackoff": fmt_duration(max_b),
        }
    spec = SubscriptionSpec(resource=resource, kind="pull", ack_deadline=float(ack))
    spec.min_backoff, spec.max_backoff = (min_b, max_b) if retry else (1.0, 60.0)
    flt = body.get("filter") or ""
    if flt:
        spec.filter = compile_expression(flt, "field 'filter'")
        resource["filter"] = flt
    push = _dict(body, "pushConfig")
    bq = _dict(body, "bigqueryConfig")
    inf = _dict(body, "loopmlInferenceConfig")
    if sum(bool(c) for c in (push, bq, inf)) > 1:
        raise InvalidArgument(
            "Invalid subscription: set at most one of pushConfig, bigqueryConfig, loopmlInferenceConfig."
        )
    if push:
        url = push.get("pushEndpoint")
        if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url):
            raise InvalidArgument(
                f"Invalid field 'pushConfig.pushEndpoint' {url!r}: it must be an http(s) URL."
            )
        attrs = _dict(push, "attributes", "pushConfig.attributes")
        spec.kind, spec.push_endpoint, spec.push_attributes = (
            "push",
            url,
            {k: str(v) for k, v in attrs.items()},
        )
        resource["pushConfig"] = {"pushEndpoint": url, "attributes": spec.push_attributes}
    elif bq:
        spec.kind = "bigquery"
        spec.table = TableRef.parse(bq.get("table"), "bigqueryConfig.table")
        spec.use_table_schema = _bool(bq, "useTableSchema", "bigqueryConfig") or _bool(
            bq, "useTopicSchema", "bigqueryConfig"
        )
        spec.write_metadata = _bool(bq, "writeMetadata", "bigqueryConfig")
        spec.drop_unknown = _bool(bq, "dropUnknownFields", "bigqueryConfig")
        resource["bigqueryConfig"] = {
            "table": bq["table"],
            "useTopicSchema": _bool(bq, "useTopicSchema", "bigqueryConfig"),
            "useTableSchema": _bool(bq, "useTableSchema", "bigqueryConfig"),
            "writeMetadata": spec.write_metadata,
            "dropUnknownFields": spec.drop_unknown,
        }
    elif inf:
        spec.kind = "inference"
        spec.inference = parse_inference(inf)
        resource["loopmlInferenceConfig"] = inf
    if spec.kind == "pull":
        resource["pushConfig"] = {}
    return spec


def parse_inference(cfg: dict[str, Any]) -> InferenceSpec:
    what = "loopmlInferenceConfig"
    endpoint = cfg.get("endpoint")
    if not isinstance(endpoint, str) or not ENDPOINT_RE.match(endpoint):
        raise InvalidArgument(
            f"Invalid field '{what}.endpoint' {endpoint!r}: use 'projects/p/locations/l/endpoints/e'."
        )
    flt = cfg.get("filter")
    node = compile_expression(flt, f"field '{what}.filter'") if flt else None
    fields = cfg.get("instanceFields")
    if not isinstance(fields, dict) or not fields:
        raise InvalidArgument(f"Invalid field '{what}.instanceFields': map instance names to JSON paths.")
    paths: dict[str, Path] = {}
    for key, path in fields.items():
        if not isinstance(path, str):
            raise InvalidArgument(
                f"Invalid field '{what}.instanceFields.{key}': it must be a JSON path string."
            )
        try:
            paths[key] = parse_path(path)
        except InvalidArgument as exc:
            raise InvalidArgument(f"Invalid field '{what}.instanceFields.{key}': {exc.message}") from exc
    table = TableRef.parse(cfg.get("outputTable"), f"{what}.outputTable")
    outputs = cfg.get("outputFields") or {"prediction": "prediction"}
    if not isinstance(outputs, dict):
        raise InvalidArgument(f"Invalid field '{what}.outputFields': map column names to expressions.")
    nodes = {
        col: compile_expression(expr, f"field '{what}.outputFields.{col}'") for col, expr in outputs.items()
    }
    batch = cfg.get("batchSize", 64)
    attempts = cfg.get("maxAttempts", 8)
    for key, value, hi in (("batchSize", batch, 10_000), ("maxAttempts", attempts, 1000)):
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= hi:
            raise InvalidArgument(f"Invalid field '{what}.{key}' {value!r}: an integer in 1..{hi}.")
    return InferenceSpec(endpoint, node, paths, table, nodes, batch, attempts)
