"""Model Registry and Endpoints over real HTTP: routes, LROs, error JSON, and no partial writes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from tests.conftest import ServerProcess

PARENT = "projects/proj1/locations/us-central1"
SKLEARN = "us-docker.pkg.dev/vertex-ai/prediction/sklearn-cpu.1-2"


def save_sklearn(home: Path, prefix: str, flip: bool = False, bucket: str = "reg-bucket") -> str:
    """A small real sklearn model in a local bucket; returns its gs:// URI."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(80, 2))
    y = (x[:, 0] > 0).astype(int)
    clf = LogisticRegression().fit(x, 1 - y if flip else y)
    d = home / "buckets" / bucket / prefix
    d.mkdir(parents=True, exist_ok=True)
    joblib.dump(clf, d / "model.joblib")
    return f"gs://{bucket}/{prefix}"


class Api:
    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=f"{url}/v1/", timeout=120.0)

    def req(self, method: str, path: str, status: int = 200, **kw: Any) -> dict[str, Any]:
        r = self.http.request(method, path, **kw)
        assert r.status_code == status, r.text
        body: dict[str, Any] = r.json()
        return body

    def state(self) -> tuple[Any, ...]:
        """Everything a refused call must leave unchanged."""
        models = self.req("GET", f"{PARENT}/models")["models"]
        versions = [self.req("GET", f"{m['name']}:listVersions")["models"] for m in models]
        endpoints = self.req("GET", f"{PARENT}/endpoints")["endpoints"]
        for e in endpoints:
            for dm in e["deployedModels"]:
                dm.pop("status", None)
        return models, versions, endpoints


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[Api]:
    client = Api(server.url)
    yield client
    client.http.close()


def upload(api: Api, uri: str, **extra: Any) -> dict[str, Any]:
    model = {"displayName": "churn", "artifactUri": uri, "containerSpec": {"imageUri": SKLEARN}}
    model.update(extra.pop("model", {}))
    op = api.req("POST", f"{PARENT}/models:upload", json={"model": model, **extra})
    assert op["done"] and "error" not in op, op
    return op


def test_upload_versions_aliases_and_lro_polling(server: ServerProcess, api: Api) -> None:
    uri = save_sklearn(server.home, "v1")
    op = upload(api, uri, modelId="churn", model={"labels": {"team": "growth"}, "predictSchemata": {"x": 1}})
    assert op["response"] == {
        "@type": "type.googleapis.com/google.cloud.aiplatform.v1.UploadModelResponse",
        "model": f"{PARENT}/models/churn",
        "modelVersionId": "1",
    }
    # Google's REST transport polls /ui/{name}; /v1/{name} works too.
    for prefix in ("/ui/", "/v1/"):
        polled = httpx.get(f"{server.url}{prefix}{op['name']}")
        assert polled.status_code == 200 and polled.json() == op
    assert httpx.get(f"{server.url}/ui/{PARENT}/operations/42").status_code == 404

    v2 = upload(
        api,
        save_sklearn(server.home, "v2", flip=True),
        parentModel=f"{PARENT}/models/churn",
        model={"versionAliases": ["default", "challenger"]},
    )
    assert v2["response"]["modelVersionId"] == "2"
    got = api.req("GET", f"{PARENT}/models/churn%401", params={"$alt": "json;enum-encoding=int"})
    assert (
        got["versionId"] == "1" and got["labels"] == {"team": "growth"} and got["predictSchemata"] == {"x": 1}
    )
    assert got["createTime"].endswith("Z") and got["supportedDeploymentResourcesTypes"] == [
        "DEDICATED_RESOURCES"
    ]
    assert api.req("GET", f"{PARENT}/models/churn")["versionId"] == "2"
    assert api.req("GET", f"{PARENT}/models/churn@challenger")["versionId"] == "2"
    merged = api.req(
        "POST", f"{PARENT}/models/churn@1:mergeVersionAliases", json={"versionAliases": ["challenger", "old"]}
    )
    assert merged["versionAliases"] == ["challenger", "old"]
    versions = api.req("GET", f"{PARENT}/models/churn:listVersions")["models"]
    assert [(v["versionId"], v["versionAliases"]) for v in versions] == [
        ("1", ["challenger", "old"]),
        ("2", ["default"]),
    ]
    listed = api.req(
        "GET", f"{PARENT}/models", params={"filter": 'display_name="churn"', "orderBy": "create_time desc"}
    )
    assert [m["name"] for m in listed["models"]] == [f"{PARENT}/models/churn"]
    patched = api.req(
        "PATCH",
        f"{PARENT}/models/churn@1",
        params={"updateMask": "version_description"},
        json={"versionDescription": "baseline"},
    )
    assert patched["versionDescription"] == "baseline"
    ev = api.req(
        "POST",
        f"{PARENT}/models/churn@2/evaluations:import",
        json={"modelEvaluation": {"displayName": "holdout", "metrics": {"auPrc": 0.91}}},
    )
    assert api.req("GET", f"{ev['name']}")["metrics"] == {"auPrc": 0.91}
    assert [e["name"] for e in api.req("GET", f"{PARENT}/models/churn/evaluations")["modelEvaluations"]] == [
        ev["name"]
    ]


