"""Google's unmodified google-cloud-aiplatform (REST transport) against the registry and endpoints."""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform

from tests.conftest import ServerProcess
from tests.e2e.test_registry_e2e import save_sklearn

PROJECT, LOCATION = "sdkproj", "us-central1"
SKLEARN = "us-docker.pkg.dev/vertex-ai/prediction/sklearn-cpu.1-2"


@pytest.fixture(scope="module")
def sdk(server: ServerProcess) -> ServerProcess:
    os.environ["NO_GCE_CHECK"] = "true"
    aiplatform.init(
        project=PROJECT,
        location=LOCATION,
        api_endpoint=server.url,
        api_transport="rest",
        credentials=AnonymousCredentials(),
    )
    return server


def test_models_versions_aliases_with_the_sdk(sdk: ServerProcess) -> None:
    m1 = aiplatform.Model.upload(
        display_name="sdk-model",
        artifact_uri=save_sklearn(sdk.home, "sdk/v1", bucket="sdk-reg"),
        serving_container_image_uri=SKLEARN,
        model_id="sdkm",
        labels={"team": "ml"},
    )
    assert m1.resource_name == f"projects/{PROJECT}/locations/{LOCATION}/models/sdkm"
    assert m1.version_id == "1" and m1.version_aliases == ["default"]
    m2 = aiplatform.Model.upload(
        display_name="sdk-model",
        parent_model=m1.resource_name,
        artifact_uri=save_sklearn(sdk.home, "sdk/v2", flip=True, bucket="sdk-reg"),
        serving_container_image_uri=SKLEARN,
        version_aliases=["beta"],
        is_default_version=False,
    )
    assert m2.version_id == "2" and m2.version_aliases == ["beta"]
    assert aiplatform.Model("sdkm").version_id == "1"
    assert aiplatform.Model("sdkm@2").version_id == "2"
    assert aiplatform.Model("sdkm", version="beta").version_id == "2"
    assert aiplatform.Model(f"projects/{PROJECT}/locations/{LOCATION}/models/sdkm@1").labels == {"team": "ml"}

    listed = aiplatform.Model.list(filter='display_name="sdk-model"', order_by="create_time desc")
    assert [m.resource_name for m in listed] == [m1.resource_name]

    registry = m1.versioning_registry
    assert sorted(v.version_id for v in registry.list_versions()) == ["1", "2"]
    registry.add_version_aliases(["prod"], version="2")
    registry.remove_version_aliases(["beta"], version="2")
    assert registry.get_version_info("2").version_aliases == ["prod"]
    with pytest.raises(gexc.BadRequest, match="default"):
        registry.remove_version_aliases(["default"], version="1")
    with pytest.raises(gexc.BadRequest, match="default"):
        registry.delete_version("1")
    with pytest.raises(gexc.NotFound):
        aiplatform.Model("sdkm@9")

    # Evaluations: imported over REST, read back through the SDK.
    r = httpx.post(
        f"{sdk.url}/v1/{m1.resource_name}@1/evaluations:import",
        json={"modelEvaluation": {"displayName": "holdout", "metrics": {"auRoc": 0.93}}},
    )
    assert r.status_code == 200, r.text
    assert dict(aiplatform.Model("sdkm@1").get_model_evaluation().metrics) == {"auRoc": 0.93}

    registry.delete_version("2")
    assert [v.version_id for v in registry.list_versions()] == ["1"]


def test_endpoint_create_deploy_and_refusals_with_the_sdk(sdk: ServerProcess) -> None:
    model = aiplatform.Model.upload(
        display_name="sdk-deploy",
        artifact_uri=save_sklearn(sdk.home, "sdk/d1", bucket="sdk-reg"),
        serving_container_image_uri=SKLEARN,
    )
    endpoint = aiplatform.Endpoint.create(display_name="sdk-endpoint")
    assert endpoint.resource_name.startswith(f"projects/{PROJECT}/locations/{LOCATION}/endpoints/")
    assert endpoint.display_name == "sdk-endpoint"
    assert [e.resource_name for e in aiplatform.Endpoint.list(filter='display_name="sdk-endpoint"')] == [
        endpoint.resource_name
    ]
    endpoint.deploy(model, min_replica_count=1, max_replica_count=1, traffic_percentage=100)
    dm_id = endpoint.list_models()[0].id
    assert endpoint.traffic_split == {dm_id: 100}
    assert endpoint.predict(instances=[[2.0, 0.0]]).predictions == [1]
    refreshed: Any = aiplatform.Model(model.resource_name)
    assert [d.deployed_model_id for d in refreshed.gca_resource.deployed_models] == [dm_id]

    with pytest.raises(gexc.BadRequest, match="undeploy"):
        model.delete()
    with pytest.raises(gexc.BadRequest, match="deployed models"):
        endpoint.delete()
    assert aiplatform.Endpoint(endpoint.resource_name).traffic_split == {dm_id: 100}

    endpoint.delete(force=True)  # undeploys, then deletes
    with pytest.raises(gexc.NotFound):
        aiplatform.Endpoint(endpoint.resource_name).display_name  # noqa: B018
    model.delete()
    with pytest.raises(gexc.NotFound):
        aiplatform.Model(model.resource_name)
