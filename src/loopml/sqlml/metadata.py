"""Changes to a SQL model's metadata: `ALTER MODEL … SET OPTIONS(...)` and BigQuery `models.patch`.

Both become one `ModelUpdate`, checked completely before anything changes:

- description, friendlyName, expirationTime (recorded and returned; loopml does not delete
  expired models), labels (ALTER replaces them all; models.patch merges them, a null value
  removing a key, as BigQuery does);
- a Vertex AI model id (and version aliases) to register a model that is not registered yet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from loopml.errors import InvalidArgument, InvalidQuery
from loopml.refs import ALIAS_RE, INTEGER_RE, MODEL_ID_RE
from loopml.sqlml.statements import ModelPath

# Output-only fields of BigQuery's Model resource: a client may send them back; they are ignored.
_READ_ONLY = {
    "kind",
    "etag",
    "id",
    "modelReference",
    "creationTime",
    "lastModifiedTime",
    "modelType",
    "location",
    "featureColumns",
    "labelColumns",
    "transformColumns",
    "bestTrialId",
    "defaultTrialId",
    "optimalTrialIds",
    "hparamSearchSpaces",
    "hparamTrials",
    "remoteModelInfo",
}
_PATCHABLE = {"description", "friendlyName", "labels", "expirationTime", "trainingRuns"}


@dataclass
class ModelUpdate:
    given: set[str] = field(default_factory=set)  # of description, friendlyName, expirationTime, labels
    description: str | None = None
    friendly_name: str | None = None
    expiration_ms: int | None = None
    labels: dict[str, str | None] = field(default_factory=dict)
    replace_labels: bool = False
    vertex_model_id: str | None = None
    aliases: list[str] | None = None

    @property
    def registers(self) -> bool:
        return self.vertex_model_id is not None or self.aliases is not None


def _label(key: Any, value: Any, where: str, err: type[InvalidArgument]) -> tuple[str, str | None]:
    if not isinstance(key, str) or not key:
        raise err(f"{where}: label keys must be non-empty strings, got {key!r}.")
    ok = key[0].islower() and all(c.islower() or c.isdigit() or c in "_-" for c in key)
    if not ok or len(key) > 63:
        raise err(
            f"{where}: invalid label key {key!r}: at most 63 lowercase letters, digits, '_' or '-', "
            "starting with a lowercase letter."
        )
    if value is None:
        return key, None
    if not isinstance(value, str):
        raise err(f"{where}: the value of label {key!r} must be a string, got {value!r}.")
    if len(value) > 63 or not all(c.islower() or c.isdigit() or c in "_-" for c in value):
        raise err(
            f"{where}: invalid value {value!r} of label {key!r}: at most 63 lowercase letters, digits, "
            "'_' or '-'."
        )
    return key, value


def check_model_id(model_id: Any, where: str, err: type[InvalidArgument]) -> str:
    if not isinstance(model_id, str) or not MODEL_ID_RE.match(model_id) or model_id[0] == "-":
        raise err(
            f"Invalid Vertex AI model id {model_id!r} in {where}: at most 63 characters of [a-z0-9_-], "
            "not starting with a digit or hyphen."
        )
    return model_id


def check_aliases(value: Any, where: str, err: type[InvalidArgument]) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise err(f"{where} expects ARRAY<STRING>, got {value!r}.")
    for alias in value:
        if not ALIAS_RE.match(alias) or alias.isdigit():
            raise err(f"Invalid alias {alias!r} in {where}: must match {ALIAS_RE.pattern}.")
    return list(dict.fromkeys(value))


def parse_timestamp_ms(text: str, where: str) -> int:
    """'2030-01-01 00:00:00 UTC', ISO 8601 with Z or an offset, or a date (UTC when no zone)."""
    raw = text.strip()
    value = raw[:-3].strip() if raw.upper().endswith("UTC") else raw
    value = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidQuery(
            f"{where}: invalid timestamp {text!r}; write TIMESTAMP '2030-01-31 00:00:00 UTC'."
        ) from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return int(stamp.timestamp() * 1000)


def from_alter(options: dict[str, Any]) -> ModelUpdate:
    """The update an ALTER MODEL … SET OPTIONS(...) asks for (options already named and parsed)."""
    up = ModelUpdate()
    for name, value in options.items():
        if name == "DESCRIPTION":
            if value is not None and not isinstance(value, str):
                raise InvalidQuery(f"Option DESCRIPTION expects STRING, got {value!r}.")
            up.description = value
            up.given.add("description")
        elif name == "LABELS":
            labels: dict[str, str | None] = {}
            for key, val in value or []:
                if val is None:
                    raise InvalidQuery(f"Option LABELS: label {key!r} needs a STRING value, not NULL.")
                k, v = _label(key, val, "Option LABELS", InvalidQuery)
                labels[k] = v
            up.labels, up.replace_labels = labels, True
            up.given.add("labels")
        elif name == "EXPIRATION_TIMESTAMP":
            if value is not None and not isinstance(value, str):
                raise InvalidQuery(f"Option EXPIRATION_TIMESTAMP expects TIMESTAMP, got {value!r}.")
            up.expiration_ms = (
                None if value is None else parse_timestamp_ms(value, "Option EXPIRATION_TIMESTAMP")
            )
            up.given.add("expirationTime")
        elif name == "VERTEX_AI_MODEL_ID":
            up.vertex_model_id = check_model_id(value, "option VERTEX_AI_MODEL_ID", InvalidQuery)
        elif name == "VERTEX_AI_MODEL_VERSION_ALIASES":
            up.aliases = check_aliases(value, "Option VERTEX_AI_MODEL_VERSION_ALIASES", InvalidQuery)
    return up


def from_patch(body: Any, path: ModelPath) -> ModelUpdate:
    """The update a `models.patch` body asks for; output-only fields are ignored."""
    if not isinstance(body, dict):
        raise InvalidArgument("The request body must be a JSON Model object.")
    if "encryptionConfiguration" in body:
        raise InvalidArgument(
            "encryptionConfiguration is not supported by loopml (no customer-managed keys)."
        )
    unknown = sorted(set(body) - _PATCHABLE - _READ_ONLY)
    if unknown:
        raise InvalidArgument(
            f"Unknown or read-only field {unknown[0]!r} in the Model patch; loopml can change "
            "description, friendlyName, labels, expirationTime and trainingRuns[].vertexAiModelId."
        )
    ref = body.get("modelReference")
    if isinstance(ref, dict):
        for key, want in (("projectId", path.project), ("datasetId", path.dataset), ("modelId", path.model)):
            if ref.get(key) not in (None, want) and str(ref.get(key)).lower() != want.lower():
                raise InvalidArgument(
                    f"modelReference.{key} {ref.get(key)!r} does not match {want!r} in the URL."
                )
    up = ModelUpdate()
    for key in ("description", "friendlyName"):
        if key in body:
            value = body[key]
            if value is not None and not isinstance(value, str):
                raise InvalidArgument(f"Model.{key} must be a string or null.")
            setattr(up, "description" if key == "description" else "friendly_name", value)
            up.given.add(key)
    if "labels" in body:
        raw = body["labels"]
        if raw is not None and not isinstance(raw, dict):
            raise InvalidArgument("Model.labels must be an object of string keys and values.")
        up.labels = dict(_label(k, v, "Model.labels", InvalidArgument) for k, v in (raw or {}).items())
        up.given.add("labels")
    if "expirationTime" in body:
        raw = body["expirationTime"]
        if raw is None:
            up.expiration_ms = None
        elif isinstance(raw, int | str) and not isinstance(raw, bool) and INTEGER_RE.fullmatch(str(raw)):
            up.expiration_ms = int(raw)
        else:
            raise InvalidArgument(f"Model.expirationTime must be milliseconds since the epoch, got {raw!r}.")
        up.given.add("expirationTime")
    runs = body.get("trainingRuns")
    if runs is not None:
        if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
            raise InvalidArgument("Model.trainingRuns must be a list of TrainingRun objects.")
        ids: set[str] = set()
        for i, run in enumerate(runs):
            value = run.get("vertexAiModelId")
            if value is None or value == "":
                continue
            if not isinstance(value, str):
                raise InvalidArgument(
                    f"Model.trainingRuns[{i}].vertexAiModelId must be a string, got {value!r}."
                )
            ids.add(value)
        if len(ids) > 1:
            raise InvalidArgument(
                "trainingRuns name more than one vertexAiModelId; a model is registered under one id."
            )
        if ids:
            up.vertex_model_id = check_model_id(ids.pop(), "trainingRuns[].vertexAiModelId", InvalidArgument)
    return up
