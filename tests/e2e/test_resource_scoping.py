"""The same resource id under two projects and two locations names three separate resources.

Models, endpoints (with their deployments and predictions), Pub/Sub topics and BigQuery datasets
are created with one id in `proj-a/us-central1`, `proj-a/europe-west4` and `proj-b/us-central1`;
each keeps its own content, lists show only their own parent's, and deleting one leaves the
others.
"""

from __future__ import annotations

import base64
from typing import Any

import httpx
import joblib
import numpy as np
from sklearn.tree import DecisionTreeClassifier

SKLEARN = "us-docker.pkg.dev/vertex-ai/prediction/sklearn-cpu.1-2:latest"
PARENTS = [
    "projects/proj-a/locations/us-central1",
    "projects/proj-a/locations/europe-west4",
    "projects/proj-b/locations/us-central1",
]


def _ok(r: httpx.Response) -> Any:
    assert r.status_code == 200, r.text
    return r.json()


def test_same_ids_under_two_projects_and_two_locations_stay_separate(server: Any) -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(120, 2)).round(3)
    rows = x[:20].tolist()
    expected: dict[str, list[int]] = {}
    with httpx.Client(base_url=f"{server.url}/v1/", timeout=120) as http:
        for i, parent in enumerate(PARENTS):
            # three different models: predicting class (x0 > 0), (x1 > 0), and (x0 + x1 > 0)
            y = [(x[:, 0] > 0), (x[:, 1] > 0), (x[:, 0] + x[:, 1] > 0)][i].astype(int)
            clf = DecisionTreeClassifier(max_depth=3, random_state=0).fit(x, y)
            expected[parent] = clf.predict(x[:20]).tolist()
            d = server.home / "buckets" / "scope-bucket" / f"m{i}"
            d.mkdir(parents=True)
            joblib.dump(clf, d / "model.joblib")
            model = {
                "displayName": f"twin {i}",
                "artifactUri": f"gs://scope-bucket/m{i}",
                "containerSpec": {"imageUri": SKLEARN},
            }
            op = _ok(http.post(f"{parent}/models:upload", json={"model": model, "modelId": "twin"}))
            assert op["done"] and "error" not in op, op
            assert op["response"]["model"] == f"{parent}/models/twin"
            _ok(
                http.post(
                    f"{parent}/endpoints", params={"endpointId": "twin-ep"}, json={"displayName": f"e{i}"}
                )
            )
            body = {
                "deployedModel": {
                    "model": f"{parent}/models/twin",
                    "dedicatedResources": {
                        "machineSpec": {"machineType": "n1-standard-2"},
                        "minReplicaCount": 1,
                    },
                },
                "trafficSplit": {"0": 100},
            }
            op = _ok(http.post(f"{parent}/endpoints/twin-ep:deployModel", json=body))
            assert op["done"] and "error" not in op, op
        assert len({str(v) for v in expected.values()}) == 3  # the three models really differ here

        for i, parent in enumerate(PARENTS):
            model = _ok(http.get(f"{parent}/models/twin"))
            assert model["name"] == f"{parent}/models/twin" and model["displayName"] == f"twin {i}"
            assert [m["name"] for m in _ok(http.get(f"{parent}/models"))["models"]] == [
                f"{parent}/models/twin"
            ]
            [version] = _ok(http.get(f"{parent}/models/twin:listVersions"))["models"]
            assert version["versionId"] == "1"  # not version 2 or 3 of a shared model
            endpoint = _ok(http.get(f"{parent}/endpoints/twin-ep"))
            assert endpoint["displayName"] == f"e{i}" and len(endpoint["deployedModels"]) == 1
            assert endpoint["deployedModels"][0]["model"] == f"{parent}/models/twin"
            listed = _ok(http.get(f"{parent}/endpoints"))["endpoints"]
            assert [e["name"] for e in listed] == [f"{parent}/endpoints/twin-ep"]
            got = _ok(http.post(f"{parent}/endpoints/twin-ep:predict", json={"instances": rows}))
            assert got["predictions"] == expected[parent], parent

        # deleting one location's endpoint and model leaves the others serving
        gone = PARENTS[1]
        dm_id = _ok(http.get(f"{gone}/endpoints/twin-ep"))["deployedModels"][0]["id"]
        _ok(http.post(f"{gone}/endpoints/twin-ep:undeployModel", json={"deployedModelId": dm_id}))
        _ok(http.delete(f"{gone}/endpoints/twin-ep"))
        _ok(http.delete(f"{gone}/models/twin"))
        assert http.get(f"{gone}/models/twin").status_code == 404
        assert http.get(f"{gone}/endpoints/twin-ep").status_code == 404
        for parent in (PARENTS[0], PARENTS[2]):
            got = _ok(http.post(f"{parent}/endpoints/twin-ep:predict", json={"instances": rows}))
            assert got["predictions"] == expected[parent]
            assert _ok(http.get(f"{parent}/models/twin"))["name"] == f"{parent}/models/twin"

        # Pub/Sub: one topic name in two projects, each with its own messages
        for project in ("proj-a", "proj-b"):
            _ok(http.put(f"projects/{project}/topics/twin-topic"))
            sub = {"topic": f"projects/{project}/topics/twin-topic"}
            _ok(http.put(f"projects/{project}/subscriptions/twin-sub", json=sub))
            data = base64.b64encode(project.encode()).decode()
            _ok(
                http.post(
                    f"projects/{project}/topics/twin-topic:publish", json={"messages": [{"data": data}]}
                )
            )
        for project in ("proj-a", "proj-b"):
            pulled = _ok(
                http.post(f"projects/{project}/subscriptions/twin-sub:pull", json={"maxMessages": 10})
            )
            datas = [base64.b64decode(m["message"]["data"]) for m in pulled["receivedMessages"]]
            assert datas == [project.encode()]

    # BigQuery: one dataset and table id in two projects, each with its own rows
    with httpx.Client(base_url=f"{server.url}/bigquery/v2/", timeout=60) as bq:
        for n, project in enumerate(("proj-a", "proj-b"), start=1):
            _ok(
                bq.post(
                    f"projects/{project}/datasets",
                    json={"datasetReference": {"projectId": project, "datasetId": "twin"}},
                )
            )
            table = {
                "tableReference": {"projectId": project, "datasetId": "twin", "tableId": "t"},
                "schema": {"fields": [{"name": "n", "type": "INT64"}]},
            }
            _ok(bq.post(f"projects/{project}/datasets/twin/tables", json=table))
            rows_in = {"rows": [{"json": {"n": n}} for _ in range(n)]}
            _ok(bq.post(f"projects/{project}/datasets/twin/tables/t/insertAll", json=rows_in))
        for n, project in enumerate(("proj-a", "proj-b"), start=1):
            q = {"query": "SELECT n, COUNT(*) AS c FROM twin.t GROUP BY n", "useLegacySql": False}
            out = _ok(bq.post(f"projects/{project}/queries", json=q))
            assert out["rows"] == [{"f": [{"v": str(n)}, {"v": str(n)}]}], (project, out)
