"""k-means training, numbering, preprocessing, ML.* outputs and the deployed predictor, on arrow tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from loopml.errors import InvalidArgument, InvalidQuery
from loopml.sqlml import functions, kmeans, trainer
from loopml.sqlml import options as opts
from loopml.sqlml.model import SqlModel
from loopml.sqlml.predictor import load_predictor


def kmeans_opts(**extra: object) -> dict:
    return opts.validate({"MODEL_TYPE": "KMEANS", **extra}, "m")


def workshop_table(n_normal: int = 80, n_anomaly: int = 16) -> pa.Table:
    """The workshop's purchases: constant tax and shipping, value 35.43 or 1000000.10."""
    values = [35.43] * n_normal + [1000000.10] * n_anomaly
    rng = np.random.default_rng(3)
    order = rng.permutation(len(values))
    return pa.table(
        {
            "tax": pa.array([4.90] * len(values)),
            "shipping": pa.array([5.99] * len(values)),
            "value": pa.array([values[i] for i in order]),
        }
    )


def test_workshop_data_centroid_1_is_the_small_anomaly_cluster() -> None:
    table = workshop_table()
    model = trainer.train_model(table, kmeans_opts(NUM_CLUSTERS=2))
    params = model.kmeans
    assert params is not None
    assert params.sizes.tolist() == [16, 80]
    # Zero-variance tax and shipping: centred, never divided by zero.
    assert np.isfinite(params.centroids).all()
    assert [f.scale for f in model.encoder.features[:2]] == [1.0, 1.0]
    out = functions.predict(model, table, {})
    assert out.column_names[:2] == ["CENTROID_ID", "NEAREST_CENTROIDS_DISTANCE"]
    assert out.column_names[2:] == ["tax", "shipping", "value"]
    ids = out.column("CENTROID_ID").to_pylist()
    assert all(
        (cid == 1) == (v > 1000) for cid, v in zip(ids, table.column("value").to_pylist(), strict=True)
    )
    nearest = out.column("NEAREST_CENTROIDS_DISTANCE").to_pylist()[0]
    assert [d["CENTROID_ID"] for d in nearest] == [ids[0], 3 - ids[0]]
    assert nearest[0]["DISTANCE"] <= nearest[1]["DISTANCE"]
    cents = functions.centroids(model, {}).to_pylist()
    assert [(c["centroid_id"], c["feature"]) for c in cents][:3] == [
        (1, "tax"),
        (1, "shipping"),
        (1, "value"),
    ]
    assert cents[2]["numerical_value"] == pytest.approx(1000000.10) and cents[5][
        "numerical_value"
    ] == pytest.approx(35.43)
    std = functions.centroids(model, {"standardize": True}).to_pylist()
    assert std[0]["numerical_value"] == pytest.approx(0.0, abs=1e-9)


def test_same_rows_in_any_order_give_the_same_model() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [rng.normal(0, 1, (300, 2)), rng.normal(6, 1, (120, 2)), rng.normal((0, 9), 1, (60, 2))]
    )
    table = pa.table({"a": x[:, 0], "b": x[:, 1]})
    shuffled = table.take(pa.array(rng.permutation(len(x))))
    m1 = trainer.train_model(table, kmeans_opts(NUM_CLUSTERS=3))
    m2 = trainer.train_model(shuffled, kmeans_opts(NUM_CLUSTERS=3))
    assert m1.kmeans is not None and m2.kmeans is not None
    assert m1.kmeans.sizes.tolist() == [60, 120, 300] == m2.kmeans.sizes.tolist()
    np.testing.assert_allclose(m1.kmeans.centroids, m2.kmeans.centroids, atol=1e-9)


def test_ties_in_size_are_broken_by_centroid_coordinates() -> None:
    table = pa.table({"a": [5.0, 5.1, -5.0, -5.1]})
    model = trainer.train_model(table, kmeans_opts(NUM_CLUSTERS=2, STANDARDIZE_FEATURES=False))
    assert model.kmeans is not None
    assert model.kmeans.centroids[:, 0].tolist() == pytest.approx([-5.05, 5.05])


def test_default_num_clusters_is_log10_n_clamped() -> None:
    assert trainer.default_num_clusters(10) == 2
    assert trainer.default_num_clusters(1000) == 3
    assert trainer.default_num_clusters(10**7) == 7
    assert trainer.default_num_clusters(10**200) == 100
    rng = np.random.default_rng(1)
    model = trainer.train_model(pa.table({"a": rng.normal(size=1000)}), kmeans_opts())
    assert model.options["NUM_CLUSTERS"] == 3 and model.kmeans is not None and model.kmeans.k == 3


