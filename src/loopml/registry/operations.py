"""Long-running operations, stored so clients can poll them (`GET /ui/{name}`, `GET /v1/{name}`).

Every mutating Vertex call that returns an LRO records one here, in the same transaction as the
change itself. loopml finishes its work before answering, so operations are stored `done: true`
with a `response` carrying its `@type` (or an `error` with the gRPC code); Google's clients then
skip polling altogether.
"""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from loopml.errors import LoopmlError, NotFound
from loopml.metadata import Database
from loopml.metadata.tables import OperationRow
from loopml.refs import now, rfc3339

TYPE_PREFIX = "type.googleapis.com/google.cloud.aiplatform.v1."
EMPTY_TYPE = "type.googleapis.com/google.protobuf.Empty"
METADATA_TYPE = TYPE_PREFIX + "GenericOperationMetadata"


def typed(type_name: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """A response body with its `@type` (short names get the aiplatform.v1 prefix)."""
    full = type_name if "/" in type_name else TYPE_PREFIX + type_name
    return {"@type": full, **(body or {})}


class OperationStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(
        self,
        session: Session,
        resource_name: str,
        *,
        response: dict[str, Any] | None = None,
        error: LoopmlError | None = None,
        metadata_type: str = METADATA_TYPE,
    ) -> dict[str, Any]:
        """Store a finished operation under `{resource_name}/operations/{id}`; returns its JSON.

        `metadata_type`: the metadata's `@type` when a client expects a specific one (e.g.
        `CreateDatasetOperationMetadata`; short names get the aiplatform.v1 prefix)."""
        op_id = str(secrets.randbelow(9 * 10**18) + 10**18)
        ts = now()
        stamp = rfc3339(ts)
        row = OperationRow(
            name=f"{resource_name}/operations/{op_id}",
            done=True,
            metadata_json=typed(
                metadata_type, {"genericMetadata": {"createTime": stamp, "updateTime": stamp}}
            ),
            response=response if error is None else None,
            error=error.to_operation_error() if error is not None else None,
            create_time=ts,
        )
        session.add(row)
        session.flush()
        return self.to_json(row)

    def record_now(
        self,
        resource_name: str,
        *,
        response: dict[str, Any] | None = None,
        error: LoopmlError | None = None,
    ) -> dict[str, Any]:
        """`record` in its own transaction."""
        with self.db.session() as session:
            return self.record(session, resource_name, response=response, error=error)

    def get(self, name: str) -> dict[str, Any]:
        with self.db.session() as session:
            row = session.scalars(select(OperationRow).where(OperationRow.name == name)).first()
            if row is None:
                raise NotFound(f"Operation {name} not found.")
            return self.to_json(row)

    @staticmethod
    def to_json(row: OperationRow) -> dict[str, Any]:
        body: dict[str, Any] = {"name": row.name, "done": bool(row.done)}
        if row.metadata_json:
            body["metadata"] = row.metadata_json
        if row.error is not None:
            body["error"] = row.error
        elif row.response is not None:
            body["response"] = row.response
        return body
