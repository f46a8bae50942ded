"""The loopml Python client against a real server: models, endpoints, traffic, predictions, errors."""

from __future__ import annotations

from collections import Counter

import pytest

import loopml
from loopml import errors
from tests.conftest import ServerProcess, free_port
from tests.e2e.test_registry_e2e import save_sklearn

SKLEARN = "us-docker.pkg.dev/vertex-ai/prediction/sklearn-cpu.1-2"


def test_client_model_and_endpoint_flow(server: ServerProcess) -> None:
    with loopml.Client(server.url, project="cp") as client:
        v1 = client.upload_model(
            "scorer", save_sklearn(server.home, "c/v1"), image_uri=SKLEARN, model_id="scorer"
        )
        assert v1["versionId"] == "1" and v1["framework"] == "sklearn"
        v2 = client.upload_model(
            "scorer",
            save_sklearn(server.home, "c/v2", flip=True),
            image_uri=SKLEARN,
            parent_model="scorer",
            version_aliases=["challenger"],
        )
        assert v2["versionId"] == "2" and v2["versionAliases"] == ["challenger"]
        assert client.get_model("scorer@challenger")["versionId"] == "2"
        assert [m["name"] for m in client.list_models(filter='display_name="scorer"')] == [v1["name"]]
        assert [v["versionId"] for v in client.list_versions("scorer")] == ["1", "2"]
        assert client.merge_aliases("scorer@2", ["default", "-challenger"])["versionAliases"] == ["default"]
        assert client.get_model("scorer")["versionId"] == "2"

        ep = client.create_endpoint("scorer-ep", endpoint_id="scorer-ep", labels={"env": "test"})
        assert ep["name"].endswith("/endpoints/scorer-ep")
        assert [e["name"] for e in client.list_endpoints()] == [ep["name"]]
        a = client.deploy("scorer-ep", "scorer@1", min_replicas=1, traffic=100)["id"]
        b = client.deploy("scorer-ep", "scorer@2", min_replicas=1, traffic=25)["id"]
        assert client.get_endpoint("scorer-ep")["trafficSplit"] == {a: 75, b: 25}
        pinned = client.set_traffic("scorer-ep", {a: 0, b: 100})
        assert pinned["trafficSplit"] == {a: 0, b: 100}
        result = client.predict("scorer-ep", [[2.0, 0.0]])
        assert result["deployedModelId"] == b and result["predictions"] == [0]  # v2 is flipped
        raw = client.raw_predict("scorer-ep", b'{"instances": [[2.0, 0.0]]}')
        assert raw.headers["X-Vertex-AI-Deployed-Model-Id"] == b
        mutated = client.mutate_deployed_model("scorer-ep", b, min_replicas=1, max_replicas=2)
        assert mutated["dedicatedResources"]["maxReplicaCount"] == 2

        with pytest.raises(errors.FailedPrecondition, match="traffic"):
            client.undeploy("scorer-ep", b)  # holds 100 %: the SDK arithmetic refuses
        with pytest.raises(errors.FailedPrecondition, match="undeploy"):
            client.delete_model("scorer")
        with pytest.raises(errors.NotFound):
            client.get_model("scorer@7")
        with pytest.raises(errors.InvalidArgument, match="sum to 100"):
            client.set_traffic("scorer-ep", {a: 10})

        client.undeploy("scorer-ep", a)
        assert client.get_endpoint("scorer-ep")["trafficSplit"] == {b: 100}
        client.delete_endpoint("scorer-ep", force=True)
        with pytest.raises(errors.NotFound):
            client.get_endpoint("scorer-ep")
        client.delete_model("scorer@1")
        assert [v["versionId"] for v in client.list_versions("scorer")] == ["2"]
        client.delete_model("scorer")
        assert client.list_models() == []


def test_client_fifty_fifty_split_serves_both_deployed_models(server: ServerProcess) -> None:
    """A 50/50 split made with the client: predictions come from both deployed model ids, each
    answering as its own version (v2 is trained on flipped labels)."""
    with loopml.Client(server.url, project="split-proj") as client:
        client.upload_model("half", save_sklearn(server.home, "h/v1"), image_uri=SKLEARN, model_id="half")
        client.upload_model(
            "half", save_sklearn(server.home, "h/v2", flip=True), image_uri=SKLEARN, parent_model="half"
        )
        client.create_endpoint("half-ep", endpoint_id="half-ep")
        a = client.deploy("half-ep", "half@1", traffic=100)["id"]
        b = client.deploy("half-ep", "half@2", traffic=50)["id"]
        assert client.get_endpoint("half-ep")["trafficSplit"] == {a: 50, b: 50}
        answer = {a: [1], b: [0]}  # x0 > 0 is class 1 for v1, class 0 for the flipped v2
        seen: Counter[str] = Counter()
        for _ in range(60):
            result = client.predict("half-ep", [[2.0, 0.0]])
            dm = result["deployedModelId"]
            assert result["predictions"] == answer[dm], result
            seen[dm] += 1
        assert set(seen) == {a, b}, seen
        assert 12 <= seen[a] <= 48, seen  # 30 ± 18: about 4.6 standard deviations


def test_client_without_server_says_how_to_start_one() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with loopml.Client(url) as client, pytest.raises(errors.ServerUnreachable, match="loopml server"):
        client.list_models()


def test_client_url_without_scheme_says_what_to_write() -> None:
    with loopml.Client("127.0.0.1:8080") as client, pytest.raises(errors.ServerUnreachable) as caught:
        client.list_models()
    assert caught.value.message == (
        "the server URL '127.0.0.1:8080' needs http:// or https:// (e.g. LOOPML_URL=http://127.0.0.1:8080)."
    )
