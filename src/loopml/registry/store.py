"""Row lookups and Model JSON rendering shared by the registry and endpoint services."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from loopml.errors import InvalidArgument, NotFound
from loopml.metadata.tables import (
    DeployedModelRow,
    EndpointRow,
    ModelRow,
    ModelVersionRow,
    VersionAliasRow,
)
from loopml.refs import MODEL_ID_RE, VERSION_RE, check_parent, now, parent_name, rfc3339
from loopml.registry import aliases as alias_rules
from loopml.registry.frameworks import supported_deployment_types

# Generated model ids are numeric (as on Vertex); user-chosen ones follow MODEL_ID_RE.
GENERATED_MODEL_ID_RE = re.compile(r"^[1-9][0-9]{0,19}\Z")

SOURCE_TYPES = {
    "sql": "BQML",
    "upload": "CUSTOM",
    "custom_job": "CUSTOM",
    "training_pipeline": "CUSTOM",
    "pipeline": "CUSTOM",
}

INPUT_FORMATS = ["jsonl", "csv", "bigquery", "file-list", "tf-record", "tf-record-gzip"]
OUTPUT_FORMATS = ["jsonl", "bigquery"]


def check_model_id(model_id: str) -> str:
    if not isinstance(model_id, str) or not (
        MODEL_ID_RE.match(model_id) or GENERATED_MODEL_ID_RE.match(model_id)
    ):
        raise InvalidArgument(
            f"Invalid model id {model_id!r}: use up to 63 characters of [a-z0-9_-], "
            "not starting with a digit or hyphen."
        )
    return model_id


def aware(ts: datetime) -> datetime:
    """SQLite hands back naive datetimes; they are UTC."""
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def model_name(project: str, location: str, model_id: str) -> str:
    return f"{parent_name(project, location)}/models/{model_id}"


def split_ref(ref: str) -> tuple[str, str | None]:
    """("m", "3"|"alias"|None) from "m", "m@3", "m@alias" or a full resource name."""
    if not isinstance(ref, str) or not ref:
        raise InvalidArgument("A model reference is required.")
    name = ref.rsplit("/models/", 1)[-1].replace("%40", "@")
    model_id, sep, version = name.partition("@")
    if sep and not version:
        raise InvalidArgument(f"Model reference {ref!r} has an empty version after '@'.")
    return model_id, (version or None)


def find_model(session: Session, project: str, location: str, model_id: str) -> ModelRow | None:
    return session.scalars(
        select(ModelRow).where(
            ModelRow.project == project, ModelRow.location == location, ModelRow.model_id == model_id
        )
    ).first()


def get_model_row(session: Session, project: str, location: str, model_id: str) -> ModelRow:
    check_parent(project, location)
    check_model_id(model_id)
    row = find_model(session, project, location, model_id)
    if row is None:
        raise NotFound(f"Model {model_name(project, location, model_id)} not found.")
    return row


def lock_model(
    session: Session, project: str, location: str, model_id: str, *, new_version: bool = False
) -> tuple[ModelRow, int]:
    """Lock a model for a change and return it with its `next_version` after this call.

    The first statement of the transaction is an UPDATE of the model row: it takes SQLite's
    write lock (waiting on the busy timeout) or PostgreSQL's row lock, so concurrent changes of
    one model are serialised and everything read afterwards is current. With `new_version` it
    atomically allocates the next version number (returned value − 1).
    """
    check_parent(project, location)
    check_model_id(model_id)
    values: dict[str, Any] = {"update_time": now()}
    if new_version:
        values["next_version"] = ModelRow.next_version + 1
    found = session.execute(
        update(ModelRow)
        .where(ModelRow.project == project, ModelRow.location == location, ModelRow.model_id == model_id)
        .values(**values)
        .returning(ModelRow.pk, ModelRow.next_version)
        .execution_options(synchronize_session=False)
    ).first()
    if found is None:
        raise NotFound(f"Model {model_name(project, location, model_id)} not found.")
    row = session.get(ModelRow, found[0], populate_existing=True)
    assert row is not None
    return row, int(found[1])


def alias_map(session: Session, model: ModelRow) -> dict[str, str]:
    """alias → version id for one model."""
    rows = session.execute(
        select(VersionAliasRow.alias, ModelVersionRow.version_id)
        .join(ModelVersionRow, ModelVersionRow.pk == VersionAliasRow.version_pk)
        .where(VersionAliasRow.model_pk == model.pk)
    ).all()
    return {alias: version for alias, version in rows}


def resolve_version_row(
    session: Session, model: ModelRow, version: str | None, amap: dict[str, str] | None = None
) -> ModelVersionRow:
    """The version named by an id or alias (None = the version holding `default`)."""
    amap = alias_map(session, model) if amap is None else amap
    label = version or alias_rules.DEFAULT
    if version is not None and VERSION_RE.match(version):
        version_id = version
    else:
        if version is not None:
            alias_rules.check_alias(version, "model version alias")
        found = amap.get(label)
        if found is None:
            raise NotFound(
                f"Model {model_name(model.project, model.location, model.model_id)}@{label} not found."
            )
        version_id = found
    for row in model.versions:
        if row.version_id == version_id:
            return row
    raise NotFound(f"Model {model_name(model.project, model.location, model.model_id)}@{label} not found.")


def set_aliases(session: Session, model: ModelRow, new_map: dict[str, str]) -> None:
    """Replace a model's alias rows with `new_map` (alias → version id)."""
    by_version = {v.version_id: v for v in model.versions}
    existing = {
        row.alias: row
        for row in session.scalars(select(VersionAliasRow).where(VersionAliasRow.model_pk == model.pk))
    }
    for alias, row in existing.items():
        target = new_map.get(alias)
        if target is None:
            session.delete(row)
        elif by_version[target].pk != row.version_pk:
            row.version_pk = by_version[target].pk
    session.flush()
    for alias, version_id in new_map.items():
        if alias not in existing:
            session.add(VersionAliasRow(model_pk=model.pk, version_pk=by_version[version_id].pk, alias=alias))
    session.flush()


