"""Google's own `google-cloud-aiplatform` (REST transport) driving models, endpoints and predictions."""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

import joblib
import numpy as np
import pytest
from google.api import httpbody_pb2
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform
from google.cloud.aiplatform_v1 import PredictionServiceClient
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Value
from sklearn.tree import DecisionTreeClassifier

SKLEARN_IMAGE = "us-docker.pkg.dev/vertex-ai/prediction/sklearn-cpu.1-2:latest"
PROJECT = "proj1"
LOCATION = "us-central1"


@pytest.fixture(scope="module")
def sdk(server: Any) -> Any:
    os.environ["NO_GCE_CHECK"] = "true"
    aiplatform.init(
        project=PROJECT,
        location=LOCATION,
        api_endpoint=server.url,
        api_transport="rest",
        credentials=AnonymousCredentials(),
    )
    return server


def _train(flip: bool) -> tuple[DecisionTreeClassifier, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(300, 3)).round(3)
    y = ((x[:, 0] - x[:, 2]) > 0).astype(int)
    if flip:
        y = 1 - y
    return DecisionTreeClassifier(max_depth=5, random_state=0).fit(x, y), x


def _save(server: Any, model: Any, prefix: str) -> str:
    path = server.home / "buckets" / "sdk-bucket" / prefix
    path.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, path / "model.joblib")
    return f"gs://sdk-bucket/{prefix}"


def test_upload_deploy_predict_split_undeploy(sdk: Any) -> None:
    clf, x = _train(flip=False)
    rows = x[:25].tolist()
    expected = clf.predict(x[:25]).tolist()

    model = aiplatform.Model.upload(
        display_name="churn-sdk",
        artifact_uri=_save(sdk, clf, "v1"),
        serving_container_image_uri=SKLEARN_IMAGE,
    )
    endpoint = aiplatform.Endpoint.create(display_name="churn-endpoint")
    endpoint.deploy(model, min_replica_count=1, max_replica_count=2, traffic_percentage=100)

    prediction = endpoint.predict(instances=rows)
    assert prediction.predictions == expected  # floats through protobuf Value, equal to the ints
    dm1 = prediction.deployed_model_id
    assert dm1 and prediction.model_version_id == "1"

    # A second version with an alias, deployed at 50 %.
    clf2, _ = _train(flip=True)
    model_v2 = aiplatform.Model.upload(
        display_name="churn-sdk",
        parent_model=model.resource_name,
        artifact_uri=_save(sdk, clf2, "v2"),
        serving_container_image_uri=SKLEARN_IMAGE,
        version_aliases=["challenger"],
        is_default_version=False,
    )
    assert model_v2.version_id == "2"
    endpoint.deploy(model_v2, min_replica_count=1, max_replica_count=1, traffic_percentage=50)
    split = endpoint.traffic_split
    assert sorted(split.values()) == [50, 50]
    dm2 = next(k for k in split if k != dm1)

    seen: Counter[str] = Counter()
    for i in range(200):
        p = endpoint.predict(instances=[rows[i % len(rows)]])
        seen[p.deployed_model_id] += 1
        want = expected[i % len(rows)] if p.deployed_model_id == dm1 else 1 - expected[i % len(rows)]
        assert p.predictions == [want]
    assert set(seen) == {dm1, dm2}
    assert 60 <= seen[dm1] <= 140, seen  # 50 % ± 20 points (the binomial s.d. is 3.5 points)

    endpoint.undeploy(deployed_model_id=dm2)
    endpoint = aiplatform.Endpoint(endpoint.resource_name)
    assert [d.id for d in endpoint.list_models()] == [dm1]
    for _ in range(10):
        assert endpoint.predict(instances=rows[:3]).deployed_model_id == dm1

    listed = aiplatform.Model.list(filter='display_name="churn-sdk"')
    assert [m.resource_name for m in listed] == [model.resource_name]

    # The low-level gapic client: protobuf Values in, and raw_predict with an HttpBody.
    client = PredictionServiceClient(
        client_options={"api_endpoint": sdk.url}, transport="rest", credentials=AnonymousCredentials()
    )
    instances = [json_format.ParseDict(r, Value()) for r in rows[:5]]
    response = client.predict(endpoint=endpoint.resource_name, instances=instances)
    assert list(response.predictions) == expected[:5]
    assert response.deployed_model_id == dm1

    body = httpbody_pb2.HttpBody(
        content_type="application/json", data=json.dumps({"instances": rows[:4]}).encode()
    )
    raw = client.raw_predict(endpoint=endpoint.resource_name, http_body=body)
    assert json.loads(raw.data) == {"predictions": expected[:4]}

    endpoint.undeploy_all()
    assert endpoint.list_models() == []
