"""Endpoint changes after creation: PATCH (traffic split, names, labels, logging) and mutateDeployedModel."""

from __future__ import annotations

import copy
import logging
from typing import Any

from loopml.errors import InvalidArgument, LoopmlError, NotFound
from loopml.registry import deployments as dep
from loopml.registry.endpoint_base import EndpointBase
from loopml.registry.operations import typed
from loopml.registry.traffic import check_split, parse_split
from loopml.registry.validation import labels as check_labels
from loopml.registry.validation import opt_str

log = logging.getLogger(__name__)

_PATCH_PATHS = {
    "traffic_split": "trafficSplit",
    "display_name": "displayName",
    "description": "description",
    "labels": "labels",
    "predict_request_response_logging_config": "predictRequestResponseLoggingConfig",
}
_PATCH_FIELDS = set(_PATCH_PATHS.values())
_MUTABLE = {
    "dedicated_resources.min_replica_count": ("dedicatedResources", "minReplicaCount"),
    "dedicated_resources.max_replica_count": ("dedicatedResources", "maxReplicaCount"),
    "dedicated_resources.required_replica_count": ("dedicatedResources", "requiredReplicaCount"),
    "dedicated_resources.autoscaling_metric_specs": ("dedicatedResources", "autoscalingMetricSpecs"),
    "automatic_resources.min_replica_count": ("automaticResources", "minReplicaCount"),
    "automatic_resources.max_replica_count": ("automaticResources", "maxReplicaCount"),
    "disable_container_logging": ("", "disableContainerLogging"),
    "enable_access_logging": ("", "enableAccessLogging"),
}


def _snake(path: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in path.strip())