def deployments_by_version(session: Session, version_pks: Iterable[int]) -> dict[int, list[dict[str, str]]]:
    pks = list(version_pks)
    out: dict[int, list[dict[str, str]]] = defaultdict(list)
    if not pks:
        return out
    rows = session.execute(
        select(DeployedModelRow.model_version_pk, DeployedModelRow.deployed_model_id, EndpointRow)
        .join(EndpointRow, EndpointRow.pk == DeployedModelRow.endpoint_pk)
        .where(DeployedModelRow.model_version_pk.in_(pks))
        .order_by(DeployedModelRow.pk)
    ).all()
    for version_pk, dm_id, endpoint in rows:
        out[version_pk].append(
            {
                "endpoint": f"{parent_name(endpoint.project, endpoint.location)}/endpoints/{endpoint.endpoint_id}",
                "deployedModelId": dm_id,
            }
        )
    return out


def version_json(
    model: ModelRow,
    version: ModelVersionRow,
    amap: dict[str, str],
    deployed: list[dict[str, str]],
) -> dict[str, Any]:
    """Vertex Model JSON for one version (unknown upload fields are echoed from `extra`)."""
    lineage = dict(version.lineage or {})
    body: dict[str, Any] = dict(version.extra or {})
    body.update(
        {
            "name": model_name(model.project, model.location, model.model_id),
            "displayName": version.display_name,
            "description": version.description or "",
            "labels": dict(version.labels or {}),
            "createTime": rfc3339(model.create_time),
            "updateTime": rfc3339(max(aware(version.update_time), aware(model.update_time))),
            "versionId": version.version_id,
            "versionAliases": alias_rules.aliases_of(amap, version.version_id),
            "versionCreateTime": rfc3339(version.create_time),
            "versionUpdateTime": rfc3339(version.update_time),
            "versionDescription": version.version_description or "",
            "artifactUri": version.artifact_uri or "",
            "containerSpec": dict(version.container_spec or {}),
            "supportedDeploymentResourcesTypes": supported_deployment_types(version.framework),
            "supportedInputStorageFormats": list(INPUT_FORMATS),
            "supportedOutputStorageFormats": list(OUTPUT_FORMATS),
            "deployedModels": deployed,
            "modelSourceInfo": {"sourceType": SOURCE_TYPES.get(str(lineage.get("kind")), "CUSTOM")},
            "lineage": lineage,
            "framework": version.framework,
        }
    )
    pipeline = lineage.get("training_pipeline") or (
        lineage.get("job") if lineage.get("kind") == "training_pipeline" else None
    )
    if pipeline:
        body["trainingPipeline"] = pipeline
    return body


def render_versions(
    session: Session, model: ModelRow, versions: list[ModelVersionRow]
) -> list[dict[str, Any]]:
    amap = alias_map(session, model)
    deployed = deployments_by_version(session, [v.pk for v in versions])
    return [version_json(model, v, amap, deployed.get(v.pk, [])) for v in versions]
