"""The Model Registry: models, versions, aliases, lineage. The rules live here, in one place.

Every call is one metadata transaction (nothing half-written). Artifacts are snapshotted into
the artifact store at upload; the snapshot is immutable and is what serving loads.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from loopml.artifacts import ArtifactStore
from loopml.errors import FailedPrecondition, InvalidArgument, NotFound
from loopml.metadata import Database
from loopml.metadata.tables import ModelRow
from loopml.refs import check_parent, now
from loopml.registry import aliases as alias_rules
from loopml.registry import store, upload
from loopml.registry.listing import paginate
from loopml.registry.operations import EMPTY_TYPE, OperationStore, typed
from loopml.registry.validation import labels as check_labels
from loopml.registry.validation import opt_str, update_paths

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
        """Register a model (or a new version of `parent_model`); returns UploadModelResponse.

        The artifacts at `model["artifactUri"]` are snapshotted into the store first; `lineage`
        records what produced the version (default `{"kind": "upload"}`).
        """
        prep = upload.prepare(
            self.db, self.artifacts, project, location, model, model_id, parent_model, lineage
        )
        try:
            with self.db.session() as session:
                result = upload.commit(session, prep)
        except BaseException:
            prep.discard()
            raise
        log.info("registered %s@%s (%s)", prep.model_id, result["modelVersionId"], prep.framework)
        return result

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
        prep = upload.prepare(
            self.db, self.artifacts, project, location, body.get("model"), model_id, parent, None
        )
        try:
            with self.db.session() as session:
                result = upload.commit(session, prep)
                return self.operations.record(
                    session, result["model"], response=typed("UploadModelResponse", result)
                )
        except BaseException:
            prep.discard()
            raise

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
            row, _ = store.lock_model(session, project, location, model_id)
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
            row, _ = store.lock_model(session, project, location, model_id)
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
            row, _ = store.lock_model(session, project, location, model_id)
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
            row, _ = store.lock_model(session, project, location, model_id)
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
