# ruff: noqa: F811  (the shared `stack` fixture is imported, then used as a parameter)
"""EndpointService against real SQLite and PostgreSQL, with a recording serving backend.

The serving backend is the boundary of the stored state; a small recorder stands in for it here
(the e2e tests use the real serving runtime) so rollbacks and replays can be checked exactly.
"""

from __future__ import annotations

from typing import Any

import pytest

from loopml.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from loopml.registry.endpoints import EndpointService
from loopml.serving.spec import DeployedModelSpec, EndpointSpec
from tests.integration.test_registry_service import L, P, Stack, stack  # noqa: F401

EP = f"projects/{P}/locations/{L}/endpoints"


class RecordingBackend:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail_deploy: Exception | None = None
        self.fail_update: Exception | None = None
        self.live: dict[str, DeployedModelSpec] = {}
        self.endpoints: dict[str, EndpointSpec] = {}

    def deploy(self, spec: DeployedModelSpec) -> None:
        self.calls.append(("deploy", spec))
        if self.fail_deploy:
            raise self.fail_deploy
        self.live[spec.deployed_model_id] = spec

    def undeploy(self, deployed_model_id: str) -> None:
        self.calls.append(("undeploy", deployed_model_id))
        self.live.pop(deployed_model_id, None)

    def update(self, spec: DeployedModelSpec) -> None:
        self.calls.append(("update", spec))
        if self.fail_update:
            raise self.fail_update
        self.live[spec.deployed_model_id] = spec

    def set_endpoint(self, endpoint: EndpointSpec) -> None:
        self.calls.append(("set_endpoint", endpoint))
        self.endpoints[endpoint.endpoint_name] = endpoint

    def remove_endpoint(self, endpoint_name: str) -> None:
        self.calls.append(("remove_endpoint", endpoint_name))
        self.endpoints.pop(endpoint_name, None)

    def status(self, deployed_model_id: str) -> dict[str, Any]:
        spec = self.live.get(deployed_model_id)
        return {"availableReplicaCount": spec.min_replicas if spec else 0}


@pytest.fixture()
def backend(stack: Stack) -> RecordingBackend:
    b = RecordingBackend()
    stack.services["serving"] = b
    return b


def deploy(
    stack: Stack, model: str = "m1", split: dict[str, int] | None = None, **res: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "deployedModel": {"model": model, "dedicatedResources": {"minReplicaCount": 1, **res}}
    }
    if split is not None:
        body["trafficSplit"] = split
    return stack.endpoints.deploy_model(P, L, "e1", body)


def test_create_get_list_patch_delete(stack: Stack, backend: RecordingBackend) -> None:
    op = stack.endpoints.create_endpoint(P, L, {"displayName": "ep", "labels": {"a": "b"}}, "e1")
    assert op["done"] and op["response"]["@type"].endswith("v1.Endpoint")
    assert op["response"]["name"] == f"{EP}/e1" and op["response"]["createTime"]
    assert backend.endpoints[f"{EP}/e1"].traffic_split == {}
    generated = stack.endpoints.create_endpoint(P, L, {"displayName": "other"})["response"]["name"]
    assert generated.rsplit("/", 1)[-1].isdigit()
    with pytest.raises(AlreadyExists):
        stack.endpoints.create_endpoint(P, L, {"displayName": "ep"}, "e1")
    with pytest.raises(InvalidArgument, match="endpointId"):
        stack.endpoints.create_endpoint(P, L, {"displayName": "ep"}, "Bad_Id")
    with pytest.raises(InvalidArgument, match="displayName"):
        stack.endpoints.create_endpoint(P, L, {"displayName": ""}, "e2")
    listed = stack.endpoints.list_endpoints(P, L, filter='labels.a="b"')["endpoints"]
    assert [e["name"] for e in listed] == [f"{EP}/e1"]
    ep = stack.endpoints.get_endpoint(P, L, "e1")
    patched = stack.endpoints.update_endpoint(P, L, "e1", {"displayName": "renamed"}, "display_name")
    assert patched["displayName"] == "renamed" and patched["etag"] != ep["etag"]
    with pytest.raises(Exception, match="etag"):
        stack.endpoints.update_endpoint(P, L, "e1", {"displayName": "x", "etag": ep["etag"]})
    with pytest.raises(InvalidArgument, match="cannot be updated"):
        stack.endpoints.update_endpoint(P, L, "e1", {"network": "x"})
    stack.endpoints.delete_endpoint(P, L, "e1")
    assert ("remove_endpoint", f"{EP}/e1") in backend.calls
    with pytest.raises(NotFound):
        stack.endpoints.get_endpoint(P, L, "e1")


