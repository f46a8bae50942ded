"""Model upload in two steps: validate and snapshot the artifacts (no transaction held while
copying files), then register the version in one short transaction."""

from __future__ import annotations

import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from loopml.artifacts import ArtifactStore
from loopml.errors import AlreadyExists, InvalidArgument
from loopml.metadata import Database
from loopml.metadata.tables import ModelRow, ModelVersionRow
from loopml.refs import check_parent, new_numeric_id, now
from loopml.registry import aliases as alias_rules
from loopml.registry import store
from loopml.registry.frameworks import detect_framework
from loopml.registry.validation import ModelFields, parse_model


@dataclass
class PreparedUpload:
    project: str
    location: str
    fields: ModelFields
    model_id: str
    is_new: bool
    snapshot: Path | None
    framework: str
    lineage: dict[str, Any]

    def discard(self) -> None:
        """Remove the snapshot of an upload that was not registered."""
        if self.snapshot is not None:
            shutil.rmtree(self.snapshot, ignore_errors=True)


def prepare(
    db: Database,
    artifacts: ArtifactStore,
    project: str,
    location: str,
    model: Any,
    model_id: str | None,
    parent_model: str | None,
    lineage: dict[str, Any] | None,
) -> PreparedUpload:
    """Validate the request and snapshot the artifacts; raises before anything is stored."""
    check_parent(project, location)
    fields = parse_model(model)
    if lineage is not None and not isinstance(lineage, dict):
        raise InvalidArgument("lineage must be an object.")
    if parent_model:
        parent_id, parent_version = store.split_ref(parent_model)
        full = store.model_name(project, location, parent_id)
        if "/" in parent_model and parent_model.split("@")[0] != full:
            raise InvalidArgument(
                f"parentModel {parent_model!r} is not a model in {full.split('/models/')[0]}."
            )
        if parent_version is not None:
            raise InvalidArgument("parentModel must name a model without a version (no '@').")
        if model_id and model_id != parent_id:
            raise InvalidArgument(f"modelId {model_id!r} differs from the parentModel id {parent_id!r}.")
        with db.session() as session:
            store.get_model_row(session, project, location, parent_id)  # NotFound early
        target, is_new = parent_id, False
    elif model_id:
        store.check_model_id(model_id)
        if not store.MODEL_ID_RE.match(model_id):
            raise InvalidArgument(f"modelId {model_id!r} must not start with a digit or hyphen.")
        with db.session() as session:
            if store.find_model(session, project, location, model_id) is not None:
                raise AlreadyExists(
                    f"Model {store.model_name(project, location, model_id)} already exists: "
                    "pass parentModel to add a version."
                )
        target, is_new = model_id, True
    else:
        target, is_new = new_numeric_id(19), True
    snapshot: Path | None = None
    if fields.artifact_uri:
        snapshot = artifacts.snapshot(fields.artifact_uri, project, location, target, secrets.token_hex(8))
    try:
        framework = detect_framework(fields.container_spec, snapshot)
    except BaseException:
        if snapshot is not None:
            shutil.rmtree(snapshot, ignore_errors=True)
        raise
    return PreparedUpload(
        project, location, fields, target, is_new, snapshot, framework, lineage or {"kind": "upload"}
    )


def commit(session: Session, prep: PreparedUpload) -> dict[str, Any]:
    """Register the prepared version; returns UploadModelResponse."""
    ts = now()
    fields = prep.fields
    if prep.is_new:
        # An INSERT first: a concurrent upload of the same id fails on the unique constraint (409).
        row = ModelRow(
            project=prep.project,
            location=prep.location,
            model_id=prep.model_id,
            display_name=fields.display_name,
            description=fields.description,
            labels=fields.labels,
            next_version=2,
            create_time=ts,
            update_time=ts,
        )
        session.add(row)
        try:
            session.flush()
        except IntegrityError:
            raise AlreadyExists(
                f"Model {store.model_name(prep.project, prep.location, prep.model_id)} already exists: "
                "pass parentModel to add a version."
            ) from None
        version_id = "1"
    else:
        row, next_version = store.lock_model(
            session, prep.project, prep.location, prep.model_id, new_version=True
        )
        version_id = str(next_version - 1)
    version = ModelVersionRow(
        model_pk=row.pk,
        version_id=version_id,
        version_description=fields.version_description,
        display_name=fields.display_name,
        description=fields.description,
        labels=fields.labels,
        artifact_uri=fields.artifact_uri,
        snapshot_path=str(prep.snapshot) if prep.snapshot else "",
        container_spec=fields.container_spec,
        framework=prep.framework,
        extra=fields.extra,
        lineage=prep.lineage,
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
    return {
        "model": store.model_name(prep.project, prep.location, row.model_id),
        "modelVersionId": version_id,
    }
