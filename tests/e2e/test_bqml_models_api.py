"""BigQuery `models` resources and ALTER MODEL through unmodified google-cloud-bigquery / aiplatform.

list_models (paged), get_model, update_model (description, labels, If-Match etag), delete_model
(= DROP MODEL, registry version included); ALTER MODEL … SET OPTIONS(vertex_ai_model_id=…) and
models.patch trainingRuns[].vertexAiModelId registering an existing model, checked in the Vertex
registry through the Vertex SDK.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform, bigquery

P, L = "bqml-models", "europe-west1"
DS = f"{P}.shop"


def _train(bq: bigquery.Client, name: str, extra: str = "") -> None:
    bq.query(
        f"CREATE MODEL `{DS}.{name}` OPTIONS(MODEL_TYPE='KMEANS', NUM_CLUSTERS=2{extra}) AS "
        f"SELECT x, y FROM `{DS}.points`"
    ).result()


@pytest.fixture(scope="module")
def bq(server: Any) -> Iterator[bigquery.Client]:
    os.environ["NO_GCE_CHECK"] = "true"
    client = bigquery.Client(
        project=P, credentials=AnonymousCredentials(), client_options={"api_endpoint": server.url}
    )
    aiplatform.init(
        project=P,
        location=L,
        api_endpoint=server.url,
        api_transport="rest",
        credentials=AnonymousCredentials(),
    )
    dataset = bigquery.Dataset(DS)
    dataset.location = L
    client.create_dataset(dataset)
    client.query(
        f"CREATE TABLE `{DS}.points` AS SELECT CAST(i AS FLOAT64) AS x, "
        "CAST(MOD(i, 2) * 100 AS FLOAT64) AS y FROM UNNEST(GENERATE_ARRAY(1, 60)) AS i"
    ).result()
    yield client
    client.close()


def test_list_get_update_delete_models(bq: bigquery.Client) -> None:
    for name in ("m_a", "m_b", "m_c"):
        _train(bq, name, ", DESCRIPTION='trained in SQL'" if name == "m_a" else "")
    listed = list(bq.list_models(DS, page_size=2))  # two pages: the client follows nextPageToken
    assert [m.model_id for m in listed] == ["m_a", "m_b", "m_c"]
    assert all(m.model_type == "KMEANS" and m.created is not None for m in listed)
    first_page = next(iter(bq.list_models(DS, max_results=1).pages))
    assert [m.model_id for m in first_page] == ["m_a"]

    model = bq.get_model(f"{DS}.m_a")
    assert model.reference is not None and model.created is not None
    assert model.reference.path == f"/projects/{P}/datasets/shop/models/m_a"
    assert model.location == L and model.description == "trained in SQL" and model.labels == {}
    assert [c.name for c in model.feature_columns] == ["x", "y"]
    assert [c.name for c in model.label_columns] == ["CENTROID_ID", "NEAREST_CENTROIDS_DISTANCE"]
    assert model.created == model.modified and model.expires is None
    run = model.training_runs[0]
    assert run["trainingOptions"]["numClusters"] == 2 and run["results"][0]["index"] == 0
    assert "vertexAiModelId" not in run

    model.description = "anomaly model"
    model.labels = {"team": "ml", "stage": "dev"}
    updated = bq.update_model(model, ["description", "labels"])  # sends If-Match: the etag read above
    assert (updated.description, updated.labels) == ("anomaly model", {"team": "ml", "stage": "dev"})
    assert updated.modified is not None
    assert updated.etag != model.etag and updated.modified >= model.created
    again = bq.get_model(f"{DS}.m_a")
    assert (again.description, again.labels) == ("anomaly model", {"team": "ml", "stage": "dev"})
    # a label set to None is removed, the others are kept
    again.labels = {"stage": None}  # type: ignore[dict-item]  # the client's documented way to remove one
    assert bq.update_model(again, ["labels"]).labels == {"team": "ml"}
    # an update based on an old read is refused (412), changing nothing
    model.description = "stale"
    with pytest.raises(gexc.PreconditionFailed, match="has changed"):
        bq.update_model(model, ["description"])
    assert bq.get_model(f"{DS}.m_a").description == "anomaly model"

    with pytest.raises(gexc.NotFound, match=r"Not found: Model bqml-models:shop\.nope") as err:
        bq.get_model(f"{DS}.nope")
    assert err.value.code == 404 and err.value.errors[0]["reason"] == "notFound"
    with pytest.raises(gexc.NotFound):
        bq.delete_model(f"{DS}.nope")
    bq.delete_model(f"{DS}.nope", not_found_ok=True)
    with pytest.raises(gexc.NotFound):
        list(bq.list_models(f"{P}.no_such_dataset"))

    # delete = DROP MODEL: gone for SQL, and the name can be used again
    bq.delete_model(f"{DS}.m_b")
    assert [m.model_id for m in bq.list_models(DS)] == ["m_a", "m_c"]
    with pytest.raises(gexc.NotFound):
        bq.query(f"SELECT * FROM ML.CENTROIDS(MODEL `{DS}.m_b`)").result()
    with pytest.raises(gexc.NotFound):
        bq.query(f"DROP MODEL `{DS}.m_b`").result()
    _train(bq, "m_b")
    assert bq.get_model(f"{DS}.m_b").description is None


def test_alter_model_registers_in_vertex(bq: bigquery.Client) -> None:
    _train(bq, "later")
    with pytest.raises(gexc.NotFound):
        aiplatform.Model("later_kmeans")
    job = bq.query(
        f"ALTER MODEL `{DS}.later` SET OPTIONS (vertex_ai_model_id='later_kmeans', "
        "vertex_ai_model_version_aliases=['champion'], description='registered later', "
        "labels=[('team', 'ml')])"
    )
    job.result()
    assert job.statement_type == "ALTER_MODEL"

    vertex = aiplatform.Model("later_kmeans")
    assert vertex.resource_name == f"projects/{P}/locations/{L}/models/later_kmeans"
    assert vertex.version_id == "1" and set(vertex.version_aliases) == {"default", "champion"}
    assert vertex.description == "registered later"
    assert aiplatform.Model("later_kmeans@champion").version_id == "1"

    model = bq.get_model(f"{DS}.later")
    assert model.training_runs[0]["vertexAiModelId"] == "later_kmeans"
    assert model.description == "registered later" and model.labels == {"team": "ml"}
    # later description / label changes reach the registry version too
    model.description = "k-means, 2 clusters"
    bq.update_model(model, ["description"])
    assert aiplatform.Model("later_kmeans").description == "k-means, 2 clusters"

    with pytest.raises(gexc.BadRequest, match="already registered as Vertex AI model later_kmeans"):
        bq.query(f"ALTER MODEL `{DS}.later` SET OPTIONS (vertex_ai_model_id='other_id')").result()
    with pytest.raises(gexc.BadRequest, match="ALTER MODEL option KMS_KEY_NAME is not supported"):
        bq.query(f"ALTER MODEL `{DS}.later` SET OPTIONS (kms_key_name='projects/p/keys/k')").result()
    with pytest.raises(gexc.BadRequest, match="unsupported ALTER MODEL option MAX_ITERATIONS"):
        bq.query(f"ALTER MODEL `{DS}.later` SET OPTIONS (max_iterations=3)").result()
    with pytest.raises(gexc.NotFound):
        bq.query(f"ALTER MODEL `{DS}.gone` SET OPTIONS (description='x')").result()
    bq.query(f"ALTER MODEL IF EXISTS `{DS}.gone` SET OPTIONS (description='x')").result()

    # deleting the BigQuery model through the REST resource removes the registry model too
    bq.delete_model(f"{DS}.later")
    with pytest.raises(gexc.NotFound):
        aiplatform.Model("later_kmeans")


def test_models_patch_registers_with_training_run_vertex_id(bq: bigquery.Client) -> None:
    _train(bq, "patched")
    path = f"/projects/{P}/datasets/shop/models/patched"
    body = bq._connection.api_request(  # what a REST client sends: models.patch with trainingRuns
        method="PATCH", path=path, data={"trainingRuns": [{"vertexAiModelId": "patched_kmeans"}]}
    )
    assert body["trainingRuns"][0]["vertexAiModelId"] == "patched_kmeans"
    assert body["trainingRuns"][0]["vertexAiModelVersion"] == "1"
    vertex = aiplatform.Model("patched_kmeans")
    assert vertex.resource_name.endswith("/models/patched_kmeans") and "default" in vertex.version_aliases
    # a client sending the resource back as read (trainingRuns name the registered id) changes nothing
    read = bq._connection.api_request(method="GET", path=path)
    again = bq._connection.api_request(method="PATCH", path=path, data=read)
    assert (again["etag"], again["lastModifiedTime"]) == (read["etag"], read["lastModifiedTime"])
    model = bq.get_model(f"{DS}.patched")
    model.labels = {}
    assert bq.update_model(model, ["labels"]).etag == read["etag"]

    with pytest.raises(gexc.BadRequest, match="'bogus'"):
        bq._connection.api_request(method="PATCH", path=path, data={"bogus": True})
    with pytest.raises(gexc.BadRequest, match="invalid label key 'Bad'"):
        bq._connection.api_request(method="PATCH", path=path, data={"labels": {"Bad": "x"}})
    assert bq.get_model(f"{DS}.patched").labels == {}
    etag = bq.get_model(f"{DS}.patched").etag
    for runs in ([{"vertexAiModelId": ["x"]}], [{"vertexAiModelId": 3}], {"vertexAiModelId": "x"}):
        with pytest.raises(gexc.BadRequest, match=r"trainingRuns(\[0\]\.vertexAiModelId)? must be"):
            bq._connection.api_request(method="PATCH", path=path, data={"trainingRuns": runs})
    assert bq.get_model(f"{DS}.patched").etag == etag

    # DROP MODEL and REST delete are the same: the registry model goes with either
    bq.query(f"DROP MODEL `{DS}.patched`").result()
    with pytest.raises(gexc.NotFound):
        aiplatform.Model("patched_kmeans")
    with pytest.raises(gexc.NotFound):
        bq.get_model(f"{DS}.patched")