def test_deploy_traffic_undeploy_rules(stack: Stack, backend: RecordingBackend) -> None:
    stack.upload()
    stack.upload(parent="m1", versionAliases=["canary"])
    stack.endpoints.create_endpoint(P, L, {"displayName": "ep"}, "e1")
    op = deploy(stack, "m1", {"0": 100}, machineSpec={"machineType": "n1-standard-4", "acceleratorType": 5})
    first = op["response"]["deployedModel"]
    assert op["response"]["@type"].endswith("DeployModelResponse")
    assert first["modelVersionId"] == "1" and first["dedicatedResources"]["maxReplicaCount"] == 1
    assert first["dedicatedResources"]["machineSpec"]["acceleratorType"] == "NVIDIA_TESLA_T4"
    a = first["id"]
    spec = backend.live[a]
    assert (
        spec.framework == "sklearn" and spec.artifact_dir is not None and spec.machine_type == "n1-standard-4"
    )
    ep = stack.endpoints.get_endpoint(P, L, "e1")
    assert ep["trafficSplit"] == {a: 100}
    assert ep["deployedModels"][0]["status"]["availableReplicaCount"] == 1
    model = stack.registry.get_model(P, L, "m1@1")
    assert model["deployedModels"] == [{"endpoint": f"{EP}/e1", "deployedModelId": a}]

    # Bad splits: refused with nothing stored and nothing started.
    before, n_calls = stack.snapshot(), len(backend.calls)
    for split, match in (
        ({"0": 50}, "sum to 100"),
        ({"0": 50, "999": 50}, "not on this endpoint"),
        ({"0": "x"}, "integer"),
    ):
        with pytest.raises(InvalidArgument, match=match):
            deploy(stack, "m1@canary", split)
    with pytest.raises(InvalidArgument, match="minReplicaCount"):
        deploy(stack, "m1", {}, minReplicaCount=0)
    with pytest.raises(InvalidArgument, match="maxReplicaCount"):
        deploy(stack, "m1", {}, minReplicaCount=3, maxReplicaCount=2)
    with pytest.raises(NotFound):
        deploy(stack, "m1@nosuch", {})
    with pytest.raises(InvalidArgument, match="unknown field"):
        stack.endpoints.deploy_model(P, L, "e1", {"deployedModel": {"model": "m1", "bogus": 1}})
    assert stack.snapshot() == before and len(backend.calls) == n_calls

    b = deploy(stack, "m1@canary", {a: 30, "0": 70}, maxReplicaCount=3)["response"]["deployedModel"]["id"]
    assert b != a and stack.endpoints.get_endpoint(P, L, "e1")["trafficSplit"] == {a: 30, b: 70}
    c = deploy(stack, "m1@2", {})["response"]["deployedModel"]["id"]  # empty split: unchanged
    assert stack.endpoints.get_endpoint(P, L, "e1")["trafficSplit"] == {a: 30, b: 70}

    # Deleting what is deployed is refused.
    before = stack.snapshot()
    with pytest.raises(FailedPrecondition, match="undeploy"):
        stack.registry.delete_model(P, L, "m1")
    with pytest.raises(FailedPrecondition, match="deployed"):
        stack.registry.delete_version(P, L, "m1@2")
    with pytest.raises(FailedPrecondition, match="deployed models"):
        stack.endpoints.delete_endpoint(P, L, "e1")
    with pytest.raises(FailedPrecondition, match="traffic"):
        stack.endpoints.undeploy_model(P, L, "e1", {"deployedModelId": a})
    with pytest.raises(NotFound):
        stack.endpoints.undeploy_model(P, L, "e1", {"deployedModelId": "123"})
    assert stack.snapshot() == before

    stack.endpoints.undeploy_model(P, L, "e1", {"deployedModelId": c})  # 0 traffic: fine
    stack.endpoints.undeploy_model(P, L, "e1", {"deployedModelId": a, "trafficSplit": {b: 100}})
    assert stack.endpoints.get_endpoint(P, L, "e1")["trafficSplit"] == {b: 100}
    assert ("undeploy", a) in backend.calls and a not in backend.live
    stack.endpoints.undeploy_model(P, L, "e1", {"deployedModelId": b})  # last one empties the split
    ep = stack.endpoints.get_endpoint(P, L, "e1")
    assert ep["trafficSplit"] == {} and ep["deployedModels"] == []
    assert backend.endpoints[f"{EP}/e1"].traffic_split == {}
    stack.registry.delete_model(P, L, "m1")
    stack.endpoints.delete_endpoint(P, L, "e1")


