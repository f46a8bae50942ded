"""`loopml.Client`: models, endpoints and predictions over the REST API."""

from __future__ import annotations

from typing import Any

import httpx

from loopml.client.http import Transport
from loopml.registry.traffic import deploy_split, undeploy_split

DEFAULT_PROJECT = "local"
DEFAULT_LOCATION = "us-central1"


class Client:
    """A client for one loopml server. Keeps one keep-alive HTTP connection pool; close() it when done.

    `url` defaults to `Settings.url` (`LOOPML_URL`, default http://127.0.0.1:8080). Errors are the
    server's, rebuilt as `loopml.errors` classes; an unreachable server raises `ServerUnreachable`.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        project: str = DEFAULT_PROJECT,
        location: str = DEFAULT_LOCATION,
        timeout: float = 300.0,
    ) -> None:
        if url is None:
            from loopml.config import Settings

            url = Settings.from_env().url
        self.url = url.rstrip("/")
        self.project = project
        self.location = location
        self.transport = Transport(self.url, timeout=timeout)

    # -- plumbing ----------------------------------------------------------------------------
    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.transport.close()

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.location}"

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A raw request to any route (`path` starts with `/`); errors raised as loopml errors."""
        return self.transport.request(method, path, **kwargs)

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.transport.json(method, path, **kwargs)

    def _model_path(self, ref: str) -> str:
        return ref if ref.startswith("projects/") else f"{self.parent}/models/{ref}"

    def _endpoint_path(self, endpoint: str) -> str:
        return endpoint if endpoint.startswith("projects/") else f"{self.parent}/endpoints/{endpoint}"

    def _pages(self, path: str, key: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page = self.json("GET", path, params={**params, "pageToken": token})
            items.extend(page.get(key, []))
            token = page.get("nextPageToken")
            if not token:
                return items

    # -- models ------------------------------------------------------------------------------
    def upload_model(
        self,
        display_name: str,
        artifact_uri: str | None = None,
        *,
        image_uri: str | None = None,
        model_id: str | None = None,
        parent_model: str | None = None,
        labels: dict[str, str] | None = None,
        description: str | None = None,
        version_aliases: list[str] | None = None,
        version_description: str | None = None,
        container_spec: dict[str, Any] | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Upload a model (or a version of `parent_model`); returns the new version's Model JSON."""
        model: dict[str, Any] = {"displayName": display_name, **fields}
        spec = dict(container_spec or {})
        if image_uri:
            spec["imageUri"] = image_uri
        if spec:
            model["containerSpec"] = spec
        for key, value in (
            ("artifactUri", artifact_uri),
            ("labels", labels),
            ("description", description),
            ("versionAliases", version_aliases),
            ("versionDescription", version_description),
        ):
            if value is not None:
                model[key] = value
        body: dict[str, Any] = {"model": model}
        if model_id:
            body["modelId"] = model_id
        if parent_model:
            body["parentModel"] = self._model_path(parent_model)
        result = self.transport.operation("POST", f"/v1/{self.parent}/models:upload", json=body)
        return self.get_model(f"{result['model']}@{result['modelVersionId']}")

    def get_model(self, ref: str) -> dict[str, Any]:
        """A model version: "m" (the default version), "m@3" or "m@alias"."""
        result: dict[str, Any] = self.json("GET", f"/v1/{self._model_path(ref)}")
        return result

    def list_models(self, filter: str | None = None, order_by: str | None = None) -> list[dict[str, Any]]:
        return self._pages(f"/v1/{self.parent}/models", "models", {"filter": filter, "orderBy": order_by})

    def list_versions(self, model: str) -> list[dict[str, Any]]:
        return self._pages(f"/v1/{self._model_path(model)}:listVersions", "models", {})

    def merge_aliases(self, ref: str, aliases: list[str]) -> dict[str, Any]:
        """Add aliases to a version (`"-alias"` removes one); returns the version."""
        result: dict[str, Any] = self.json(
            "POST", f"/v1/{self._model_path(ref)}:mergeVersionAliases", json={"versionAliases": aliases}
        )
        return result

    def update_model(self, ref: str, **fields: Any) -> dict[str, Any]:
        """PATCH displayName, description, labels or versionDescription."""
        result: dict[str, Any] = self.json("PATCH", f"/v1/{self._model_path(ref)}", json=fields)
        return result

    def delete_model(self, ref: str) -> None:
        """Delete a model, or one version when `ref` is "m@version"."""
        if "@" in ref.rsplit("/", 1)[-1]:
            self.transport.operation("DELETE", f"/v1/{self._model_path(ref)}:deleteVersion")
        else:
            self.transport.operation("DELETE", f"/v1/{self._model_path(ref)}")

    # -- endpoints ---------------------------------------------------------------------------
    def create_endpoint(
        self,
        display_name: str,
        *,
        endpoint_id: str | None = None,
        description: str | None = None,
        labels: dict[str, str] | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"displayName": display_name, **fields}
        if description is not None:
            body["description"] = description
        if labels is not None:
            body["labels"] = labels
        return self.transport.operation(
            "POST", f"/v1/{self.parent}/endpoints", json=body, params={"endpointId": endpoint_id}
        )

    def get_endpoint(self, endpoint: str) -> dict[str, Any]:
        result: dict[str, Any] = self.json("GET", f"/v1/{self._endpoint_path(endpoint)}")
        return result

    def list_endpoints(self, filter: str | None = None, order_by: str | None = None) -> list[dict[str, Any]]:
        return self._pages(
            f"/v1/{self.parent}/endpoints", "endpoints", {"filter": filter, "orderBy": order_by}
        )

    def list_datasets(self, filter: str | None = None, order_by: str | None = None) -> list[dict[str, Any]]:
        """Managed datasets (every page), newest first unless `order_by` says otherwise."""
        return self._pages(f"/v1/{self.parent}/datasets", "datasets", {"filter": filter, "orderBy": order_by})

    def deploy(
        self,
        endpoint: str,
        model: str,
        *,
        min_replicas: int = 1,
        max_replicas: int | None = None,
        traffic: int = 100,
        traffic_split: dict[str, int] | None = None,
        machine_type: str = "n1-standard-2",
        display_name: str | None = None,
        autoscaling_metric_specs: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Deploy a model version; `traffic` percent go to it (the SDK's arithmetic for the rest).

        Returns the DeployedModel (its `id` is the deployed model id).
        """
        if traffic_split is None:
            current = self.get_endpoint(endpoint).get("trafficSplit") or {}
            traffic_split = deploy_split({k: int(v) for k, v in current.items()}, traffic)
        resources: dict[str, Any] = {
            "machineSpec": {"machineType": machine_type},
            "minReplicaCount": min_replicas,
            "maxReplicaCount": max_replicas if max_replicas is not None else min_replicas,
        }
        if autoscaling_metric_specs:
            resources["autoscalingMetricSpecs"] = autoscaling_metric_specs
        deployed: dict[str, Any] = {"model": self._model_path(model), "dedicatedResources": resources}
        if display_name:
            deployed["displayName"] = display_name
        result = self.transport.operation(
            "POST",
            f"/v1/{self._endpoint_path(endpoint)}:deployModel",
            json={"deployedModel": deployed, "trafficSplit": traffic_split},
        )
        dm: dict[str, Any] = result.get("deployedModel", {})
        return dm

    def undeploy(
        self, endpoint: str, deployed_model_id: str, *, traffic_split: dict[str, int] | None = None
    ) -> None:
        """Undeploy; without a split, its traffic is spread over the others like the SDK does."""
        if traffic_split is None:
            current = self.get_endpoint(endpoint).get("trafficSplit") or {}
            traffic_split = undeploy_split({k: int(v) for k, v in current.items()}, deployed_model_id)
        body: dict[str, Any] = {"deployedModelId": deployed_model_id}
        if traffic_split:
            body["trafficSplit"] = traffic_split
        self.transport.operation("POST", f"/v1/{self._endpoint_path(endpoint)}:undeployModel", json=body)

    def set_traffic(self, endpoint: str, split: dict[str, int]) -> dict[str, Any]:
        result: dict[str, Any] = self.json(
            "PATCH",
            f"/v1/{self._endpoint_path(endpoint)}",
            json={"trafficSplit": split},
            params={"updateMask": "traffic_split"},
        )
        return result

    def mutate_deployed_model(
        self,
        endpoint: str,
        deployed_model_id: str,
        *,
        min_replicas: int | None = None,
        max_replicas: int | None = None,
        autoscaling_metric_specs: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        resources: dict[str, Any] = {}
        paths = []
        for key, path, value in (
            ("minReplicaCount", "dedicated_resources.min_replica_count", min_replicas),
            ("maxReplicaCount", "dedicated_resources.max_replica_count", max_replicas),
            (
                "autoscalingMetricSpecs",
                "dedicated_resources.autoscaling_metric_specs",
                autoscaling_metric_specs,
            ),
        ):
            if value is not None:
                resources[key] = value
                paths.append(path)
        body = {
            "deployedModel": {"id": deployed_model_id, "dedicatedResources": resources},
            "updateMask": ",".join(paths),
        }
        result = self.transport.operation(
            "POST", f"/v1/{self._endpoint_path(endpoint)}:mutateDeployedModel", json=body
        )
        dm: dict[str, Any] = result.get("deployedModel", {})
        return dm

    def delete_endpoint(self, endpoint: str, *, force: bool = False) -> None:
        """Delete an endpoint; `force` undeploys every model first (like the SDK)."""
        if force:
            current = self.get_endpoint(endpoint)
            ids = [dm["id"] for dm in current.get("deployedModels", [])]
            split = {k: int(v) for k, v in (current.get("trafficSplit") or {}).items()}
            # Models with the least traffic go first; the SDK's arithmetic spreads their share.
            for dm_id in sorted(ids, key=lambda i: split.get(i, 0)):
                self.undeploy(endpoint, dm_id)
        self.transport.operation("DELETE", f"/v1/{self._endpoint_path(endpoint)}")

    # -- prediction --------------------------------------------------------------------------
    def predict(
        self,
        endpoint: str,
        instances: list[Any],
        parameters: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"instances": instances}
        if parameters is not None:
            body["parameters"] = parameters
        result: dict[str, Any] = self.json("POST", f"/v1/{self._endpoint_path(endpoint)}:predict", json=body)
        return result

    def raw_predict(
        self, endpoint: str, body: bytes, content_type: str = "application/json"
    ) -> httpx.Response:
        """POST bytes to `:rawPredict`; returns the response (body and X-Vertex-AI-* headers)."""
        return self.request(
            "POST",
            f"/v1/{self._endpoint_path(endpoint)}:rawPredict",
            content=body,
            headers={"content-type": content_type},
        )