BAD_REQUESTS: list[tuple[str, str, Any, int, str]] = [
    ("POST", f"{PARENT}/models:upload", b"{not json", 400, "Malformed JSON"),
    ("POST", f"{PARENT}/models:upload", {"model": {"displayName": 5}}, 400, "displayName"),
    (
        "POST",
        f"{PARENT}/models:upload",
        {"model": {"displayName": "x", "artifactUri": "gs://reg-bucket/../../../etc"}},
        400,
        "escapes",
    ),
    (
        "POST",
        f"{PARENT}/models:upload",
        {
            "model": {
                "displayName": "x",
                "artifactUri": "gs://reg-bucket/nothing-here",
                "containerSpec": {"imageUri": SKLEARN},
            }
        },
        400,
        "does not exist",
    ),
    ("POST", f"{PARENT}/models:upload", {"model": {"displayName": "x"}, "modelId": "9bad"}, 400, "model id"),
    (
        "POST",
        f"{PARENT}/models:upload",
        {"model": {"displayName": "x", "containerSpec": {"imageUri": SKLEARN}}, "modelId": "churn"},
        409,
        "already exists",
    ),
    (
        "POST",
        f"{PARENT}/models:upload",
        {"model": {"displayName": "x", "containerSpec": {"imageUri": SKLEARN}}, "parentModel": "nope"},
        404,
        "not found",
    ),
    ("POST", f"{PARENT}/models:upload", {"model": {"displayName": "x"}, "surprise": 1}, 400, "surprise"),
    ("GET", f"{PARENT}/models/nope", None, 404, "not found"),
    ("GET", f"{PARENT}/models/churn@7", None, 404, "not found"),
    ("GET", f"{PARENT}/models/Bad%20Id", None, 400, "model id"),
    ("GET", f"{PARENT}/models", {"pageSize": "many"}, 400, "pageSize"),
    ("GET", f"{PARENT}/models", {"filter": "color=red"}, 400, "filter"),
    (
        "POST",
        f"{PARENT}/models/churn@2:mergeVersionAliases",
        {"versionAliases": ["-default"]},
        400,
        "default",
    ),
    ("POST", f"{PARENT}/models/churn@2:mergeVersionAliases", {"versionAliases": ["12"]}, 400, "numeric"),
    ("POST", f"{PARENT}/models/churn@2:mergeVersionAliases", {"versionAliases": "prod"}, 400, "list"),
    ("DELETE", f"{PARENT}/models/churn@2:deleteVersion", None, 400, "default"),
    ("PATCH", f"{PARENT}/models/churn", {"artifactUri": "gs://a/b"}, 400, "artifactUri"),
    ("POST", f"{PARENT}/endpoints", {"displayName": ["x"]}, 400, "displayName"),
    ("POST", f"{PARENT}/endpoints?endpointId=UPPER", {"displayName": "x"}, 400, "endpointId"),
    ("GET", f"{PARENT}/endpoints/404404", None, 404, "not found"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "match"), BAD_REQUESTS)
