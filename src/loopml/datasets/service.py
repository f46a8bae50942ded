"""DatasetService: Vertex managed tabular datasets, stored in the metadata database.

A tabular `Dataset` names its data (`metadata.inputConfig.gcsSource.uri[]`, CSV objects in the
artifact store, or `metadata.inputConfig.bigquerySource.uri`, a warehouse table); the source
must exist when the dataset is created. Create and delete answer with a finished long-running
operation, as Vertex's clients expect; get, list (filter, orderBy, pageToken) and patch
(displayName, description, labels) answer with the resource.

Training pipelines use a dataset through `plan()` (at pipeline creation: 404 for an unknown
dataset, 400 for a bad split or destination) and `materialise()` (at job start: the split is
written as CSV shards or warehouse tables and the `AIP_DATA_FORMAT`/`AIP_*_DATA_URI` variables
returned).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from loopml.artifacts import ArtifactStore
from loopml.datasets.sources import Source, SourceReader, parse_source
from loopml.datasets.split import (
    SPLITS,
    assign,
    parse_destination,
    parse_split,
    seed_of,
    stamps,
    write_csv_splits,
    write_table_splits,
)
from loopml.errors import InvalidArgument, NotFound
from loopml.metadata import Database
from loopml.metadata.datasets_tables import DatasetRow
from loopml.refs import check_parent, new_numeric_id, now, parent_name, rfc3339
from loopml.registry import listing
from loopml.registry.operations import EMPTY_TYPE, OperationStore, typed
from loopml.registry.validation import labels as check_labels

TABULAR_SCHEMA = "gs://google-cloud-aiplatform/schema/dataset/metadata/tabular_1.0.0.yaml"
_PATCHABLE = {"display_name": "displayName", "description": "description", "labels": "labels"}
_OUTPUT_ONLY = {"name", "createTime", "updateTime", "etag", "metadataSchemaUri", "metadata", "dataItemCount"}


def dataset_name(project: str, location: str, dataset_id: str) -> str:
    return f"{parent_name(project, location)}/datasets/{dataset_id}"


def to_json(row: DatasetRow) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": dataset_name(row.project, row.location, row.dataset_id),
        "displayName": row.display_name,
        "metadataSchemaUri": row.metadata_schema_uri,
        "metadata": row.metadata_json,
        "createTime": rfc3339(row.create_time),
        "updateTime": rfc3339(row.update_time),
        "etag": row.etag,
        "labels": dict(row.labels or {}),
    }
    if row.description:
        body["description"] = row.description
    return body


def _dataset_id(text: Any, project: str, location: str) -> str:
    """The id of `123` or `projects/p/locations/l/datasets/123` (the same project and location)."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidArgument("A dataset id is required.")
    text = text.strip()
    if "/" in text:
        prefix = f"{parent_name(project, location)}/datasets/"
        if not text.startswith(prefix):
            raise InvalidArgument(f"Dataset {text!r} is not in {parent_name(project, location)}.")
        text = text[len(prefix) :]
    if not text.isdigit() or len(text) > 32:
        raise NotFound(f"Dataset {dataset_name(project, location, text)} does not exist.")
    return text