def test_strings_are_one_hot_and_nulls_imputed() -> None:
    table = pa.table(
        {
            "color": ["red", "red", "blue", None, "blue", "red"],
            "x": [1.0, None, 10.0, 11.0, 10.5, 1.5],
        }
    )
    model = trainer.train_model(table, kmeans_opts(NUM_CLUSTERS=2))
    enc = model.encoder
    assert enc.features[0].categories == ["blue", "red", None] and enc.width == 4
    assert enc.features[1].stats["null_count"] == 1
    cents = functions.centroids(model, {}).to_pylist()
    cat = next(c for c in cents if c["feature"] == "color" and c["centroid_id"] == 1)
    assert cat["numerical_value"] is None
    assert {d["category"] for d in cat["categorical_value"]} == {"blue", "red", "NULL"}
    assert sum(d["value"] for d in cat["categorical_value"]) == pytest.approx(1.0)
    # An unseen category encodes as all zeros instead of failing.
    out = functions.predict(model, pa.table({"color": ["green"], "x": [1.0]}), {})
    assert out.column("CENTROID_ID").to_pylist()[0] in (1, 2)


def test_cosine_distance_custom_init_and_warm_start() -> None:
    table = pa.table(
        {
            "a": [1.0, 2.0, 3.0, 0.1, 0.2, 0.3],
            "b": [0.1, 0.2, 0.35, 1.0, 2.0, 3.0],
            "seed": [True, False, False, True, False, False],
        }
    )
    o = kmeans_opts(
        KMEANS_INIT_METHOD="CUSTOM",
        KMEANS_INIT_COL="seed",
        DISTANCE_TYPE="COSINE",
        STANDARDIZE_FEATURES=False,
    )
    model = trainer.train_model(table, o)
    assert model.encoder.names == ["a", "b"] and model.options["NUM_CLUSTERS"] == 2
    dist = functions.predict(model, table, {}).column("NEAREST_CENTROIDS_DISTANCE").to_pylist()
    assert all(0.0 <= d["DISTANCE"] <= np.sqrt(2.0) for row in dist for d in row)
    assert dist[0][0]["DISTANCE"] < 0.1  # cosine distance: direction, not length
    with pytest.raises(InvalidQuery, match="has 2 TRUE rows; it must have NUM_CLUSTERS = 3"):
        trainer.train_model(table, {**o, "NUM_CLUSTERS": 3})
    features = table.select(["a", "b"])
    warm = trainer.train_model(features, kmeans_opts(NUM_CLUSTERS=2, WARM_START=True), warm=model)
    assert warm.kmeans is not None and warm.encoder is model.encoder
    with pytest.raises(InvalidQuery, match="same feature columns"):
        trainer.train_model(table.select(["a"]), kmeans_opts(WARM_START=True), warm=model)


def test_detect_anomalies_threshold_and_contamination_bounds() -> None:
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(0, 1, (500, 2)), rng.normal(10, 1, (500, 2))])
    model = trainer.train_model(pa.table({"a": x[:, 0], "b": x[:, 1]}), kmeans_opts(NUM_CLUSTERS=2))
    probe = pa.table({"a": [0.0, 10.0, 50.0], "b": [0.0, 10.0, -50.0]})
    out = functions.detect_anomalies(model, probe, {"contamination": 0.02})
    assert out.column_names[:3] == ["is_anomaly", "normalized_distance", "centroid_id"]
    assert out.column("is_anomaly").to_pylist() == [False, False, True]
    # The training share above the threshold is the contamination.
    train = pa.table({"a": x[:, 0], "b": x[:, 1]})
    for c in (0.0, 0.1, 0.3):
        flagged = functions.detect_anomalies(model, train, {"contamination": c}).column("is_anomaly")
        assert sum(flagged.to_pylist()) / len(x) == pytest.approx(c, abs=0.01)
    for bad in (0.6, -0.1, "x", True):
        with pytest.raises(InvalidQuery, match="contamination"):
            functions.detect_anomalies(model, probe, {"contamination": bad})
    with pytest.raises(InvalidQuery, match="needs STRUCT"):
        functions.detect_anomalies(model, probe, {})
    with pytest.raises(InvalidQuery, match="does not take the STRUCT field threshold"):
        functions.detect_anomalies(model, probe, {"contamination": 0.1, "threshold": 2})
    ev = functions.evaluate(model, None, {}).to_pylist()[0]
    assert set(ev) == {"davies_bouldin_index", "mean_squared_distance"} and ev["davies_bouldin_index"] < 0.5
    assert functions.evaluate(model, probe, {}).num_rows == 1
    info = functions.training_info(model, {}).to_pylist()
    assert info[-1]["cluster_info"][0]["cluster_size"] == 500 and info[0]["iteration"] == 0


def test_bad_columns_are_400s() -> None:
    with pytest.raises(InvalidQuery, match="Column tags has type ARRAY"):
        trainer.train_model(pa.table({"tags": [["a"], ["b"]], "x": [1.0, 2.0]}), kmeans_opts(NUM_CLUSTERS=2))
    with pytest.raises(InvalidQuery, match="only 1 distinct rows"):
        trainer.train_model(pa.table({"x": [1.0] * 10}), kmeans_opts(NUM_CLUSTERS=2))
    with pytest.raises(InvalidQuery, match="no rows"):
        trainer.train_model(pa.table({"x": pa.array([], pa.float64())}), kmeans_opts(NUM_CLUSTERS=2))
    model = trainer.train_model(workshop_table(), kmeans_opts(NUM_CLUSTERS=2))
    with pytest.raises(
        InvalidQuery, match="Column value has type STRING but the model was trained with FLOAT64"
    ):
        functions.predict(model, pa.table({"tax": [4.9], "shipping": [5.99], "value": ["35.43"]}), {})
    with pytest.raises(InvalidQuery, match="no column value"):
        functions.predict(model, pa.table({"tax": [4.9], "shipping": [5.99]}), {})