def test_bad_requests_are_4xx_and_write_nothing(
    server: ServerProcess, api: Api, method: str, path: str, body: Any, status: int, match: str
) -> None:
    if not api.state()[0]:
        upload(api, save_sklearn(server.home, "v1"), modelId="churn")
        upload(
            api, save_sklearn(server.home, "v2"), parentModel="churn", model={"versionAliases": ["default"]}
        )
    before = api.state()
    kw: dict[str, Any] = {}
    if isinstance(body, bytes):
        kw = {"content": body, "headers": {"content-type": "application/json"}}
    elif method == "GET" and body:
        kw = {"params": body}
    elif body is not None:
        kw = {"json": body}
    r = api.http.request(method, path, **kw)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == status and match.lower() in error["message"].lower()
    assert api.state() == before


def test_unsafe_artifact_trees_are_refused_and_leave_nothing(
    server: ServerProcess, api: Api, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.pkl"
    outside.write_bytes(b"not in the store")
    linked = server.home / "buckets" / "reg-bucket" / "linked-out"
    linked.mkdir(parents=True)
    (linked / "model.joblib").symlink_to(outside)
    dangling = tmp_path / "local-model"
    dangling.mkdir()
    (dangling / "model.joblib").write_bytes(b"x")
    (dangling / "extra").symlink_to(tmp_path / "missing")
    registry = server.home / "registry"

    def files() -> set[Path]:
        return set(registry.rglob("*")) if registry.exists() else set()

    before, registry_before = api.state(), files()
    for uri, match in (
        ("gs://reg-bucket/linked-out", "links out of its bucket"),
        (str(dangling), "dangling"),
    ):
        body = {"model": {"displayName": "x", "artifactUri": uri, "containerSpec": {"imageUri": SKLEARN}}}
        r = api.http.post(f"{PARENT}/models:upload", json=body)
        assert r.status_code == 400, r.text
        assert match in r.json()["error"]["message"]
    assert api.state() == before and files() == registry_before


def test_deploy_rules_over_http(server: ServerProcess, api: Api) -> None:
    upload(api, save_sklearn(server.home, "d1"), modelId="dep")
    op = api.req("POST", f"{PARENT}/endpoints", params={"endpointId": "ep1"}, json={"displayName": "ep1"})
    assert op["response"]["@type"].endswith("v1.Endpoint") and op["response"]["createTime"]
    body = {
        "deployedModel": {
            "model": f"{PARENT}/models/dep@1",
            "dedicatedResources": {"machineSpec": {"machineType": "n1-standard-2"}, "minReplicaCount": 1},
        },
        "trafficSplit": {"0": 100},
    }
    deployed = api.req("POST", f"{PARENT}/endpoints/ep1:deployModel", json=body)
    assert "error" not in deployed, deployed
    dm = deployed["response"]["deployedModel"]
    ep = api.req("GET", f"{PARENT}/endpoints/ep1")
    assert ep["trafficSplit"] == {dm["id"]: 100}
    assert ep["deployedModels"][0]["status"]["availableReplicaCount"] >= 1
    assert api.req("GET", f"{PARENT}/models/dep")["deployedModels"] == [
        {"endpoint": f"{PARENT}/endpoints/ep1", "deployedModelId": dm["id"]}
    ]
    pred = api.req("POST", f"{PARENT}/endpoints/ep1:predict", json={"instances": [[2.0, 0.0], [-2.0, 0.0]]})
    assert pred["predictions"] == [1, 0] and pred["deployedModelId"] == dm["id"]

    before = api.state()
    refused = [
        ("DELETE", f"{PARENT}/models/dep", None, 400, "undeploy"),
        (
            "POST",
            f"{PARENT}/endpoints/ep1:undeployModel",
            {"deployedModelId": dm["id"], "trafficSplit": {dm["id"]: 100}},
            400,
            "still gives",
        ),
        ("DELETE", f"{PARENT}/endpoints/ep1", None, 400, "deployed models"),
        (
            "POST",
            f"{PARENT}/endpoints/ep1:deployModel",
            {**body, "trafficSplit": {"0": 60}},
            400,
            "sum to 100",
        ),
        (
            "POST",
            f"{PARENT}/endpoints/ep1:deployModel",
            {"deployedModel": {"model": "dep", "dedicatedResources": {"minReplicaCount": "one"}}},
            400,
            "minReplicaCount",
        ),
        (
            "POST",
            f"{PARENT}/endpoints/ep1:deployModel",
            {"deployedModel": {"model": "nope"}},
            404,
            "not found",
        ),
        ("POST", f"{PARENT}/endpoints/ep1:undeployModel", {"deployedModelId": "77"}, 404, "not found"),
        (
            "PATCH",
            f"{PARENT}/endpoints/ep1?updateMask=traffic_split",
            {"trafficSplit": {"1": 100}},
            400,
            "not on this endpoint",
        ),
    ]
    for method, path, payload, status, match in refused:
        r = api.http.request(method, path, json=payload)
        assert r.status_code == status, (path, r.text)
        assert match in r.json()["error"]["message"]
    assert api.state() == before

    mutated = api.req(
        "POST",
        f"{PARENT}/endpoints/ep1:mutateDeployedModel",
        json={
            "deployedModel": {
                "id": dm["id"],
                "dedicatedResources": {"minReplicaCount": 1, "maxReplicaCount": 2},
            },
            "updateMask": "dedicated_resources.min_replica_count,dedicated_resources.max_replica_count",
        },
    )
    assert mutated["response"]["deployedModel"]["dedicatedResources"]["maxReplicaCount"] == 2
    undeployed = api.req("POST", f"{PARENT}/endpoints/ep1:undeployModel", json={"deployedModelId": dm["id"]})
    assert undeployed["response"]["@type"].endswith("UndeployModelResponse")
    assert api.req("GET", f"{PARENT}/endpoints/ep1")["trafficSplit"] == {}
    api.req("DELETE", f"{PARENT}/endpoints/ep1")
    api.req("DELETE", f"{PARENT}/models/dep")
    assert api.http.get(f"{PARENT}/models/dep").status_code == 404


@pytest.mark.slow
def test_deployments_survive_a_restart(server: ServerProcess, api: Api) -> None:
    upload(api, save_sklearn(server.home, "r1"), modelId="durable")
    api.req("POST", f"{PARENT}/endpoints", params={"endpointId": "ep2"}, json={"displayName": "ep2"})
    body = {
        "deployedModel": {"model": "durable", "dedicatedResources": {"minReplicaCount": 1}},
        "trafficSplit": {"0": 100},
    }
    dm_id = api.req("POST", f"{PARENT}/endpoints/ep2:deployModel", json=body)["response"]["deployedModel"][
        "id"
    ]
    server.kill()  # SIGKILL: nothing gets to clean up
    server.start()
    api.http.close()  # its pooled connections died with the server
    api.http = httpx.Client(base_url=f"{server.url}/v1/", timeout=120.0)
    ep = api.req("GET", f"{PARENT}/endpoints/ep2")
    assert ep["trafficSplit"] == {dm_id: 100}
    pred = api.req("POST", f"{PARENT}/endpoints/ep2:predict", json={"instances": [[3.0, 1.0]]})
    assert pred["predictions"] == [1] and pred["deployedModelId"] == dm_id


def test_file_uri_upload_is_snapshotted_and_served(server: ServerProcess, api: Api, tmp_path: Path) -> None:
    """`artifactUri: file:///…` (a directory outside every bucket) uploads, deploys and predicts."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(60, 2))
    clf = LogisticRegression().fit(x, (x[:, 1] > 0).astype(int))
    src = tmp_path / "local model"  # a space: the URI is percent-encoded
    src.mkdir()
    joblib.dump(clf, src / "model.joblib")
    uri = src.as_uri()
    assert uri.startswith("file:///") and "%20" in uri
    upload(api, uri, modelId="from-file")
    model = api.req("GET", f"{PARENT}/models/from-file")
    assert model["artifactUri"] == uri
    # the registry took a snapshot: changing the source afterwards changes nothing served
    joblib.dump(LogisticRegression().fit(x, (x[:, 1] <= 0).astype(int)), src / "model.joblib")
    api.req("POST", f"{PARENT}/endpoints", params={"endpointId": "file-ep"}, json={"displayName": "f"})
    body = {
        "deployedModel": {
            "model": f"{PARENT}/models/from-file",
            "dedicatedResources": {"machineSpec": {"machineType": "n1-standard-2"}, "minReplicaCount": 1},
        },
        "trafficSplit": {"0": 100},
    }
    op = api.req("POST", f"{PARENT}/endpoints/file-ep:deployModel", json=body)
    assert op["done"] and "error" not in op, op
    rows = x[:10].tolist()
    got = api.req("POST", f"{PARENT}/endpoints/file-ep:predict", json={"instances": rows})
    assert got["predictions"] == clf.predict(x[:10]).tolist()
    # a file:// URI with nothing behind it is a 400 that writes nothing
    before = api.state()
    missing = {
        "displayName": "x",
        "artifactUri": (tmp_path / "nope").as_uri(),
        "containerSpec": {"imageUri": SKLEARN},
    }
    r = api.http.post(f"{PARENT}/models:upload", json={"model": missing})
    assert r.status_code == 400 and "nope" in r.json()["error"]["message"], r.text
    assert api.state() == before


DOUBLER = """
class Doubler:
    batchable = True

    def predict(self, instances):
        return [2 * sum(row) for row in instances]
"""


def test_deploy_with_automatic_resources(server: ServerProcess, api: Api) -> None:
    """automaticResources: accepted for models that support it, stored and served; else a 400."""
    d = server.home / "buckets" / "reg-bucket" / "doubler"
    d.mkdir(parents=True)
    (d / "doubler.py").write_text(DOUBLER)
    (d / "loopml_model.json").write_text('{"framework": "python", "predictor": "doubler:Doubler"}')
    model = {"displayName": "doubler", "artifactUri": "gs://reg-bucket/doubler"}
    op = api.req("POST", f"{PARENT}/models:upload", json={"model": model, "modelId": "doubler"})
    assert op["done"] and "error" not in op, op
    uploaded = api.req("GET", f"{PARENT}/models/doubler")
    assert "AUTOMATIC_RESOURCES" in uploaded["supportedDeploymentResourcesTypes"]
    upload(api, save_sklearn(server.home, "auto-sk"), modelId="sk-dedicated-only")
    api.req("POST", f"{PARENT}/endpoints", params={"endpointId": "auto-ep"}, json={"displayName": "auto"})
    ep = f"{PARENT}/endpoints/auto-ep"

    before = api.state()
    for model_id, auto, needle in [
        ("sk-dedicated-only", {"minReplicaCount": 1}, "supports only dedicatedResources"),
        ("doubler", {"minReplicaCount": 2, "maxReplicaCount": 1}, "must be at least minReplicaCount"),
        ("doubler", {"minReplicaCount": 0}, "minReplicaCount must be at least 1"),
    ]:
        body: dict[str, Any] = {
            "deployedModel": {"model": f"{PARENT}/models/{model_id}", "automaticResources": auto}
        }
        r = api.http.post(f"{ep}:deployModel", json=body)
        assert r.status_code == 400 and needle in r.json()["error"]["message"], r.text
        assert "deployedModel.automaticResources" in r.json()["error"]["message"], r.text
    assert api.state() == before

    body = {
        "deployedModel": {
            "model": f"{PARENT}/models/doubler",
            "automaticResources": {"minReplicaCount": 1, "maxReplicaCount": 2},
        },
        "trafficSplit": {"0": 100},
    }
    op = api.req("POST", f"{ep}:deployModel", json=body)
    assert op["done"] and "error" not in op, op
    dm_id = op["response"]["deployedModel"]["id"]
    [dm] = api.req("GET", ep)["deployedModels"]
    assert dm["id"] == dm_id and "dedicatedResources" not in dm
    assert dm["automaticResources"] == {"minReplicaCount": 1, "maxReplicaCount": 2}
    assert dm["status"]["availableReplicaCount"] == 1  # minReplicaCount replicas run
    got = api.req("POST", f"{ep}:predict", json={"instances": [[1, 2], [3, 4.5]]})
    assert got["predictions"] == [6, 15.0] and got["deployedModelId"] == dm_id
