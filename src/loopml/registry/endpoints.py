"""Endpoints: stored state of endpoints, deployed models and traffic splits.

Every change is one metadata transaction, committed first and then pushed to the serving
backend (`platform.services["serving"]`, looked up lazily). If the backend fails to deploy, the
stored deployment is rolled back so the two stores agree. At server start `replay()` pushes
every stored endpoint and deployment into the backend.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from loopml.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from loopml.metadata.tables import DeployedModelRow, EndpointRow, ModelVersionRow
from loopml.refs import (
    ENDPOINT_ID_RE,
    check,
    check_parent,
    new_deployed_model_id,
    new_endpoint_id,
    now,
)
from loopml.registry import deployments as dep
from loopml.registry import store
from loopml.registry.endpoint_updates import EndpointUpdates
from loopml.registry.frameworks import supported_deployment_types
from loopml.registry.listing import paginate
from loopml.registry.operations import EMPTY_TYPE, typed
from loopml.registry.traffic import parse_split, split_for_deploy, split_for_undeploy
from loopml.registry.validation import labels as check_labels
from loopml.registry.validation import opt_str

log = logging.getLogger(__name__)

ENDPOINT_FIELDS = {"displayName", "description", "labels", "predictRequestResponseLoggingConfig"}
ENDPOINT_OUTPUT_ONLY = {
    "name",
    "createTime",
    "updateTime",
    "etag",
    "deployedModels",
    "trafficSplit",
    "modelDeploymentMonitoringJob",
    "dedicatedEndpointDns",
}


class EndpointService(EndpointUpdates):
    """Stored state of endpoints and deployed models (`platform.services["endpoints"]`)."""

    # -- create / read -----------------------------------------------------------------------
    def create_endpoint(
        self, project: str, location: str, body: Any, endpoint_id: str | None = None
    ) -> dict[str, Any]:
        """Create an endpoint; returns the finished Operation (response: the Endpoint)."""
        check_parent(project, location)
        if not isinstance(body, dict):
            raise InvalidArgument("Request body must be an Endpoint JSON object.")
        display_name = opt_str(body, "displayName", "endpoint")
        if not display_name.strip():
            raise InvalidArgument("endpoint.displayName is required.")
        if body.get("deployedModels"):
            raise InvalidArgument(
                "endpoint.deployedModels is output only: create the endpoint, then deployModel."
            )
        logging_config = self._logging_config(body.get("predictRequestResponseLoggingConfig"))
        with self.db.session() as session:
            if endpoint_id:
                check(ENDPOINT_ID_RE, endpoint_id, "endpointId")
                if self._find(session, project, location, endpoint_id) is not None:
                    raise AlreadyExists(
                        f"Endpoint projects/{project}/locations/{location}/endpoints/{endpoint_id} already exists."
                    )
            else:
                endpoint_id = new_endpoint_id()
                while self._find(session, project, location, endpoint_id) is not None:
                    endpoint_id = new_endpoint_id()
            ts = now()
            row = EndpointRow(
                project=project,
                location=location,
                endpoint_id=endpoint_id,
                display_name=display_name,
                description=opt_str(body, "description", "endpoint"),
                labels=check_labels(body.get("labels"), "endpoint.labels"),
                traffic_split={},
                logging_config=logging_config,
                extra={
                    k: v
                    for k, v in body.items()
                    if k not in ENDPOINT_FIELDS and k not in ENDPOINT_OUTPUT_ONLY
                },
                etag=secrets.token_hex(8),
                create_time=ts,
                update_time=ts,
            )
            session.add(row)
            session.flush()
            spec = dep.endpoint_spec(row)
            result = self._json(row, with_status=False)
            op = self.operations.record(session, result["name"], response=typed("Endpoint", result))
        self._push(lambda b: b.set_endpoint(spec))
        return op

    def get_endpoint(self, project: str, location: str, endpoint_id: str) -> dict[str, Any]:
        with self.db.session() as session:
            return self._json(self._endpoint_row(session, project, location, endpoint_id))

    def list_endpoints(
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
        with self.db.session() as session:
            rows = session.scalars(
                select(EndpointRow)
                .where(EndpointRow.project == project, EndpointRow.location == location)
                .options(
                    selectinload(EndpointRow.deployed_models)
                    .selectinload(DeployedModelRow.model_version)
                    .selectinload(ModelVersionRow.model)
                )
                .order_by(EndpointRow.pk)
            ).all()
            items = [self._json(r) for r in rows]
        page, token = paginate(
            items,
            filter_text=filter,
            order_by=order_by,
            page_size=page_size,
            page_token=page_token,
            id_key="endpoint_id",
        )
        out: dict[str, Any] = {"endpoints": page}
        if token:
            out["nextPageToken"] = token
        return out

    # -- deploy ------------------------------------------------------------------------------
    def deploy_model(self, project: str, location: str, endpoint_id: str, body: Any) -> dict[str, Any]:
        """`:deployModel`; returns the Operation (DeployModelResponse, or the backend's error)."""
        if not isinstance(body, dict) or not isinstance(body.get("deployedModel"), dict):
            raise InvalidArgument('Request body must be {"deployedModel": {...}, "trafficSplit"?: {...}}.')
        dm_body: dict[str, Any] = body["deployedModel"]
        requested = parse_split(body.get("trafficSplit"))
        unknown = set(dm_body) - dep.PASS_THROUGH - dep.OUTPUT_ONLY - {
            "id", "model", "displayName", "dedicatedResources", "automaticResources",
        }  # fmt: skip
        if unknown:
            raise InvalidArgument(f"deployedModel: unknown field {sorted(unknown)[0]!r}.")
        model_ref = dm_body.get("model")
        if not isinstance(model_ref, str) or not model_ref:
            raise InvalidArgument(
                "deployedModel.model is required (a model resource name, optionally @version)."
            )
        model_id, version = store.split_ref(model_ref)
        if "/" in model_ref and model_ref.split("@")[0] != store.model_name(project, location, model_id):
            raise InvalidArgument(
                f"deployedModel.model {model_ref!r} is not a model in projects/{project}/locations/{location}."
            )
        dm_id = dm_body.get("id")
        if dm_id is not None and (not isinstance(dm_id, str) or not dep.DEPLOYED_MODEL_ID_RE.match(dm_id)):
            raise InvalidArgument("deployedModel.id must be a string of 1-10 digits.")
        display = dm_body.get("displayName")
        if display is not None and not isinstance(display, str):
            raise InvalidArgument("deployedModel.displayName must be a string.")
        batch = dep.batching(dm_body.get("systemLabels"))
        backend = self._require_serving()
        name = f"projects/{project}/locations/{location}/endpoints/{endpoint_id}"
        with self._lock(name):
            with self.db.session() as session:
                row = self._endpoint_row(session, project, location, endpoint_id)
                model = store.get_model_row(session, project, location, model_id)
                version_row = store.resolve_version_row(session, model, version)
                if batch and version_row.framework == "custom-container":
                    raise InvalidArgument(
                        "deployedModel.systemLabels: loopml-* batching labels apply to built-in model "
                        "servers; a custom container gets one HTTP request per prediction request."
                    )
                res = dep.resources(dm_body, supported_deployment_types(version_row.framework))
                if dm_id is None:
                    dm_id = new_deployed_model_id()
                    while session.scalars(
                        select(DeployedModelRow).where(DeployedModelRow.deployed_model_id == dm_id)
                    ).first():
                        dm_id = new_deployed_model_id()
                elif session.scalars(
                    select(DeployedModelRow).where(DeployedModelRow.deployed_model_id == dm_id)
                ).first():
                    raise AlreadyExists(f"Deployed model id {dm_id} is already in use.")
                existing = [d.deployed_model_id for d in row.deployed_models]
                old_split = dict(row.traffic_split or {})
                new_split = split_for_deploy(old_split, requested, dm_id, existing)
                dm = DeployedModelRow(
                    deployed_model_id=dm_id,
                    endpoint_pk=row.pk,
                    model_version_pk=version_row.pk,
                    display_name=display or version_row.display_name,
                    resources=res,
                    extra={k: v for k, v in dm_body.items() if k in dep.PASS_THROUGH},
                    create_time=now(),
                )
                dm.model_version = version_row
                row.deployed_models.append(dm)
                row.traffic_split = new_split
                old_state = (row.etag, row.update_time)
                self._touch(row)
                session.flush()
                spec = dep.deployed_model_spec(row, dm)
                ep_spec = dep.endpoint_spec(row)
            try:
                backend.deploy(spec)
            except Exception as exc:
                log.warning("deploying %s on %s failed: %s", dm_id, name, exc)
                self._rollback_deploy(project, location, endpoint_id, dm_id, old_split, old_state)
                return self._failed(name, exc)
            try:
                backend.set_endpoint(ep_spec)
            except Exception as exc:
                log.warning("routing update for %s failed after deploy: %s", name, exc)
                self._safe(lambda: backend.undeploy(dm_id))
                self._rollback_deploy(project, location, endpoint_id, dm_id, old_split, old_state)
                return self._failed(name, exc)
            with self.db.session() as session:
                row = self._endpoint_row(session, project, location, endpoint_id)
                dm = next(d for d in row.deployed_models if d.deployed_model_id == dm_id)
                dm_json = dep.deployed_model_json(dm, self._status(dm_id))
                return self.operations.record(
                    session, name, response=typed("DeployModelResponse", {"deployedModel": dm_json})
                )

    def _rollback_deploy(
        self,
        project: str,
        location: str,
        endpoint_id: str,
        dm_id: str,
        split: dict[str, int],
        state: tuple[str, datetime],
    ) -> None:
        with self.db.session() as session:
            row = self._endpoint_row(session, project, location, endpoint_id)
            for dm in list(row.deployed_models):
                if dm.deployed_model_id == dm_id:
                    row.deployed_models.remove(dm)
                    session.delete(dm)
            row.traffic_split = split
            row.etag, row.update_time = state
            session.flush()

    # -- undeploy / delete -------------------------------------------------------------------
    def undeploy_model(self, project: str, location: str, endpoint_id: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise InvalidArgument('Request body must be {"deployedModelId": "...", "trafficSplit"?: {...}}.')
        dm_id = body.get("deployedModelId")
        if not isinstance(dm_id, str) or not dep.DEPLOYED_MODEL_ID_RE.match(dm_id):
            raise InvalidArgument("deployedModelId is required: a string of 1-10 digits.")
        requested = parse_split(body.get("trafficSplit"))
        name = f"projects/{project}/locations/{location}/endpoints/{endpoint_id}"
        with self._lock(name):
            with self.db.session() as session:
                row = self._endpoint_row(session, project, location, endpoint_id)
                dm = next((d for d in row.deployed_models if d.deployed_model_id == dm_id), None)
                if dm is None:
                    raise NotFound(f"Deployed model {dm_id} not found on endpoint {name}.")
                remaining = [d.deployed_model_id for d in row.deployed_models if d is not dm]
                row.traffic_split = split_for_undeploy(
                    dict(row.traffic_split or {}), requested, dm_id, remaining
                )
                row.deployed_models.remove(dm)
                session.delete(dm)
                self._touch(row)
                session.flush()
                ep_spec = dep.endpoint_spec(row)
                op = self.operations.record(session, name, response=typed("UndeployModelResponse", {}))
            self._push(lambda b: b.set_endpoint(ep_spec))
            self._push(lambda b: b.undeploy(dm_id))
        return op

    def delete_endpoint(self, project: str, location: str, endpoint_id: str) -> dict[str, Any]:
        name = f"projects/{project}/locations/{location}/endpoints/{endpoint_id}"
        with self._lock(name):
            with self.db.session() as session:
                row = self._endpoint_row(session, project, location, endpoint_id)
                if row.deployed_models:
                    ids = ", ".join(d.deployed_model_id for d in row.deployed_models)
                    raise FailedPrecondition(
                        f"Endpoint {name} has deployed models ({ids}): undeploy them first."
                    )
                session.delete(row)
                session.flush()
                op = self.operations.record(session, name, response={"@type": EMPTY_TYPE})
            self._push(lambda b: b.remove_endpoint(name))
        return op

    # -- replay ------------------------------------------------------------------------------
    async def replay(self, stopping: threading.Event | None = None) -> None:
        """Push every stored endpoint and deployment into the serving backend (server start).

        Every endpoint is known (with no deployments) before the first deployment starts, so a
        request during replay gets a clear answer; `stopping` ends the replay between deployments.
        """
        if self.serving() is None:
            return
        await asyncio.to_thread(self._replay_sync, stopping or threading.Event())

    def _replay_sync(self, stopping: threading.Event | None = None) -> None:
        stopping = stopping or threading.Event()
        backend = self.serving()
        if backend is None:
            return
        # The API is already serving: each endpoint is replayed under its own lock from a fresh
        # read, so a deploy or undeploy that races the replay is neither lost nor doubled.
        with self.db.session() as session:
            keys = session.execute(
                select(
                    EndpointRow.pk, EndpointRow.project, EndpointRow.location, EndpointRow.endpoint_id
                ).order_by(EndpointRow.pk)
            ).all()
        names = {pk: f"projects/{p}/locations/{loc}/endpoints/{e}" for pk, p, loc, e in keys}
        for pk, name in names.items():
            with self._lock(name):
                plan = self._replay_plan(pk)
                if plan is not None:
                    self._safe(lambda e=plan[0]: backend.set_endpoint(e))
        for pk, name in names.items():
            if stopping.is_set():
                log.info("server stopping: replay of stored deployments ended early")
                return
            with self._lock(name):
                plan = self._replay_plan(pk)
                if plan is None:
                    continue
                _, specs, full = plan
                for spec in specs:
                    log.info("replaying deployment %s on %s", spec.deployed_model_id, spec.endpoint_name)
                    self._safe(lambda s=spec: backend.deploy(s))
                self._safe(lambda f=full: backend.set_endpoint(f))

    def _replay_plan(self, pk: int) -> tuple[Any, list[Any], Any] | None:
        """(endpoint with no deployments, its deployment specs, the full endpoint), read afresh."""
        with self.db.session() as session:
            row = session.scalars(
                select(EndpointRow)
                .where(EndpointRow.pk == pk)
                .options(
                    selectinload(EndpointRow.deployed_models)
                    .selectinload(DeployedModelRow.model_version)
                    .selectinload(ModelVersionRow.model)
                )
            ).first()
            if row is None:
                return None
            specs = [dep.deployed_model_spec(row, d) for d in row.deployed_models]
            return dep.endpoint_spec(row, {}), specs, dep.endpoint_spec(row)
