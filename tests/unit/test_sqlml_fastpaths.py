"""The faster k-means training paths compute what the straightforward ones do (no timings here)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from loopml.sqlml import features, kmeans
from loopml.sqlml.kmeans_pass import Pass, min_ratio
from loopml.sqlml.skew import finite_histogram, numeric_histogram


@pytest.mark.parametrize("seed", range(6))
def test_histogram_counts_match_numpy_including_values_on_edges(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = np.round(rng.normal(size=3_000) * 10 ** rng.uniform(1, 3), seed % 3)
    lo, hi = float(values.min()), float(values.max())
    edges = np.linspace(lo, hi, 11)
    # values exactly on every edge and one ulp either side of it
    values = np.concatenate([values, edges, np.nextafter(edges, -np.inf), np.nextafter(edges, np.inf)])
    values = values[(values >= lo) & (values <= hi)]
    counts, np_edges = np.histogram(values, bins=10, range=(lo, hi))
    got = finite_histogram(values, lo, hi, 0)["buckets"]
    assert [b[2] for b in got] == [float(c) for c in counts]
    assert [b[0] for b in got] == [float(e) for e in np_edges[:-1]]
    assert got[-1][1] == float(np_edges[-1])
    assert numeric_histogram(np.concatenate([values, [np.nan]]))["nan"] == 1


def test_smallest_is_a_stable_argsorts_head() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        values = rng.integers(0, 6, size=int(rng.integers(1, 40))).astype(float)  # many ties
        m = int(rng.integers(1, len(values) + 2))
        assert kmeans._smallest(values, m).tolist() == np.argsort(values, kind="stable")[:m].tolist()


def _table(n: int) -> pa.Table:
    rng = np.random.default_rng(7)
    a = rng.normal(size=n) * 3 + 1
    b = rng.integers(0, 5, size=n).astype(float)
    b[::11] = np.nan
    return pa.table(
        {
            "a": pa.array(a),
            "b": pa.array(b, from_pandas=True),  # NaN -> NULL
            "c": pa.array([("x", "y", None)[i] for i in rng.integers(0, 3, size=n)], pa.string()),
            "d": pa.array(rng.integers(-5, 5, size=n)),
        }
    )


@pytest.mark.parametrize("n", [1_000, 150_000])  # serial and threaded paths
def test_fit_transform_equals_fit_then_transform(n: int) -> None:
    table = _table(n)
    cols = table.column_names
    encoder, x = features.FeatureEncoder.fit_transform(table, cols, standardize=True)
    again = features.FeatureEncoder.fit(table, cols, standardize=True)
    assert again.to_json() == encoder.to_json()
    y = again.transform(table)
    assert x.flags.c_contiguous and np.array_equal(x, y)
    assert x.shape == (n, 1 + 1 + 3 + 1)
    # NULLs encode as the training mean, i.e. 0 once standardised; categories one-hot
    b = np.asarray(table.column("b").to_numpy(zero_copy_only=False), dtype=float)
    assert np.allclose(x[np.isnan(b), 1], 0.0)
    assert np.array_equal(x[:, 2:5].sum(axis=1), np.ones(n))
    ref = (table.column("a").to_numpy() - encoder.features[0].mean) / encoder.features[0].scale
    assert np.array_equal(x[:, 0], ref)


def test_threaded_and_serial_fits_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    table = _table(120_000)
    threaded = features.FeatureEncoder.fit_transform(table, table.column_names, standardize=True)
    monkeypatch.setattr(features, "_PARALLEL_MIN", 10**12)
    serial = features.FeatureEncoder.fit_transform(table, table.column_names, standardize=True)
    assert threaded[0].to_json() == serial[0].to_json()
    assert np.array_equal(threaded[1], serial[1])


@pytest.mark.parametrize("distance", ["EUCLIDEAN", "COSINE"])
def test_quantiles_from_the_sample_equal_the_full_pass_sampled(distance: str) -> None:
    rng = np.random.default_rng(3)
    n = kmeans.QUANTILE_SAMPLE * 2 + 17
    x = rng.normal(size=(n, 3)) + rng.integers(0, 3, size=(n, 1)) * 4
    params = kmeans.train(
        x,
        3,
        init=x[:3].copy(),
        distance_type=distance,
        max_iterations=3,
        early_stop=False,
        min_rel_progress=0.0,
    )
    data = Pass(x, distance, None)
    full = min_ratio(data, params.centroids, np.maximum(params.radii, kmeans.RADIUS_FLOOR))[0]
    full_ids = min_ratio(data, params.centroids, np.ones(3))[1]
    step = -(-n // kmeans.QUANTILE_SAMPLE)
    assert len(full[::step]) <= kmeans.QUANTILE_SAMPLE
    np.testing.assert_allclose(params.quantiles, kmeans._quantiles(full), rtol=1e-12, atol=1e-12)
    sub = data.every(step)
    assert np.array_equal(sub.x, data.x[::step])
    np.testing.assert_array_equal(min_ratio(sub, params.centroids, np.ones(3))[1], full_ids[::step])


def test_kmeanspp_candidates_match_one_pass_per_candidate() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(500, 4))
    data = Pass(x, "EUCLIDEAN", None)
    rows = x[[3, 70, 199]]
    batched = kmeans._sq_each(data, rows)
    for i, row in enumerate(rows):
        one = data.run(row[None, :], sums=False)[1]
        np.testing.assert_allclose(batched[i], one, rtol=1e-12, atol=1e-12)