class EndpointUpdates(EndpointBase):
    """PATCH and mutateDeployedModel."""

    def update_endpoint(
        self, project: str, location: str, endpoint_id: str, body: Any, update_mask: str | None = None
    ) -> dict[str, Any]:
        """PATCH endpoints/{e}; returns the Endpoint."""
        if not isinstance(body, dict):
            raise InvalidArgument("Request body must be an Endpoint JSON object.")
        if update_mask:
            fields = []
            for raw in update_mask.split(","):
                if not raw.strip():
                    continue
                field = _PATCH_PATHS.get(_snake(raw))
                if field is None:
                    raise InvalidArgument(
                        f"updateMask: field {raw.strip()!r} cannot be updated; updatable: "
                        + ", ".join(sorted(_PATCH_PATHS))
                        + "."
                    )
                fields.append(field)
        else:
            fields = [k for k in body if k in _PATCH_FIELDS]
            bad = [
                k
                for k in body
                if k not in _PATCH_FIELDS
                and k not in ("name", "etag", "createTime", "updateTime", "deployedModels")
            ]
            if bad:
                raise InvalidArgument(f"Field {bad[0]!r} cannot be updated on an endpoint.")
        name = f"projects/{project}/locations/{location}/endpoints/{endpoint_id}"
        with self._lock(name):
            with self.db.session() as session:
                row = self._endpoint_row(session, project, location, endpoint_id)
                etag = body.get("etag")
                if etag and etag != row.etag:
                    from loopml.errors import Aborted

                    raise Aborted(
                        f"Endpoint {name} changed since it was read (etag mismatch): read it again."
                    )
                for field in fields:
                    if field == "trafficSplit":
                        split = parse_split(body.get("trafficSplit"))
                        check_split(split, [d.deployed_model_id for d in row.deployed_models])
                        row.traffic_split = split
                    elif field == "displayName":
                        value = opt_str(body, "displayName", "endpoint")
                        if not value.strip():
                            raise InvalidArgument("endpoint.displayName must not be empty.")
                        row.display_name = value
                    elif field == "description":
                        row.description = opt_str(body, "description", "endpoint")
                    elif field == "labels":
                        row.labels = check_labels(body.get("labels"), "endpoint.labels")
                    elif field == "predictRequestResponseLoggingConfig":
                        row.logging_config = self._logging_config(body.get(field))
                self._touch(row)
                session.flush()
                ep_spec = dep.endpoint_spec(row)
                result = self._json(row)
            self._push(lambda b: b.set_endpoint(ep_spec))
        return result

    def mutate_deployed_model(
        self, project: str, location: str, endpoint_id: str, body: Any, update_mask: str | None = None
    ) -> dict[str, Any]:
        """`:mutateDeployedModel`: replica counts, autoscaling specs and logging flags only."""
        if not isinstance(body, dict) or not isinstance(body.get("deployedModel"), dict):
            raise InvalidArgument('Request body must be {"deployedModel": {"id", ...}, "updateMask": "..."}.')
        change: dict[str, Any] = body["deployedModel"]
        dm_id = change.get("id")
        if not isinstance(dm_id, str) or not dep.DEPLOYED_MODEL_ID_RE.match(dm_id):
            raise InvalidArgument("deployedModel.id is required: a string of 1-10 digits.")
        mask = update_mask or body.get("updateMask")
        if isinstance(mask, dict):
            mask = ",".join(mask.get("paths", []))
        if mask is not None and not isinstance(mask, str):
            raise InvalidArgument("updateMask must be a comma-separated string of field paths.")
        paths = [_snake(p) for p in mask.split(",") if p.strip()] if mask else self._paths_from(change)
        for p in paths:
            if p not in _MUTABLE:
                raise InvalidArgument(
                    f"updateMask: {p!r} cannot be changed by mutateDeployedModel; allowed: "
                    + ", ".join(sorted(_MUTABLE))
                    + "."
                )
        name = f"projects/{project}/locations/{location}/endpoints/{endpoint_id}"
        with self._lock(name):
            with self.db.session() as session:
                row = self._endpoint_row(session, project, location, endpoint_id)
                dm = next((d for d in row.deployed_models if d.deployed_model_id == dm_id), None)
                if dm is None:
                    raise NotFound(f"Deployed model {dm_id} not found on endpoint {name}.")
                old_resources, old_extra = copy.deepcopy(dm.resources), copy.deepcopy(dm.extra)
                old_state = (row.etag, row.update_time)
                res = copy.deepcopy(dm.resources)
                extra = copy.deepcopy(dm.extra or {})
                for p in paths:
                    group, key = _MUTABLE[p]
                    if group == "":
                        value = change.get(key)
                        if value is not None and not isinstance(value, bool):
                            raise InvalidArgument(f"deployedModel.{key} must be a boolean.")
                        extra[key] = bool(value)
                        continue
                    if group not in res:
                        raise InvalidArgument(f"Deployed model {dm_id} does not use {group}.")
                    src = change.get(group) or {}
                    if not isinstance(src, dict):
                        raise InvalidArgument(f"deployedModel.{group} must be an object.")
                    if key in src:
                        res[group][key] = src[key]
                    else:
                        res[group].pop(key, None)
                new_res = self._revalidate(res)
                dm.resources = new_res
                dm.extra = extra
                self._touch(row)
                session.flush()
                spec = dep.deployed_model_spec(row, dm)
            backend = self.serving()
            if backend is not None:
                try:
                    backend.update(spec)
                except Exception as exc:
                    log.warning("mutating %s failed: %s", dm_id, exc)
                    with self.db.session() as session:
                        row = self._endpoint_row(session, project, location, endpoint_id)
                        row.etag, row.update_time = old_state
                        for d in row.deployed_models:
                            if d.deployed_model_id == dm_id:
                                d.resources, d.extra = old_resources, old_extra
                    return self._failed(name, exc)
            with self.db.session() as session:
                row = self._endpoint_row(session, project, location, endpoint_id)
                dm = next(d for d in row.deployed_models if d.deployed_model_id == dm_id)
                dm_json = next(x for x in self._json(row)["deployedModels"] if x["id"] == dm_id)
                return self.operations.record(
                    session, name, response=typed("MutateDeployedModelResponse", {"deployedModel": dm_json})
                )

    @staticmethod
    def _paths_from(change: dict[str, Any]) -> list[str]:
        paths = []
        for group in ("dedicatedResources", "automaticResources"):
            sub = change.get(group)
            if isinstance(sub, dict):
                for key in sub:
                    if key == "machineSpec":
                        raise InvalidArgument("deployedModel.dedicatedResources.machineSpec is immutable.")
                    paths.append(_snake(f"{group}.{key}"))
        for key in change:
            if key not in ("id", "dedicatedResources", "automaticResources"):
                paths.append(_snake(key))
        return paths

    @staticmethod
    def _revalidate(res: dict[str, Any]) -> dict[str, Any]:
        supported = ["DEDICATED_RESOURCES", "AUTOMATIC_RESOURCES"]
        try:
            return dep.resources(res, supported)
        except LoopmlError as exc:
            raise InvalidArgument(exc.message.replace("deployedModel.", "deployedModel.", 1)) from exc
