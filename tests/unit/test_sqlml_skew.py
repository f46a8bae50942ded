"""ML.VALIDATE_DATA_SKEW: TFDV's L-infinity and Jensen-Shannon computations, and the table function."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from loopml.errors import InvalidQuery
from loopml.sqlml import functions, skew, trainer
from loopml.sqlml import options as opts


def test_l_infinity_worked_example() -> None:
    assert skew.categorical_linf({"a": 5, "b": 5}, {"a": 2, "b": 3, "c": 5}) == pytest.approx(0.5)
    assert skew.categorical_linf({"a": 1}, {"a": 7}) == 0.0


def test_jsd_union_rebucketing_and_bounds() -> None:
    p = {"buckets": [[0.0, 1.0, 5.0], [1.0, 2.0, 5.0]], "nan": 0}
    q = {"buckets": [[0.0, 2.0, 10.0]], "nan": 0}
    assert skew.numeric_jsd(p, q) == pytest.approx(0.0)
    left = {"buckets": [[0.0, 1.0, 4.0]], "nan": 0}
    right = {"buckets": [[1.0, 2.0, 4.0]], "nan": 0}
    assert skew.numeric_jsd(left, right) == pytest.approx(1.0)
    # Point masses are aligned by value; NaNs get their own bucket pair.
    point = {"buckets": [[3.0, 3.0, 10.0]], "nan": 0}
    assert skew.numeric_jsd(point, {"buckets": [[3.0, 3.0, 4.0]], "nan": 0}) == pytest.approx(0.0)
    half_nan = {"buckets": [[3.0, 3.0, 5.0]], "nan": 5}
    expected = 0.5 * (0.5 * np.log2(0.5 / 0.75)) + 0.5 * (1.0 * np.log2(1.0 / 0.75) + 0.0)
    assert skew.numeric_jsd(half_nan, point) == pytest.approx(expected + 0.5 * 0.5 * np.log2(0.5 / 0.25))
    assert skew.categorical_jsd({"a": 1}, {"b": 1}) == pytest.approx(1.0)


def test_numeric_histogram_shapes() -> None:
    h = skew.numeric_histogram(np.array([0.0, 1.0, 2.0, np.nan]))
    assert len(h["buckets"]) == 10 and h["nan"] == 1 and sum(b[2] for b in h["buckets"]) == 3
    assert skew.numeric_histogram(np.array([4.9, 4.9]))["buckets"] == [[4.9, 4.9, 2.0]]


def test_validate_data_skew_function() -> None:
    rng = np.random.default_rng(8)
    n = 2000
    train = pa.table({"x": rng.normal(size=n), "color": rng.choice(["red", "blue"], size=n)})
    model = trainer.train_model(train, opts.validate({"MODEL_TYPE": "KMEANS", "NUM_CLUSTERS": 2}, "m"))
    same = pa.table({"x": rng.normal(size=500), "color": rng.choice(["red", "blue"], size=500)})
    out = functions.validate_data_skew(model, same, {})
    assert out.column_names == ["input", "metric", "threshold", "value", "is_anomaly"]
    rows = {r["input"]: r for r in out.to_pylist()}
    assert rows["x"]["metric"] == "JENSEN_SHANNON_DIVERGENCE" and rows["color"]["metric"] == "L_INFTY"
    assert not any(r["is_anomaly"] for r in rows.values()) and rows["x"]["threshold"] == 0.3
    shifted = pa.table({"x": rng.normal(5.0, 1.0, size=500), "color": ["green"] * 500})
    rows = {r["input"]: r for r in functions.validate_data_skew(model, shifted, {}).to_pylist()}
    assert (
        rows["x"]["is_anomaly"]
        and rows["color"]["is_anomaly"]
        and rows["color"]["value"] == pytest.approx(1.0)
    )
    custom = functions.validate_data_skew(
        model, shifted, {"categorical_metric_type": "jensen_shannon_divergence", "thresholds": [["X", 0.99]]}
    ).to_pylist()
    assert custom[0]["threshold"] == 0.99 and custom[1]["metric"] == "JENSEN_SHANNON_DIVERGENCE"
    for bad, match in (
        ({"numerical_default_threshold": 1.0}, r"in \[0, 1\)"),
        ({"categorical_metric_type": "L2"}, "categorical_metric_type"),
        ({"thresholds": [["nope", 0.1]]}, "not a feature"),
        ({"enable_visualization_link": True}, "not supported"),
        ({"foo": 1}, "STRUCT field foo"),
    ):
        with pytest.raises(InvalidQuery, match=match):
            functions.validate_data_skew(model, same, bad)
    with pytest.raises(InvalidQuery, match="none of the model's features"):
        functions.validate_data_skew(model, pa.table({"y": [1.0]}), {})
