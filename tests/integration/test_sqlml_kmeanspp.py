"""BigQuery ML k-means with KMEANS_INIT_METHOD='KMEANS++' on a real DuckDB warehouse: trains, predicts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from loopml.artifacts import ArtifactStore
from loopml.sqlml.service import SqlMLService
from loopml.warehouse import Warehouse

P = "pp-proj"
CENTRES = [(0.0, 0.0), (10.0, 0.0), (0.0, 10.0), (10.0, 10.0)]


@pytest.fixture()
def stack(tmp_path: Path) -> Iterator[tuple[Warehouse, SqlMLService]]:
    artifacts = ArtifactStore(tmp_path / "store")
    w = Warehouse(tmp_path / "wh.duckdb", artifacts)
    service = SqlMLService(w, artifacts)
    service.install()
    w.create_dataset(P, "ds")
    w.create_table(
        P,
        "ds",
        "pts",
        [
            {"name": "blob", "type": "INT64"},
            {"name": "x", "type": "FLOAT64"},
            {"name": "y", "type": "FLOAT64"},
        ],
    )
    rng = np.random.default_rng(4)
    rows = [
        {"blob": b, "x": float(cx + dx), "y": float(cy + dy)}
        for b, (cx, cy) in enumerate(CENTRES)
        for dx, dy in rng.normal(scale=0.5, size=(50, 2))
    ]
    assert w.insert_rows(P, "ds", "pts", rows) == []
    yield w, service
    w.close()


def test_kmeans_plus_plus_trains_and_predicts(stack: tuple[Warehouse, SqlMLService]) -> None:
    wh, service = stack
    created = wh.query(
        "CREATE MODEL ds.km OPTIONS(model_type='KMEANS', num_clusters=4, kmeans_init_method='KMEANS++') "
        "AS SELECT x, y FROM ds.pts",
        project=P,
    )
    assert created.statement_type == "CREATE_MODEL"
    got = wh.query(
        "SELECT blob, CENTROID_ID FROM ML.PREDICT(MODEL ds.km, (SELECT blob, x, y FROM ds.pts))", project=P
    ).table.to_pylist()
    assert len(got) == 200
    # four well separated blobs: each blob is exactly one cluster, and the clusters are distinct
    by_blob: dict[int, set[int]] = {}
    for row in got:
        by_blob.setdefault(row["blob"], set()).add(row["CENTROID_ID"])
    assert all(len(ids) == 1 for ids in by_blob.values()), by_blob
    assert sorted(next(iter(ids)) for ids in by_blob.values()) == [1, 2, 3, 4]
    # the centroids sit on the blob centres, and the model records the initialisation method
    centroids = wh.query(
        "SELECT centroid_id, feature, numerical_value FROM ML.CENTROIDS(MODEL ds.km)", project=P
    ).table.to_pylist()
    points: dict[int, dict[str, float]] = {}
    for c in centroids:
        points.setdefault(c["centroid_id"], {})[c["feature"]] = c["numerical_value"]
    found = sorted((round(p["x"]), round(p["y"])) for p in points.values())
    assert found == sorted((round(cx), round(cy)) for cx, cy in CENTRES)
    # the model records the initialisation method it was trained with
    options = service.get_model_resource(P, "ds", "km")["trainingRuns"][0]["trainingOptions"]
    # BigQuery's REST enum spells the SQL value KMEANS++ as KMEANS_PLUS_PLUS
    assert options["kmeansInitializationMethod"] == "KMEANS_PLUS_PLUS"
    assert options["numClusters"] == 4
