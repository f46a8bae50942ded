"""Stored jobs: rows of `training_jobs` and their Vertex JSON (CustomJob, TrainingPipeline)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from loopml.errors import InvalidArgument, NotFound
from loopml.metadata import Database
from loopml.metadata.jobs_tables import TrainingJobRow
from loopml.refs import now, parent_name, rfc3339
from loopml.training.spec import TERMINAL_STATES, pipeline_state

CUSTOM_JOBS = "customJobs"
TRAINING_PIPELINES = "trainingPipelines"


def job_name(row: TrainingJobRow) -> str:
    return f"{parent_name(row.project, row.location)}/{row.collection}/{row.job_id}"


def to_json(row: TrainingJobRow) -> dict[str, Any]:
    """The Vertex resource JSON of a row."""
    request = dict(row.spec.get("request") or {})
    body: dict[str, Any] = {
        "name": job_name(row),
        "displayName": row.display_name,
        "createTime": rfc3339(row.create_time),
        "updateTime": rfc3339(row.update_time),
    }
    if row.start_time:
        body["startTime"] = rfc3339(row.start_time)
    if row.end_time:
        body["endTime"] = rfc3339(row.end_time)
    if row.labels:
        body["labels"] = row.labels
    if row.error:
        body["error"] = row.error
    if row.collection == CUSTOM_JOBS:
        body["jobSpec"] = row.spec.get("jobSpec", {})
        body["state"] = row.state
        if row.outputs.get("webAccessUris"):
            body["webAccessUris"] = row.outputs["webAccessUris"]
        return body
    body["state"] = pipeline_state(row.state)
    body["trainingTaskDefinition"] = request.get("trainingTaskDefinition", "")
    body["trainingTaskInputs"] = request.get("trainingTaskInputs", {})
    metadata: dict[str, Any] = {}
    if row.backing_job:
        metadata["backingCustomJob"] = (
            f"{parent_name(row.project, row.location)}/customJobs/{row.backing_job}"
        )
    body["trainingTaskMetadata"] = metadata
    model = row.outputs.get("modelToUpload") or request.get("modelToUpload")
    if model:
        body["modelToUpload"] = model
    for key in ("modelId", "parentModel", "inputDataConfig"):
        if request.get(key):
            body[key] = request[key]
    return body


def encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode().rstrip("=")


def decode_token(token: str) -> int:
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        if not text.startswith("o:"):
            raise ValueError(text)
        return max(0, int(text[2:]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"Invalid pageToken {token!r}.") from exc


def _filter(text: str) -> Callable[[dict[str, Any]], bool]:
    """A small AIP-160 subset: `field="v"`, `field!="v"`, `labels.k="v"`, joined by AND."""
    clauses = []
    for part in [p.strip() for p in text.replace(" and ", " AND ").split(" AND ") if p.strip()]:
        op = "!=" if "!=" in part else "="
        key, _, value = part.partition(op)
        key, value = key.strip(), value.strip().strip('"').strip("'")
        if not key or key.replace(".", "").replace("_", "").isalnum() is False:
            raise InvalidArgument(f"Unsupported filter clause {part!r}.")
        clauses.append((key, op, value))

    def lookup(body: dict[str, Any], key: str) -> str:
        if key.startswith("labels."):
            return str((body.get("labels") or {}).get(key[7:], ""))
        aliases = {"display_name": "displayName", "create_time": "createTime"}
        return str(body.get(aliases.get(key, key), ""))

    def match(body: dict[str, Any]) -> bool:
        for key, op, value in clauses:
            got = lookup(body, key)
            if key == "state" and value.isdigit():
                from loopml.training.spec import JOB_STATES

                value = JOB_STATES[int(value)] if int(value) < len(JOB_STATES) else value
                got = "JOB_STATE_" + got.split("_STATE_", 1)[-1]
            if (got == value) != (op == "="):
                return False
        return True

    return match


class JobStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get_row(
        self, session: Session, project: str, location: str, collection: str, job_id: str
    ) -> TrainingJobRow:
        row = session.scalar(
            select(TrainingJobRow).where(
                TrainingJobRow.project == project,
                TrainingJobRow.location == location,
                TrainingJobRow.collection == collection,
                TrainingJobRow.job_id == job_id,
            )
        )
        if row is None:
            kind = "CustomJob" if collection == CUSTOM_JOBS else "TrainingPipeline"
            raise NotFound(f"{kind} {parent_name(project, location)}/{collection}/{job_id} does not exist.")
        return row

    def get(self, project: str, location: str, collection: str, job_id: str) -> dict[str, Any]:
        with self.db.session() as s:
            return to_json(self.get_row(s, project, location, collection, job_id))

    def list(
        self,
        project: str,
        location: str,
        collection: str,
        *,
        filter_text: str = "",
        page_size: int = 100,
        page_token: str = "",
    ) -> dict[str, Any]:
        offset = decode_token(page_token) if page_token else 0
        page_size = max(1, min(int(page_size or 100), 1000))
        match = _filter(filter_text) if filter_text else None
        with self.db.session() as s:
            rows = s.scalars(
                select(TrainingJobRow)
                .where(
                    TrainingJobRow.project == project,
                    TrainingJobRow.location == location,
                    TrainingJobRow.collection == collection,
                )
                .order_by(TrainingJobRow.create_time.desc(), TrainingJobRow.pk.desc())
            ).all()
            items = [to_json(r) for r in rows]
        if match:
            items = [b for b in items if match(b)]
        page = items[offset : offset + page_size]
        key = "customJobs" if collection == CUSTOM_JOBS else "trainingPipelines"
        out: dict[str, Any] = {key: page}
        if offset + page_size < len(items):
            out["nextPageToken"] = encode_token(offset + page_size)
        return out

    def update(self, pk: int, **fields: Any) -> TrainingJobRow:
        with self.db.session() as s:
            row = s.get(TrainingJobRow, pk)
            if row is None:
                raise NotFound(f"job row {pk} vanished")
            for key, value in fields.items():
                setattr(row, key, value)
            row.update_time = now()
            return row

    def finish(self, pk: int, state: str, error: dict[str, Any] | None = None) -> TrainingJobRow | None:
        """Move a job to a terminal state unless it is already in one; returns the row if moved."""
        with self.db.session() as s:
            row = s.get(TrainingJobRow, pk)
            if row is None or row.state in TERMINAL_STATES:
                return None
            row.state = state
            row.error = error
            row.end_time = row.update_time = now()
            row.pid = None
            return row