class DatasetService:
    def __init__(self, db: Database, store: ArtifactStore, warehouse: Callable[[], Any]) -> None:
        self.db = db
        self.store = store
        self.sources = SourceReader(store, warehouse)
        self.operations = OperationStore(db)

    # -- operations --------------------------------------------------------------------------
    def _operation(
        self, session: Session, resource: str, kind: str, response: dict[str, Any]
    ) -> dict[str, Any]:
        """A finished LRO with the `{kind}OperationMetadata` the SDK's operation type names."""
        return self.operations.record(
            session, resource, response=response, metadata_type=f"{kind}OperationMetadata"
        )

    # -- create / read -----------------------------------------------------------------------
    def create(self, project: str, location: str, body: Any) -> dict[str, Any]:
        check_parent(project, location)
        if not isinstance(body, dict):
            raise InvalidArgument("The request body must be a Dataset object.")
        display_name = body.get("displayName", body.get("display_name"))
        if not isinstance(display_name, str) or not display_name.strip():
            raise InvalidArgument("Dataset.displayName is required.")
        if len(display_name) > 128:
            raise InvalidArgument("Dataset.displayName must be at most 128 characters.")
        schema = body.get("metadataSchemaUri", body.get("metadata_schema_uri"))
        if schema != TABULAR_SCHEMA:
            raise InvalidArgument(
                f"Dataset.metadataSchemaUri {schema!r} is not supported: loopml has tabular datasets "
                f"only ({TABULAR_SCHEMA})."
            )
        description = body.get("description") or ""
        if not isinstance(description, str):
            raise InvalidArgument("Dataset.description must be a string.")
        metadata = body.get("metadata")
        source = parse_source(metadata)
        self.sources.check_exists(source)
        key = "gcsSource" if source.kind == "gcs" else "bigquerySource"
        uri: Any = list(source.uris) if source.kind == "gcs" else source.uris[0]
        ts = now()
        row = DatasetRow(
            project=project,
            location=location,
            dataset_id=new_numeric_id(19),
            display_name=display_name,
            description=description,
            metadata_schema_uri=TABULAR_SCHEMA,
            metadata_json={"inputConfig": {key: {"uri": uri}}},
            labels=check_labels(body.get("labels"), "dataset.labels"),
            etag=secrets.token_hex(8),
            create_time=ts,
            update_time=ts,
        )
        with self.db.session() as s:
            s.add(row)
            s.flush()
            resource = to_json(row)
            return self._operation(
                s,
                resource["name"],
                "CreateDataset",
                typed("Dataset", resource),
            )

    def _row(self, session: Session, project: str, location: str, dataset_id: Any) -> DatasetRow:
        check_parent(project, location)
        ident = _dataset_id(dataset_id, project, location)
        row = session.scalar(
            select(DatasetRow).where(
                DatasetRow.project == project,
                DatasetRow.location == location,
                DatasetRow.dataset_id == ident,
            )
        )
        if row is None:
            raise NotFound(f"Dataset {dataset_name(project, location, ident)} does not exist.")
        return row

    def get(self, project: str, location: str, dataset_id: str) -> dict[str, Any]:
        with self.db.session() as s:
            return to_json(self._row(s, project, location, dataset_id))

    def list(
        self,
        project: str,
        location: str,
        *,
        filter: str | None = None,
        order_by: str | None = None,
        page_size: Any = None,
        page_token: str | None = None,
    ) -> dict[str, Any]:
        check_parent(project, location)
        with self.db.session() as s:
            rows = s.scalars(
                select(DatasetRow)
                .where(DatasetRow.project == project, DatasetRow.location == location)
                .order_by(DatasetRow.create_time.desc(), DatasetRow.pk.desc())
            ).all()
            items = [to_json(r) for r in rows]
        page, token = listing.paginate(
            items,
            filter_text=filter,
            order_by=order_by,
            page_size=page_size,
            page_token=page_token,
            id_key="dataset_id",
        )
        out: dict[str, Any] = {"datasets": page}
        if token:
            out["nextPageToken"] = token
        return out

    # -- update / delete ---------------------------------------------------------------------
    def patch(
        self, project: str, location: str, dataset_id: str, body: Any, update_mask: str | None
    ) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise InvalidArgument("The request body must be a Dataset object.")
        if update_mask:
            paths = []
            for raw in update_mask.split(","):
                key = raw.strip()
                snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in key)
                if key and snake not in _PATCHABLE:
                    raise InvalidArgument(
                        f"updateMask: field {key!r} cannot be updated; updatable fields: display_name, "
                        "description, labels."
                    )
                if key:
                    paths.append(_PATCHABLE[snake])
        else:
            paths = [k for k in body if k not in _OUTPUT_ONLY]
            bad = [k for k in paths if k not in _PATCHABLE.values()]
            if bad:
                raise InvalidArgument(
                    f"Field {bad[0]!r} cannot be updated; updatable fields: displayName, description, labels."
                )
        with self.db.session() as s:
            row = self._row(s, project, location, dataset_id)
            for path in paths:
                value = body.get(path)
                if path == "displayName":
                    if not isinstance(value, str) or not value.strip() or len(value) > 128:
                        raise InvalidArgument(
                            "Dataset.displayName must be a non-empty string of at most 128 characters."
                        )
                    row.display_name = value
                elif path == "description":
                    if value is not None and not isinstance(value, str):
                        raise InvalidArgument("Dataset.description must be a string.")
                    row.description = value or ""
                else:
                    row.labels = check_labels(value, "dataset.labels")
            if paths:
                row.update_time = now()
                row.etag = secrets.token_hex(8)
            return to_json(row)

    def delete(self, project: str, location: str, dataset_id: str) -> dict[str, Any]:
        with self.db.session() as s:
            row = self._row(s, project, location, dataset_id)
            name = dataset_name(row.project, row.location, row.dataset_id)
            s.delete(row)
            return self._operation(s, name, "Delete", {"@type": EMPTY_TYPE})

    # -- training ----------------------------------------------------------------------------
    def plan(self, project: str, location: str, input_data_config: dict[str, Any]) -> dict[str, Any]:
        """Validate a pipeline's use of a dataset; the plan is stored with the job for its start."""
        raw_id = input_data_config.get("datasetId", input_data_config.get("dataset_id"))
        with self.db.session() as s:
            row = self._row(s, project, location, raw_id)
            name = dataset_name(row.project, row.location, row.dataset_id)
            dataset_id, metadata = row.dataset_id, dict(row.metadata_json)
        split = parse_split(input_data_config)
        destination = parse_destination(input_data_config, self.store)
        columns = self.sources.check_exists(parse_source(metadata))
        if "key" in split and split["key"].lower() not in {c.lower() for c in columns}:
            raise InvalidArgument(
                f"The split key {split['key']!r} is not a column of dataset {name} ({', '.join(columns)})."
            )
        return {
            "dataset": name,
            "datasetId": dataset_id,
            "source": metadata,
            "split": split,
            "destination": destination,
        }

    def materialise(self, plan: dict[str, Any], when: datetime) -> dict[str, Any]:
        """Write the split of `plan` (see `plan`); returns {"env", "uris", "counts"}.

        The dataset's source is read as it is now (a source deleted or changed since the dataset
        was created fails the job with a message naming it).
        """
        source: Source = parse_source(plan["source"])
        table = self.sources.read(source)
        parts = assign(table, plan["split"], seed_of(plan["dataset"]))
        iso, flat = stamps(when)
        dest = plan["destination"]
        if dest["kind"] == "bigquery":
            wh = self.sources.warehouse()
            uris = write_table_splits(
                wh, dest["project"], f"dataset_{plan['datasetId']}_tables_{flat}", table, parts
            )
            fmt = "bigquery"
        else:
            directory = f"{dest['prefix']}/dataset-{plan['datasetId']}-tables-{iso}"
            uris = write_csv_splits(self.store, directory, table, parts)
            fmt = "csv"
        env = {"AIP_DATA_FORMAT": fmt}
        env.update({f"AIP_{name.upper()}_DATA_URI": uris[name] for name in SPLITS})
        return {
            "env": env,
            "uris": uris,
            "counts": {name: len(parts[name]) for name in SPLITS},
            "sourceRows": table.num_rows,
        }
