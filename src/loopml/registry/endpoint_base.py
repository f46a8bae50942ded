"""Plumbing shared by the endpoint service's parts: row lookup, JSON, the serving backend."""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import MutableMapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from loopml.errors import InvalidArgument, LoopmlError, NotFound, Unavailable
from loopml.metadata import Database
from loopml.metadata.tables import DeployedModelRow, EndpointRow, ModelVersionRow
from loopml.refs import ENDPOINT_ID_RE, check, check_parent, now, rfc3339
from loopml.registry import deployments as dep
from loopml.registry.operations import OperationStore
from loopml.registry.service import RegistryService

log = logging.getLogger(__name__)


class EndpointBase:
    def __init__(
        self,
        db: Database,
        registry: RegistryService,
        operations: OperationStore,
        services: MutableMapping[str, Any],
    ) -> None:
        self.db = db
        self.registry = registry
        self.operations = operations
        self._services = services
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    # -- plumbing ----------------------------------------------------------------------------
    def serving(self) -> Any | None:
        return self._services.get("serving")

    def _require_serving(self) -> Any:
        backend = self.serving()
        if backend is None:
            raise Unavailable("serving runtime not configured: this server cannot deploy models.")
        return backend

    def _lock(self, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(name, threading.Lock())

    def _endpoint_row(self, session: Session, project: str, location: str, endpoint_id: str) -> EndpointRow:
        check_parent(project, location)
        check(ENDPOINT_ID_RE, endpoint_id, "endpoint id")
        row = session.scalars(
            select(EndpointRow)
            .where(
                EndpointRow.project == project,
                EndpointRow.location == location,
                EndpointRow.endpoint_id == endpoint_id,
            )
            .options(
                selectinload(EndpointRow.deployed_models)
                .selectinload(DeployedModelRow.model_version)
                .selectinload(ModelVersionRow.model)
            )
        ).first()
        if row is None:
            raise NotFound(
                f"Endpoint projects/{project}/locations/{location}/endpoints/{endpoint_id} not found."
            )
        return row

    def _status(self, dm_id: str) -> dict[str, Any]:
        backend = self.serving()
        count = 0
        message = ""
        if backend is not None:
            try:
                st = backend.status(dm_id) or {}
                count = int(st.get("availableReplicaCount", 0))
                message = str(st.get("message", ""))
            except Exception as exc:  # status is informative only
                log.debug("status of %s failed: %s", dm_id, exc)
        out: dict[str, Any] = {"availableReplicaCount": count, "lastUpdateTime": rfc3339(now())}
        if message:
            out["message"] = message
        return out

    def _json(self, row: EndpointRow, *, with_status: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = dict(row.extra or {})
        body.update(
            {
                "name": dep.endpoint_name(row),
                "displayName": row.display_name,
                "description": row.description or "",
                "labels": dict(row.labels or {}),
                "createTime": rfc3339(row.create_time),
                "updateTime": rfc3339(row.update_time),
                "etag": row.etag,
                "deployedModels": [
                    dep.deployed_model_json(
                        dm,
                        self._status(dm.deployed_model_id) if with_status else {"availableReplicaCount": 0},
                    )
                    for dm in row.deployed_models
                ],
                "trafficSplit": {k: int(v) for k, v in (row.traffic_split or {}).items()},
            }
        )
        if row.logging_config:
            body["predictRequestResponseLoggingConfig"] = dict(row.logging_config)
        return body

    @staticmethod
    def _touch(row: EndpointRow) -> None:
        row.update_time = now()
        row.etag = secrets.token_hex(8)

    @staticmethod
    def _find(session: Session, project: str, location: str, endpoint_id: str) -> EndpointRow | None:
        return session.scalars(
            select(EndpointRow).where(
                EndpointRow.project == project,
                EndpointRow.location == location,
                EndpointRow.endpoint_id == endpoint_id,
            )
        ).first()

    @staticmethod
    def _logging_config(value: Any) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise InvalidArgument("predictRequestResponseLoggingConfig must be an object.")
        if "enabled" in value and not isinstance(value["enabled"], bool):
            raise InvalidArgument("predictRequestResponseLoggingConfig.enabled must be a boolean.")
        rate = value.get("samplingRate")
        if rate is not None and (
            isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= 1
        ):
            raise InvalidArgument("predictRequestResponseLoggingConfig.samplingRate must be in (0, 1].")
        dest = value.get("bigqueryDestination")
        if dest is not None and (
            not isinstance(dest, dict) or not isinstance(dest.get("outputUri", ""), str)
        ):
            raise InvalidArgument(
                "predictRequestResponseLoggingConfig.bigqueryDestination.outputUri must be a string."
            )
        return dict(value)

    def _failed(self, name: str, exc: Exception) -> dict[str, Any]:
        error = exc if isinstance(exc, LoopmlError) else LoopmlError(f"{type(exc).__name__}: {exc}")
        return self.operations.record_now(name, error=error)

    @staticmethod
    def _safe(fn: Any) -> None:
        try:
            fn()
        except Exception as exc:
            log.warning("serving backend call failed: %s", exc)

    def _push(self, fn: Any) -> None:
        """Push a committed change to the serving backend, if there is one (errors are logged)."""
        backend = self.serving()
        if backend is not None:
            self._safe(lambda: fn(backend))