def test_saved_model_and_deployed_predictor(tmp_path: Path) -> None:
    table = workshop_table()
    model = trainer.train_model(table, kmeans_opts(NUM_CLUSTERS=2))
    model.save(tmp_path / "m")
    manifest = (tmp_path / "m" / "loopml_model.json").read_text()
    assert '"framework": "bqml-kmeans"' in manifest
    assert not list(tmp_path.rglob("*.pkl")) and not list(tmp_path.rglob("*.joblib"))
    loaded = SqlModel.load(tmp_path / "m")
    assert loaded.kmeans is not None and model.kmeans is not None
    np.testing.assert_array_equal(loaded.kmeans.centroids, model.kmeans.centroids)
    predictor = load_predictor(tmp_path / "m")
    preds = predictor.predict(
        [
            {"tax": 4.9, "shipping": 5.99, "value": 35.43},
            {"TAX": 4.9, "shipping": 5.99, "value": 1000000.1},
            [4.9, 5.99, 35.43],
        ],
        None,
    )
    assert [p["nearest_centroid_id"] for p in preds] == [[2], [1], [2]]
    assert preds[0]["centroid_ids"] == [1, 2] and len(preds[0]["centroid_distances"]) == 2
    ml = functions.predict(model, table.slice(0, 5), {})
    expected = predictor.predict(table.slice(0, 5).to_pylist(), None)
    assert [p["nearest_centroid_id"][0] for p in expected] == ml.column("CENTROID_ID").to_pylist()
    for bad, match in (
        ([{"tax": 4.9}], "missing shipping, value"),
        ([{"tax": "x", "shipping": 1, "value": 2}], "number"),
        ([], "non-empty"),
        (["oops"], "must be an object"),
    ):
        with pytest.raises(InvalidArgument, match=match):
            predictor.validate(bad)


def test_kmeans_engine_quantiles_match_numpy() -> None:
    values = np.random.default_rng(2).random(5001)
    np.testing.assert_allclose(kmeans._quantiles(values), np.quantile(values, kmeans.QUANTILE_GRID))
    assert kmeans.threshold(
        kmeans.KMeansParams(np.zeros((2, 1)), "EUCLIDEAN", quantiles=kmeans._quantiles(values)), 0.1
    ) == pytest.approx(np.quantile(values, 0.9))


def test_nearest_centroids_are_the_k_smallest_distances_in_order() -> None:
    rng = np.random.default_rng(9)
    x = rng.normal(size=(70_000, 3))
    params = kmeans.KMeansParams(rng.normal(size=(12, 3)), "EUCLIDEAN")
    ids, dist = kmeans.nearest(x, params, 5)
    full = kmeans.distances(x, params)
    np.testing.assert_array_equal(ids, np.argsort(full, axis=1, kind="stable")[:, :5])
    np.testing.assert_allclose(dist, np.sort(full, axis=1)[:, :5])
    two = kmeans.KMeansParams(params.centroids[:2], "EUCLIDEAN")
    ids2, _ = kmeans.nearest(x[:10], two, 2)
    assert ids2.shape == (10, 2) and set(map(tuple, ids2)) <= {(0, 1), (1, 0)}


def test_online_encoding_matches_ml_predict(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    n = 300
    table = pa.table(
        {
            "color": pa.array([None if i % 17 == 0 else ["red", "blue", "green"][i % 3] for i in range(n)]),
            "flag": pa.array([bool(i % 2) for i in range(n)]),
            "x": pa.array([None if i % 13 == 0 else float(v) for i, v in enumerate(rng.normal(size=n))]),
            "k": pa.array(rng.integers(0, 50, n)),
        }
    )
    model = trainer.train_model(table, kmeans_opts(NUM_CLUSTERS=4))
    model.save(tmp_path / "m")
    probe = [*table.to_pylist(), {"color": "purple", "flag": True, "x": 0.5, "k": 3}]
    served = load_predictor(tmp_path / "m").predict(probe, None)
    ml = functions.predict(model, pa.Table.from_pylist(probe, schema=table.schema), {})
    assert [p["nearest_centroid_id"][0] for p in served] == ml.column("CENTROID_ID").to_pylist()
    nearest = ml.column("NEAREST_CENTROIDS_DISTANCE").to_pylist()
    for p, row in zip(served, nearest, strict=True):
        assert p["centroid_distances"][row[0]["CENTROID_ID"] - 1] == pytest.approx(row[0]["DISTANCE"])
