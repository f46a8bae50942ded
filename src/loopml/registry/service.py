"""The Model Registry: models, versions, aliases, lineage. The rules live here, in one place.

Every call is one metadata transaction (nothing half-written). Artifacts are snapshotted into
the artifact store at upload; the snapshot is immutable and is what serving loads.
"""

from __future__ import annotations

import logging
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from loopml.artifacts import ArtifactStore
from loopml.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from loopml.metadata import Database
from loopml.metadata.tables import ModelRow, ModelVersionRow
from loopml.refs import check_parent, new_numeric_id, now
from loopml.registry import aliases as alias_rules
from loopml.registry import store
from loopml.registry.frameworks import detect_framework
from loopml.registry.listing import paginate
from loopml.registry.operations import EMPTY_TYPE, OperationStore, typed
from loopml.registry.validation import labels as check_labels
from loopml.registry.validation import opt_str, parse_model, update_paths

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedVersion:
    model_name: str
    model_id: str
    version_id: str
    display_name: str
    framework: str
    artifact_dir: Path | None
    artifact_uri: str
    container_spec: dict[str, Any]


class RegistryService:
    def __init__(self, db: Database, artifacts: ArtifactStore, operations: OperationStore) -> None:
        self.db = db
        self.artifacts = artifacts
        self.operations = operations

    # -- upload ------------------------------------------------------------------------------
    def upload_model(
        self,
        project: str,
        location: str,
        model: dict[str, Any],
        *,
        model_id: str | None = None,
        parent_model: str | None = None,
        lineage: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Register a model (or a new version of `parent_model`); returns UploadModelResponse."""
        with self.db.session() as session:
            return self._upload(session, project, location, model, model_id, parent_model, lineage)

    def upload_operation(self, project: str, location: str, body: Any) -> dict[str, Any]:
        """`models:upload` with its request body; returns the finished Operation."""
        if not isinstance(body, dict):
            raise InvalidArgument("Request body must be a JSON object {model, parentModel?, modelId?}.")
        unknown = set(body) - {"model", "parentModel", "modelId", "serviceAccount", "parent"}
        if unknown:
            raise InvalidArgument(f"Unknown field {sorted(unknown)[0]!r} in upload request.")
        model_id = body.get("modelId") or None
        parent = body.get("parentModel") or None
        if model_id is not None and not isinstance(model_id, str):
            raise InvalidArgument("modelId must be a string.")
        if parent is not None and not isinstance(parent, str):
            raise InvalidArgument("parentModel must be a string (a model resource name).")
        with self.db.session() as session:
            result = self._upload(session, project, location, body.get("model"), model_id, parent, None)
            return self.operations.record(
                session, result["model"], response=typed("UploadModelResponse", result)
            )

    def _upload(
        self,
        session: Session,
        project: str,
        location: str,
        model: Any,
        model_id: str | None,
        parent_model: str | None,
        lineage: dict[str, Any] | None,
    ) -> dict[str, Any]:
        check_parent(project, location)
        fields = parse_model(model)
        if lineage is not None and not isinstance(lineage, dict):
            raise InvalidArgument("lineage must be an object.")
        ts = now()
        if parent_model:
            parent_id, parent_version = store.split_ref(parent_model)
            full = store.model_name(project, location, parent_id)
            if "/" in parent_model and parent_model.split("@")[0].replace("%40", "@") != full:
                raise InvalidArgument(
                    f"parentModel {parent_model!r} is not a model in {full.split('/models/')[0]}."
                )
            if parent_version is not None:
                raise InvalidArgument("parentModel must name a model without a version (no '@').")
            if model_id and model_id != parent_id:
                raise InvalidArgument(f"modelId {model_id!r} differs from the parentModel id {parent_id!r}.")
            row = store.get_model_row(session, project, location, parent_id, for_update=True)
        else:
            if model_id:
                store.check_model_id(model_id)
                if not store.MODEL_ID_RE.match(model_id):
                    raise InvalidArgument(f"modelId {model_id!r} must not start with a digit or hyphen.")
                if store.find_model(session, project, location, model_id) is not None:
                    raise AlreadyExists(
                        f"Model {store.model_name(project, location, model_id)} already exists: "
                        "pass parentModel to add a version."
                    )
            else:
                model_id = new_numeric_id(19)
            row = ModelRow(
                project=project,
                location=location,
                model_id=model_id,
                display_name=fields.display_name,
                description=fields.description,
                labels=fields.labels,
                next_version=1,
                create_time=ts,
                update_time=ts,
            )
            session.add(row)
            session.flush()
        version_id = str(row.next_version)
        row.next_version += 1
        row.update_time = ts
        snapshot: Path | None = None
        try:
            if fields.artifact_uri:
                snapshot = self.artifacts.snapshot(
                    fields.artifact_uri,
                    project,
                    location,
                    row.model_id,
                    f"v{version_id}-{secrets.token_hex(4)}",
                )
            framework = detect_framework(fields.container_spec, snapshot)
            version = ModelVersionRow(
                model_pk=row.pk,
                version_id=version_id,
                version_description=fields.version_description,
                display_name=fields.display_name,
                description=fields.description,
                labels=fields.labels,
                artifact_uri=fields.artifact_uri,
                snapshot_path=str(snapshot) if snapshot else "",
                container_spec=fields.container_spec,
                framework=framework,
                extra=fields.extra,
                lineage=lineage or {"kind": "upload"},
                create_time=ts,
                update_time=ts,
            )
            row.versions.append(version)
            session.flush()
            current = store.alias_map(session, row)
            changes = list(fields.version_aliases)
            if alias_rules.DEFAULT not in current:
                changes.append(alias_rules.DEFAULT)
            store.set_aliases(session, row, alias_rules.merge(current, version_id, changes))
            session.flush()
        except BaseException:
            if snapshot is not None:
                shutil.rmtree(snapshot, ignore_errors=True)
            raise
        log.info("registered %s@%s (%s)", row.model_id, version_id, framework)
        return {"model": store.model_name(project, location, row.model_id), "modelVersionId": version_id}

    # -- read --------------------------------------------------------------------------------
    def get_model(self, project: str, location: str, ref: str) -> dict[str, Any]:
        model_id, version = store.split_ref(ref)
        with self.db.session() as session:
            row = store.get_model_row(session, project, location, model_id)
            version_row = store.resolve_version_row(session, row, version)
            return store.render_versions(session, row, [version_row])[0]

    def resolve_version(self, project: str, location: str, ref: str) -> ResolvedVersion:
        model_id, version = store.split_ref(ref)
        with self.db.session() as session:
            row = store.get_model_row(session, project, location, model_id)
            v = store.resolve_version_row(session, row, version)
            return ResolvedVersion(
                model_name=store.model_name(project, location, row.model_id),
                model_id=row.model_id,
                version_id=v.version_id,
                display_name=v.display_name,
                framework=v.framework,
                artifact_dir=Path(v.snapshot_path) if v.snapshot_path else None,
                artifact_uri=v.artifact_uri,
                container_spec=dict(v.container_spec or {}),
            )

    def list_models(
        self,
        project: str,
        location: str,
        *,
        filter: str | None = None,
        order_by: str | None = None,
        page_size: Any = None,
        page_token: str | None = None,
    ) -> dict[str, Any]:
        """One entry per model: its default version."""
        check_parent(project, location)
        with self.db.session() as session:
            rows = session.scalars(
                select(ModelRow)
                .where(ModelRow.project == project, ModelRow.location == location)
                .options(selectinload(ModelRow.versions))
                .order_by(ModelRow.pk)
            ).all()
            items = []
            for row in rows:
                items.extend(
                    store.render_versions(session, row, [store.resolve_version_row(session, row, None)])
                )
        page, token = paginate(
            items,
            filter_text=filter,
            order_by=order_by,
            page_size=page_size,
            page_token=page_token,
            id_key="model_id",
        )
        out: dict[str, Any] = {"models": page}
        if token:
            out["nextPageToken"] = token
        return out

    def list_versions(
        self,
        project: str,
        location: str,
        ref: str,
        *,
        filter: str | None = None,
        order_by: str | None = None,
        page_size: Any = None,
        page_token: str | None = None,
    ) -> dict[str, Any]:
        model_id, version = store.split_ref(ref)
        if version is not None:
            raise InvalidArgument("listVersions takes a model name without '@version'.")
        with self.db.session() as session:
            row = store.get_model_row(session, project, location, model_id)
            items = store.render_versions(session, row, list(row.versions))
        page, token = paginate(
            items,
            filter_text=filter,
            order_by=order_by,
            page_size=page_size,
            page_token=page_token,
            id_key="version_id",
        )
        out: dict[str, Any] = {"models": page}
        if token:
            out["nextPageToken"] = token
        return out

    # -- change ------------------------------------------------------------------------------
    def merge_version_aliases(self, project: str, location: str, ref: str, changes: Any) -> dict[str, Any]:
        changes = alias_rules.parse_aliases(changes, "versionAliases", allow_removal=True)
        model_id, version = store.split_ref(ref)
        if version is None:
            raise InvalidArgument("mergeVersionAliases needs a version: models/{model}@{version}.")
        with self.db.session() as session:
            row = store.get_model_row(session, project, location, model_id, for_update=True)
            current = store.alias_map(session, row)
            v = store.resolve_version_row(session, row, version, current)
            store.set_aliases(session, row, alias_rules.merge(current, v.version_id, changes))
            v.update_time = now()
            return store.render_versions(session, row, [v])[0]

    def update_model(
        self, project: str, location: str, ref: str, body: Any, update_mask: str | None = None
    ) -> dict[str, Any]:
        """PATCH models/{m}[@v]: displayName, description, labels, versionDescription."""
        if not isinstance(body, dict):
            raise InvalidArgument("Request body must be a Model JSON object.")
        paths = update_paths(update_mask, body)
        model_id, version = store.split_ref(ref)
        with self.db.session() as session:
            row = store.get_model_row(session, project, location, model_id, for_update=True)
            v = store.resolve_version_row(session, row, version)
            for path in paths:
                if path == "displayName":
                    value = opt_str(body, "displayName")
                    if not value.strip():
                        raise InvalidArgument("model.displayName must not be empty.")
                    v.display_name = value
                elif path == "description":
                    v.description = opt_str(body, "description")
                elif path == "labels":
                    v.labels = check_labels(body.get("labels"))
                elif path == "versionDescription":
                    v.version_description = opt_str(body, "versionDescription")
            v.update_time = now()
            row.update_time = v.update_time
            session.flush()
            return store.render_versions(session, row, [v])[0]

    def delete_model(self, project: str, location: str, ref: str) -> dict[str, Any]:
        """Delete a model and every version; refused while any version is deployed. Returns the LRO."""
        model_id, version = store.split_ref(ref)
        if version is not None:
            raise InvalidArgument("To delete one version use models/{model}@{version}:deleteVersion.")
        with self.db.session() as session:
            row = store.get_model_row(session, project, location, model_id, for_update=True)
            deployed = store.deployments_by_version(session, [v.pk for v in row.versions])
            if any(deployed.values()):
                where = ", ".join(
                    f"{d['endpoint']} (deployed model {d['deployedModelId']})"
                    for ds in deployed.values()
                    for d in ds
                )
                raise FailedPrecondition(
                    f"Model {store.model_name(project, location, model_id)} is deployed to {where}: "
                    "undeploy it first."
                )
            snapshots = [v.snapshot_path for v in row.versions if v.snapshot_path]
            name = store.model_name(project, location, model_id)
            session.delete(row)
            session.flush()
            op = self.operations.record(session, name, response={"@type": EMPTY_TYPE})
        self._remove_snapshots(snapshots)
        return op

    def delete_version(self, project: str, location: str, ref: str) -> dict[str, Any]:
        """Delete one version: refused if deployed, if it is the only one, or if it holds `default`."""
        model_id, version = store.split_ref(ref)
        if version is None:
            raise InvalidArgument("deleteVersion needs a version: models/{model}@{version}:deleteVersion.")
        with self.db.session() as session:
            row = store.get_model_row(session, project, location, model_id, for_update=True)
            amap = store.alias_map(session, row)
            v = store.resolve_version_row(session, row, version, amap)
            label = f"{store.model_name(project, location, model_id)}@{v.version_id}"
            if store.deployments_by_version(session, [v.pk]).get(v.pk):
                raise FailedPrecondition(f"Model version {label} is deployed: undeploy it first.")
            if len(row.versions) == 1:
                raise FailedPrecondition(
                    f"Model version {label} is the only version: delete the model instead."
                )
            if amap.get(alias_rules.DEFAULT) == v.version_id:
                raise FailedPrecondition(
                    f"Model version {label} holds the 'default' alias: assign 'default' to another version "
                    "with mergeVersionAliases first."
                )
            snapshot = v.snapshot_path
            row.versions.remove(v)
            session.delete(v)
            row.update_time = now()
            session.flush()
            op = self.operations.record(session, label, response={"@type": EMPTY_TYPE})
        self._remove_snapshots([snapshot] if snapshot else [])
        return op

    def _remove_snapshots(self, paths: list[str]) -> None:
        for p in paths:
            path = Path(p)
            if self.artifacts.is_inside(path) and path.is_relative_to(self.artifacts.registry_dir):
                shutil.rmtree(path, ignore_errors=True)

    def find_model_version(self, project: str, location: str, ref: str) -> ResolvedVersion | None:
        try:
            return self.resolve_version(project, location, ref)
        except NotFound:
            return None