def test_failed_deploy_rolls_back(stack: Stack, backend: RecordingBackend) -> None:
    stack.upload()
    stack.endpoints.create_endpoint(P, L, {"displayName": "ep"}, "e1")
    a = deploy(stack, "m1", {"0": 100})["response"]["deployedModel"]["id"]
    before = stack.snapshot()
    backend.fail_deploy = FailedPrecondition("replica exited while loading the model")
    op = deploy(stack, "m1", {"0": 100})
    assert op["done"] and op["error"] == {"code": 9, "message": "replica exited while loading the model"}
    assert "response" not in op
    assert stack.snapshot() == before
    assert stack.endpoints.get_endpoint(P, L, "e1")["trafficSplit"] == {a: 100}


def test_mutate_deployed_model(stack: Stack, backend: RecordingBackend) -> None:
    stack.upload()
    stack.endpoints.create_endpoint(P, L, {"displayName": "ep"}, "e1")
    a = deploy(stack, "m1", {"0": 100})["response"]["deployedModel"]["id"]
    specs = [{"metricName": "aiplatform.googleapis.com/prediction/online/cpu/utilization", "target": 50}]
    body = {
        "deployedModel": {
            "id": a,
            "dedicatedResources": {
                "minReplicaCount": 2,
                "maxReplicaCount": 4,
                "autoscalingMetricSpecs": specs,
            },
        }
    }
    op = stack.endpoints.mutate_deployed_model(P, L, "e1", body)
    dm = op["response"]["deployedModel"]
    assert (
        dm["dedicatedResources"]["minReplicaCount"] == 2 and dm["dedicatedResources"]["maxReplicaCount"] == 4
    )
    assert backend.calls[-1][0] == "update" and backend.live[a].max_replicas == 4
    assert backend.live[a].autoscaling_metric_specs == specs
    before = stack.snapshot()
    with pytest.raises(InvalidArgument, match="immutable"):
        stack.endpoints.mutate_deployed_model(
            P,
            L,
            "e1",
            {"deployedModel": {"id": a, "dedicatedResources": {"machineSpec": {"machineType": "x"}}}},
        )
    with pytest.raises(InvalidArgument, match="cannot be changed"):
        stack.endpoints.mutate_deployed_model(
            P, L, "e1", {"deployedModel": {"id": a, "model": "m2"}, "updateMask": "model"}
        )
    with pytest.raises(InvalidArgument, match="maxReplicaCount"):
        stack.endpoints.mutate_deployed_model(
            P,
            L,
            "e1",
            {"deployedModel": {"id": a, "dedicatedResources": {"maxReplicaCount": 1}}},
            "dedicated_resources.max_replica_count",
        )
    backend.fail_update = Unavailable("autoscaler busy")
    op = stack.endpoints.mutate_deployed_model(
        P,
        L,
        "e1",
        {"deployedModel": {"id": a, "dedicatedResources": {"minReplicaCount": 3, "maxReplicaCount": 5}}},
    )
    assert op["error"]["code"] == 14
    assert stack.snapshot() == before


def test_without_serving_deploy_is_503_and_replay_restores_state(stack: Stack) -> None:
    stack.upload()
    stack.endpoints.create_endpoint(P, L, {"displayName": "ep"}, "e1")
    before = stack.snapshot()
    with pytest.raises(Unavailable, match="serving runtime not configured"):
        deploy(stack, "m1", {"0": 100})
    assert stack.snapshot() == before
    first = RecordingBackend()
    stack.services["serving"] = first
    a = deploy(stack, "m1", {"0": 100})["response"]["deployedModel"]["id"]
    # A new process: a fresh service and backend over the same database replays everything.
    fresh = RecordingBackend()
    service = EndpointService(stack.db, stack.registry, stack.operations, {"serving": fresh})
    service._replay_sync()
    assert set(fresh.live) == {a}
    assert fresh.endpoints[f"{EP}/e1"].traffic_split == {a: 100}
    assert [c[0] for c in fresh.calls] == ["set_endpoint", "deploy", "set_endpoint"]
