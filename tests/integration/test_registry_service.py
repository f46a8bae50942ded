"""RegistryService against real SQLite and a real (embedded) PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from loopml.artifacts import ArtifactStore
from loopml.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from loopml.metadata import Database
from loopml.registry.endpoints import EndpointService
from loopml.registry.evaluations import EvaluationService
from loopml.registry.operations import OperationStore
from loopml.registry.service import RegistryService

P, L = "proj1", "us-central1"
SKLEARN = "us-docker.pkg.dev/vertex-ai/prediction/sklearn-cpu.1-2"


@dataclass
class Stack:
    db: Database
    artifacts: ArtifactStore
    registry: RegistryService
    endpoints: EndpointService
    evaluations: EvaluationService
    operations: OperationStore
    services: dict[str, Any] = field(default_factory=dict)

    def model_dir(self, name: str = "m1", payload: bytes = b"model-bytes") -> str:
        d = self.artifacts.buckets_dir / "bkt" / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "model.joblib").write_bytes(payload)
        return f"gs://bkt/{name}"

    def upload(self, model_id: str | None = "m1", parent: str | None = None, **fields: Any) -> dict[str, Any]:
        body = {
            "displayName": "churn",
            "artifactUri": self.model_dir(),
            "containerSpec": {"imageUri": SKLEARN},
        }
        body.update(fields)
        return self.registry.upload_model(
            P, L, body, model_id=None if parent else model_id, parent_model=parent
        )

    def snapshot(self) -> tuple[Any, ...]:
        """Everything a failed call must leave unchanged."""
        models = self.registry.list_models(P, L)["models"]
        versions = [self.registry.list_versions(P, L, m["name"])["models"] for m in models]
        endpoints = self.endpoints.list_endpoints(P, L)["endpoints"]
        for e in endpoints:
            for dm in e["deployedModels"]:
                dm.pop("status", None)
        files = sorted(str(p) for p in self.artifacts.registry_dir.rglob("*"))
        return models, versions, endpoints, files


@pytest.fixture(params=["sqlite", "postgres"])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'metadata.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    db = Database(url)
    db.migrate()
    artifacts = ArtifactStore(tmp_path / "store")
    ops = OperationStore(db)
    registry = RegistryService(db, artifacts, ops)
    services: dict[str, Any] = {}
    endpoints = EndpointService(db, registry, ops, services)
    yield Stack(db, artifacts, registry, endpoints, EvaluationService(db), ops, services)
    db.dispose()


def test_upload_creates_version_1_with_default_and_a_snapshot(stack: Stack) -> None:
    result = stack.upload()
    assert result == {"model": f"projects/{P}/locations/{L}/models/m1", "modelVersionId": "1"}
    for ref in ("m1", "m1@1", "m1@default", f"projects/{P}/locations/{L}/models/m1%401"):
        model = stack.registry.get_model(P, L, ref)
        assert model["versionId"] == "1"
        assert model["versionAliases"] == ["default"]
        assert model["supportedDeploymentResourcesTypes"] == ["DEDICATED_RESOURCES"]
        assert model["createTime"].endswith("Z")
        assert model["lineage"] == {"kind": "upload"}
    resolved = stack.registry.resolve_version(P, L, "m1")
    assert resolved.framework == "sklearn"
    assert resolved.artifact_dir is not None and stack.artifacts.is_inside(resolved.artifact_dir)
    # The snapshot is a copy: changing the source later does not change the registered model.
    stack.model_dir(payload=b"changed")
    assert (resolved.artifact_dir / "model.joblib").read_bytes() == b"model-bytes"


def test_versions_aliases_and_default(stack: Stack) -> None:
    stack.upload()
    v2 = stack.upload(parent=f"projects/{P}/locations/{L}/models/m1")
    assert v2["modelVersionId"] == "2"
    assert stack.registry.get_model(P, L, "m1")["versionId"] == "1"  # no alias asked: default stays
    v3 = stack.upload(parent="m1", versionAliases=["default", "canary"])
    assert v3["modelVersionId"] == "3"
    assert stack.registry.get_model(P, L, "m1")["versionId"] == "3"  # the SDK's ["default"] moves it
    moved = stack.registry.merge_version_aliases(P, L, "m1@2", ["canary", "prod"])
    assert moved["versionAliases"] == ["canary", "prod"]
    assert stack.registry.get_model(P, L, "m1@3")["versionAliases"] == ["default"]
    assert stack.registry.merge_version_aliases(P, L, "m1@2", ["-prod", "x-y", "-x-y"])["versionAliases"] == [
        "canary"
    ]
    before = stack.snapshot()
    with pytest.raises(FailedPrecondition, match="default"):
        stack.registry.merge_version_aliases(P, L, "m1@3", ["-default"])
    with pytest.raises(InvalidArgument, match="never numeric"):
        stack.registry.merge_version_aliases(P, L, "m1@3", ["prod", "42"])
    with pytest.raises(NotFound):
        stack.registry.get_model(P, L, "m1@nosuch")
    with pytest.raises(NotFound):
        stack.registry.get_model(P, L, "m1@9")
    assert stack.snapshot() == before
    versions = stack.registry.list_versions(P, L, "m1")["models"]
    assert [v["versionId"] for v in versions] == ["1", "2", "3"]
    holders = [v["versionId"] for v in versions if "default" in v["versionAliases"]]
    assert holders == ["3"]


def test_bad_uploads_write_nothing(stack: Stack) -> None:
    stack.upload()
    before = stack.snapshot()
    bad: list[tuple[Any, type[Exception], str]] = [
        ({"displayName": "x", "artifactUri": "gs://bkt/../../etc"}, InvalidArgument, "escapes"),
        (
            {"displayName": "x", "artifactUri": "gs://bkt/missing", "containerSpec": {"imageUri": SKLEARN}},
            InvalidArgument,
            "does not exist",
        ),
        ({"displayName": 3}, InvalidArgument, "displayName"),
        ({"displayName": "x", "labels": ["a"]}, InvalidArgument, "labels"),
        (
            {
                "displayName": "x",
                "containerSpec": {"imageUri": SKLEARN, "ports": [{"containerPort": "http"}]},
            },
            InvalidArgument,
            "containerPort",
        ),
        ({"displayName": "x", "versionAliases": ["1"]}, InvalidArgument, "never numeric"),
        ({"displayName": "x", "artifactUri": "ftp://host/x"}, InvalidArgument, "scheme"),
        ("not an object", InvalidArgument, "JSON object"),
    ]
    for body, exc, match in bad:
        with pytest.raises(exc, match=match):
            stack.registry.upload_model(P, L, body, model_id="m2")
    with pytest.raises(AlreadyExists):
        stack.upload(model_id="m1")
    with pytest.raises(InvalidArgument, match="model id"):
        stack.upload(model_id="Bad Id")
    with pytest.raises(NotFound):
        stack.upload(parent="nosuch")
    with pytest.raises(InvalidArgument, match="without a version"):
        stack.upload(parent="m1@1")
    assert stack.snapshot() == before


def test_list_filter_order_and_pages(stack: Stack) -> None:
    stack.upload(model_id="a1", labels={"team": "x"})
    stack.upload(model_id="b1", displayName="fraud")
    stack.upload(model_id="c1", labels={"team": "y"})
    names = lambda r: [m["name"].rsplit("/", 1)[-1] for m in r["models"]]  # noqa: E731
    assert names(stack.registry.list_models(P, L, filter='display_name="churn"')) == ["a1", "c1"]
    assert names(stack.registry.list_models(P, L, filter='display_name="churn" AND labels.team="y"')) == [
        "c1"
    ]
    assert names(stack.registry.list_models(P, L, order_by="create_time desc")) == ["c1", "b1", "a1"]
    first = stack.registry.list_models(P, L, page_size=2)
    second = stack.registry.list_models(P, L, page_size=2, page_token=first["nextPageToken"])
    assert names(first) + names(second) == ["a1", "b1", "c1"] and "nextPageToken" not in second
    assert stack.registry.list_models("other", L) == {"models": []}


def test_patch_and_delete_rules(stack: Stack) -> None:
    stack.upload()
    stack.upload(parent="m1")
    patched = stack.registry.update_model(
        P, L, "m1@2", {"description": "d", "labels": {"k": "v"}}, "description,labels"
    )
    assert patched["description"] == "d" and patched["labels"] == {"k": "v"}
    with pytest.raises(InvalidArgument, match="artifactUri"):
        stack.registry.update_model(P, L, "m1", {"artifactUri": "gs://x/y"})
    with pytest.raises(FailedPrecondition, match="default"):
        stack.registry.delete_version(P, L, "m1@1")
    op = stack.registry.delete_version(P, L, "m1@2")
    assert op["done"] and op["response"]["@type"].endswith("protobuf.Empty")
    assert stack.operations.get(op["name"]) == op
    with pytest.raises(FailedPrecondition, match="only version"):
        stack.registry.delete_version(P, L, "m1@1")
    stack.registry.delete_model(P, L, "m1")
    with pytest.raises(NotFound):
        stack.registry.get_model(P, L, "m1")
    assert not any(p.is_file() for p in stack.artifacts.registry_dir.rglob("*"))


def test_lineage_manifest_framework_and_evaluations(stack: Stack) -> None:
    d = stack.artifacts.buckets_dir / "bkt" / "km"
    d.mkdir(parents=True)
    (d / "loopml_model.json").write_text(json.dumps({"framework": "bqml-kmeans"}))
    lineage = {"kind": "sql", "statement": "CREATE MODEL d.km OPTIONS(model_type='kmeans') AS SELECT 1"}
    stack.registry.upload_model(
        P, L, {"displayName": "km", "artifactUri": "gs://bkt/km"}, model_id="km", lineage=lineage
    )
    model = stack.registry.get_model(P, L, "km")
    assert model["framework"] == "bqml-kmeans" and model["lineage"] == lineage
    assert model["modelSourceInfo"] == {"sourceType": "BQML"}
    assert "AUTOMATIC_RESOURCES" in model["supportedDeploymentResourcesTypes"]
    job = f"projects/{P}/locations/{L}/trainingPipelines/7"
    stack.registry.upload_model(
        P,
        L,
        {"displayName": "tp", "containerSpec": {"imageUri": SKLEARN}},
        model_id="tp",
        lineage={"kind": "training_pipeline", "job": job},
    )
    trained = stack.registry.get_model(P, L, "tp")
    assert trained["trainingPipeline"] == job and trained["modelSourceInfo"] == {"sourceType": "CUSTOM"}
    assert trained["artifactUri"] == "" and stack.registry.resolve_version(P, L, "tp").artifact_dir is None
    ev = stack.evaluations.import_evaluation(
        P, L, "km", {"modelEvaluation": {"displayName": "e", "metrics": {"daviesBouldinIndex": 0.5}}}
    )
    listed = stack.evaluations.list_evaluations(P, L, "km@1")["modelEvaluations"]
    assert [e["name"] for e in listed] == [ev["name"]]
    eid = ev["name"].rsplit("/", 1)[-1]
    assert stack.evaluations.get_evaluation(P, L, "km", eid)["metrics"] == {"daviesBouldinIndex": 0.5}
    with pytest.raises(NotFound):
        stack.evaluations.get_evaluation(P, L, "km", "123")
    with pytest.raises(InvalidArgument, match="metrics"):
        stack.evaluations.import_evaluation(P, L, "km", {"modelEvaluation": {"metrics": [1]}})


def test_concurrent_uploads_get_distinct_versions(stack: Stack) -> None:
    from concurrent.futures import ThreadPoolExecutor

    stack.upload()
    uri = stack.model_dir()

    def add(_: int) -> str:
        body = {"displayName": "churn", "artifactUri": uri, "containerSpec": {"imageUri": SKLEARN}}
        return str(stack.registry.upload_model(P, L, body, parent_model="m1")["modelVersionId"])

    with ThreadPoolExecutor(max_workers=6) as pool:
        versions = list(pool.map(add, range(12)))
    assert sorted(versions, key=int) == [str(v) for v in range(2, 14)]
    listed = stack.registry.list_versions(P, L, "m1")["models"]
    assert len({v["artifactUri"] for v in listed}) == 1 and len(listed) == 13
