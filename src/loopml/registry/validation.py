"""Validation of Model JSON sent by clients: types checked field by field, errors name the field."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loopml.errors import InvalidArgument
from loopml.registry.aliases import parse_aliases

OUTPUT_ONLY = {
    "name",
    "versionId",
    "createTime",
    "updateTime",
    "versionCreateTime",
    "versionUpdateTime",
    "deployedModels",
    "supportedDeploymentResourcesTypes",
    "supportedInputStorageFormats",
    "supportedOutputStorageFormats",
    "supportedExportFormats",
    "etag",
    "modelSourceInfo",
    "lineage",
    "framework",
    "trainingPipeline",
}

_CONTAINER_STR = ("imageUri", "predictRoute", "healthRoute")
_CONTAINER_STR_LIST = ("command", "args")


def opt_str(body: dict[str, Any], key: str, prefix: str = "model") -> str:
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(f"{prefix}.{key} must be a string, got {type(value).__name__}.")
    return value


def labels(value: Any, field_name: str = "model.labels") -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{field_name} must be an object of string keys and values.")
    for k, v in value.items():
        if not isinstance(k, str) or not k or not isinstance(v, str):
            raise InvalidArgument(f"{field_name}: label {k!r} must map a non-empty string key to a string.")
        if len(k) > 63 or len(v) > 63:
            raise InvalidArgument(f"{field_name}: label {k!r} is longer than 63 characters.")
    return dict(value)


def container_spec(value: Any, prefix: str = "model.containerSpec") -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{prefix} must be an object.")
    spec = dict(value)
    for key in _CONTAINER_STR:
        if key in spec and spec[key] is not None and not isinstance(spec[key], str):
            raise InvalidArgument(f"{prefix}.{key} must be a string.")
    for key in _CONTAINER_STR_LIST:
        if spec.get(key) is not None and (
            not isinstance(spec[key], list) or not all(isinstance(x, str) for x in spec[key])
        ):
            raise InvalidArgument(f"{prefix}.{key} must be a list of strings.")
    env = spec.get("env")
    if env is not None:
        if not isinstance(env, list):
            raise InvalidArgument(f"{prefix}.env must be a list of {{name, value}} objects.")
        for i, item in enumerate(env):
            if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
                raise InvalidArgument(f"{prefix}.env[{i}] must be an object with a non-empty string name.")
            if item.get("value") is not None and not isinstance(item["value"], str):
                raise InvalidArgument(f"{prefix}.env[{i}].value must be a string.")
    ports = spec.get("ports")
    if ports is not None:
        if not isinstance(ports, list):
            raise InvalidArgument(f"{prefix}.ports must be a list of {{containerPort}} objects.")
        clean = []
        for i, item in enumerate(ports):
            port = item.get("containerPort") if isinstance(item, dict) else None
            if isinstance(port, float) and port.is_integer():
                port = int(port)
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise InvalidArgument(f"{prefix}.ports[{i}].containerPort must be an integer 1-65535.")
            clean.append({**item, "containerPort": port})
        spec["ports"] = clean
    return {k: v for k, v in spec.items() if v is not None}


@dataclass
class ModelFields:
    display_name: str
    description: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    artifact_uri: str = ""
    container_spec: dict[str, Any] = field(default_factory=dict)
    version_aliases: list[str] = field(default_factory=list)
    version_description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


_KNOWN = {
    "displayName",
    "description",
    "labels",
    "artifactUri",
    "containerSpec",
    "versionAliases",
    "versionDescription",
}


def parse_model(model: Any) -> ModelFields:
    """The fields of an uploaded Model; unknown fields are kept verbatim in `extra`."""
    if not isinstance(model, dict):
        raise InvalidArgument("model must be a JSON object (the Model to upload).")
    display_name = opt_str(model, "displayName")
    if not display_name.strip():
        raise InvalidArgument("model.displayName is required.")
    if len(display_name) > 128:
        raise InvalidArgument("model.displayName must be at most 128 characters.")
    return ModelFields(
        display_name=display_name,
        description=opt_str(model, "description"),
        labels=labels(model.get("labels")),
        artifact_uri=opt_str(model, "artifactUri").strip(),
        container_spec=container_spec(model.get("containerSpec")),
        version_aliases=parse_aliases(
            model.get("versionAliases"), "model.versionAliases", allow_removal=False
        ),
        version_description=opt_str(model, "versionDescription"),
        extra={k: v for k, v in model.items() if k not in _KNOWN and k not in OUTPUT_ONLY},
    )


PATCHABLE = {
    "display_name": "displayName",
    "displayname": "displayName",
    "description": "description",
    "labels": "labels",
    "version_description": "versionDescription",
    "versiondescription": "versionDescription",
}


def update_paths(update_mask: str | None, body: dict[str, Any]) -> list[str]:
    """JSON field names to update from `updateMask` (snake or camel case) or the body's fields."""
    if update_mask:
        paths = []
        for raw in update_mask.split(","):
            key = raw.strip()
            if not key:
                continue
            field_name = PATCHABLE.get(key.lower().replace(".", "_"))
            if field_name is None:
                raise InvalidArgument(
                    f"updateMask: field {key!r} cannot be updated; updatable fields: "
                    "display_name, description, labels, version_description."
                )
            paths.append(field_name)
        return paths
    fields = [k for k in body if k not in OUTPUT_ONLY]
    bad = [k for k in fields if k not in PATCHABLE.values()]
    if bad:
        raise InvalidArgument(
            f"Field {bad[0]!r} cannot be updated; updatable fields: displayName, description, labels, "
            "versionDescription."
        )
    return fields
